"""A real ToolBench or StableToolBench server behind ours, asked before any simulator.

An answer is used (and cached) only when StableToolBench's server would use it: its
``check_result`` (``server/main.py``, THUNLP-MT/StableToolBench at 9fd0a3c), rule by rule in its
order (:data:`RULES`). Anything else falls through to the next source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import httpx

from inference_utils import bounded_http


@dataclass(frozen=True)
class Rule:
    """One test of ``check_result`` on the answer's ``response`` as text: ``words`` are
    looked for in its lowercase, ``cased`` as written, ``equal`` is the whole text."""

    reason: str
    words: tuple[str, ...] = ()
    cased: tuple[str, ...] = ()
    equal: tuple[str, ...] = ()
    use: bool = False  # a match makes the answer used (else it falls through)

    def matches(self, text: str) -> bool:
        lower = text.lower()
        return (
            any(w in lower for w in self.words)
            or any(w in text for w in self.cased)
            or text in self.equal
        )


#: StableToolBench's ``check_result`` after its ``error`` and ``response`` checks, in order.
#: Its ``"API doesn't exists" in response.lower()`` can never match (an upper-case word in
#: a lowercased text), so it is left out; the exact ``{'message': "API doesn't exists"}`` is
#: kept. Earlier versions of the rule also dropped every answer holding ``http`` or
#: ``connection``, which most real answers do (a URL); the current one does not.
RULES: tuple[Rule, ...] = (
    Rule("an ignored argument", words=("got an unexpected keyword argument",), use=True),
    Rule(
        "failing API",
        words=(
            "rate limit", "time out", "timed out", "does not exist", "404", "504", "500",
            "internal error",
        ),
        cased=("Service Not Found",),
        equal=("{'message': \"API doesn't exists\"}",),
    ),
    Rule(
        "unauthorized",
        words=(
            "authoriz", "authenticat", "unauthorized", "blocked user", "unsubscribe", "blocked",
            "401", "403", "credential", "unauthenticated", "disabled for your subscription",
            "invalid consumer key",
        ),
        cased=("ACCESS_DENIED",),
    ),
    Rule("parameter error", words=("parameter", "parse", "is not defined")),
    Rule("empty response", equal=("",)),
    Rule("failing API", cased=("status_code=50", "status_code=429")),
)  # fmt: skip


def fall_through_reason(answer: object) -> str | None:
    """Why an upstream answer is not used, or None when it is."""
    if not isinstance(answer, dict) or "response" not in answer:
        return "not an answer object"
    if answer.get("error", None) != "":
        return f"error: {str(answer.get('error'))[:100]}"
    text = str(answer["response"])  # as Python prints it, as the reference reads it
    for rule in RULES:
        if rule.matches(text):
            return None if rule.use else rule.reason
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
