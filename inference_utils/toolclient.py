"""The client of ToolBench's tool API (``POST /rapidapi`` or ``/virtual``): ours, ToolBench's
and StableToolBench's servers all answer it.

One :class:`ToolClient` per server, shared by threads: pooled connections, a timeout per request,
and retries with exponential backoff on transport errors and 5xx answers. A call that fails for
good is not an exception: it comes back as an :class:`Observation` whose ``error`` says why,
with ToolBench's status code, so an agent sees a failing tool as ToolBench's agents do.
"""

from __future__ import annotations

import json
import time

import httpx

from inference_utils import bounded_http
from process_data.protocol import ERROR_STATUS, REQUEST_FAILED, Observation

_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class ToolClient:
    def __init__(
        self,
        url: str,
        *,
        toolbench_key: str = "",
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_connections: int = 64,
        max_answer_bytes: int = bounded_http.MAX_BODY_BYTES,
    ):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"tool server url must start with http:// or https://: {url!r}")
        self.url, self.toolbench_key = url, toolbench_key
        self.max_retries, self.backoff = max_retries, backoff
        self.max_answer_bytes = max_answer_bytes
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ToolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self, category: str, tool_name: str, api_name: str, tool_input: str | dict, strip: str = ""
    ) -> Observation:
        """Call one API (names as ToolBench's client sends them); never raises for the server's
        or the network's failures."""
        body = {
            "category": category,
            "tool_name": tool_name,
            "api_name": api_name,
            "tool_input": tool_input,
            "strip": strip,
            "toolbench_key": self.toolbench_key,
        }
        problem = ""
        for attempt in range(self.max_retries + 1):
            try:
                response = bounded_http.request(
                    self._http,
                    "POST",
                    self.url,
                    json=body,
                    headers={"toolbench_key": self.toolbench_key},
                    cap=self.max_answer_bytes,
                )
            except bounded_http.BodyTooLarge as exc:
                return Observation(f"request failed: {exc}", "", REQUEST_FAILED)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in _RETRY_STATUS:
                    return _observation(response)
                problem = f"status_code={response.status_code}"
            if attempt < self.max_retries:
                time.sleep(min(self.backoff * 2**attempt, 10.0))
        return Observation(
            f"request failed after {self.max_retries + 1} attempts: {problem}", "", REQUEST_FAILED
        )


def _observation(response: httpx.Response) -> Observation:
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if response.status_code != 200 or not isinstance(answer, dict):
        detail = answer.get("error") if isinstance(answer, dict) else response.text[:200]
        return Observation(
            f"request invalid, status_code={response.status_code}: {detail}", "", REQUEST_FAILED
        )
    error = answer.get("error") or ""
    error = error if isinstance(error, str) else json.dumps(error)
    return Observation(error, answer.get("response", ""), ERROR_STATUS.get(error, 0))
