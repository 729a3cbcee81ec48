"""A real ToolBench or StableToolBench server behind ours, asked before any simulator.

An answer is used (and cached) only when StableToolBench's server would use it: HTTP 200,
a JSON object with an empty ``error`` and a non-empty ``response`` that mentions no rate limit,
failing connection or HTTP error, no authorization problem and no parameter error (the words
below, matched case-insensitively). Anything else falls through to the next source.
"""

from __future__ import annotations

import json

import httpx

from inference_utils import bounded_http

#: StableToolBench's ``check_result``: words in an answer that make it fall through.
FALL_THROUGH_WORDS: dict[str, tuple[str, ...]] = {
    "failing API": (
        "http", "connection", "rate limit", "time out", "timed out", "does not exist", "404",
        "504", "500", "internal error", "api doesn't exists", "service not found",
        "status_code=50", "status_code=429",
    ),
    "unauthorized": (
        "authoriz", "authenticat", "unauthorized", "blocked user", "unsubscribe", "blocked",
        "401", "403", "credential", "unauthenticated", "disabled for your subscription",
        "access_denied",
    ),
    "parameter error": ("parameter", "parse", "is not defined"),
}  # fmt: skip


def fall_through_reason(answer: object) -> str | None:
    """Why an upstream answer is not used, or None when it is."""
    if not isinstance(answer, dict) or "response" not in answer:
        return "not an answer object"
    if answer.get("error", None) != "":
        return f"error: {str(answer.get('error'))[:100]}"
    text = str(answer["response"]).lower()
    if not text:
        return "empty response"
    for reason, words in FALL_THROUGH_WORDS.items():
        if any(word in text for word in words):
            return reason
    return None


class Upstream:
    """Asks ``url`` (its ``/virtual`` or ``/rapidapi`` endpoint) with ToolBench's request."""

    def __init__(self, url: str, timeout: float = 30.0, max_connections: int = 64):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--upstream must be an http(s) URL, not {url!r}")
        self.url = url
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def answer(self, body: dict, toolbench_key: str) -> tuple[dict | None, str]:
        """``(answer, "")`` when the upstream answer is usable, else ``(None, reason)``."""
        try:
            response = await bounded_http.arequest(
                self._http, "POST", self.url, json=body, headers={"toolbench_key": toolbench_key}
            )
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}"
        if response.status_code != 200:
            return None, f"HTTP {response.status_code}"
        try:
            answer = response.json()
        except (ValueError, json.JSONDecodeError):
            return None, "answer is not JSON"
        reason = fall_through_reason(answer)
        return (None, reason) if reason else (answer, "")
