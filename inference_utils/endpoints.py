"""Role models behind OpenAI-compatible HTTP endpoints (vLLM, llama.cpp, TGI, OpenAI, ...).

A role speaks to its endpoint through ``/completions`` (the α-UMi text prompt, exactly the
training input) or ``/chat/completions`` (the chat format's messages and tools). Each request
has a timeout and is retried, with jittered exponential backoff, on connection errors, timeouts,
429 and 5xx answers. A 4xx answer is final, except one: servers whose chat template knows
only ``system``/``user``/``assistant`` reject ``tool`` (or ``function``) messages, for example
with ``{"given":"function","permitted":["system","assistant","user"]}``. The client then
rewrites such turns as plain ``user`` / ``assistant`` text (as α-UMi's history renders them)
and sends the request again; it remembers to do so for the rest of the run.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from collections.abc import Generator, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx

from inference_utils import bounded_http
from inference_utils.backends import Decoding, ModelRequest, ModelResult, cut_stream
from process_data.protocol import (
    MODEL_INPUT_PREFIX,
    ask_for_json,
    assistant_text,
    clean_output,
    plain_roles,
)

APIS = ("completions", "chat")
_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
_ROLE_WORDS = re.compile(r"\b(tool|function)\b", re.I)


class EndpointError(RuntimeError):
    """A request that failed for good (after retries, or with a final 4xx answer).
    ``timed_out``: its last attempt ran out of time (a slow server, not a broken one)."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


OPENAI_HOST = "api.openai.com"


@dataclass(frozen=True)
class Endpoint:
    """Where a role is served: ``url`` is the API base, e.g. ``http://127.0.0.1:8000/v1``.
    Its key is ``api_key``, or the environment variable named ``api_key_env`` (which keeps
    the key out of ``ps``); see :meth:`key`."""

    url: str
    model: str | None = None  # None: the first model the server lists
    api: str = "completions"
    api_key: str | None = field(default=None, repr=False)
    api_key_env: str | None = None

    def __post_init__(self) -> None:
        if self.api not in APIS:
            raise ValueError(f"endpoint api must be one of {APIS}, not {self.api!r}")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"endpoint url must start with http:// or https://: {self.url!r}")

    def key(self) -> str | None:
        """The bearer token this endpoint, and no other, is sent: the key given for it; else
        the variable ``api_key_env`` names (ValueError if it is unset); else
        ``$OPENAI_API_KEY``, but only where the endpoint is OpenAI's own API. A local role
        server or simulator never receives a key it was not given."""
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ValueError(
                    f"{self.url}: its key's environment variable {self.api_key_env} is not set"
                )
            return value
        if httpx.URL(self.url).host == OPENAI_HOST:
            return os.environ.get("OPENAI_API_KEY")
        return None


def rejects_tool_roles(status: int, body: str) -> bool:
    """Whether a 4xx answer says the server does not accept ``tool``/``function`` messages."""
    if not 400 <= status < 500:
        return False
    try:
        found = _find_role_rejection(json.loads(body))
    except ValueError:
        found = False
    return found or ("role" in body.lower() and bool(_ROLE_WORDS.search(body)))


def _find_role_rejection(value: Any) -> bool:
    if isinstance(value, dict):
        if value.get("given") in ("tool", "function") and "permitted" in value:
            return True
        return any(_find_role_rejection(v) for v in value.values())
    if isinstance(value, list):
        return any(_find_role_rejection(v) for v in value)
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            return _find_role_rejection(json.loads(value))
        except ValueError:
            return False
    return False


class EndpointClient:
    """One role's endpoint: thread-safe, pooled connections, timeouts and retries."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_connections: int = 16,
        max_answer_bytes: int = bounded_http.MAX_BODY_BYTES,
    ):
        self.endpoint = endpoint
        self.max_answer_bytes = max_answer_bytes
        self.sampling = {"max_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
        if seed is not None:
            self.sampling["seed"] = seed
        self.max_retries = max_retries
        self.backoff = backoff
        key = endpoint.key()
        self._http = httpx.Client(
            base_url=endpoint.url.rstrip("/"),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"Authorization": f"Bearer {key}"} if key else {},
            limits=httpx.Limits(max_connections=max_connections),
        )
        self._lock = threading.Lock()
        self._model = endpoint.model
        self.plain_roles = False  # set once the server rejects tool messages
        self.json_mode = True  # cleared once the server rejects ``response_format``
        self.tool_calling = True  # cleared once the server rejects or ignores forced tool calls
        self.stream_usage = True  # cleared once the server rejects ``stream_options``

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EndpointClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model(self) -> str:
        with self._lock:
            if self._model is None:
                listed = self._request("GET", "/models", None).get("data") or []
                if not listed:
                    raise EndpointError(f"{self.endpoint.url}/models lists no model")
                self._model = listed[0]["id"]
            return self._model

    def _sampling(self, decoding: Decoding | None) -> dict[str, Any]:
        """The sampling fields of a request body: the client's, under a request's own."""
        sampling = dict(self.sampling)
        if decoding is not None:
            for field_name, value in (
                ("max_tokens", decoding.max_new_tokens),
                ("temperature", decoding.temperature),
                ("top_p", decoding.top_p),
            ):
                if value is not None:
                    sampling[field_name] = value
            if decoding.stop:
                sampling["stop"] = list(decoding.stop)
            if decoding.seed is not None:
                sampling["seed"] = decoding.seed
        return sampling

    def complete(self, prompt: str, decoding: Decoding | None = None) -> ModelResult:
        """The completion of an α-UMi text prompt (``"system: "`` prefixed, as in training),
        as the server wrote it, with the token counts it reports."""
        body = {
            "model": self.model,
            "prompt": MODEL_INPUT_PREFIX + prompt,
            **self._sampling(decoding),
        }
        answer = self._request("POST", "/completions", body)
        text = _first_choice(answer, self.endpoint.url)["text"]
        return _result(text, answer, decoding=decoding)

    def chat(
        self,
        messages: Sequence[dict],
        tools: Sequence[dict] | None = None,
        response_format: dict | None = None,
        decoding: Decoding | None = None,
    ) -> ModelResult:
        """The answer to chat messages: its text (tool calls in the caller's format), its
        tool calls, and the token counts the server reports.

        ``response_format`` (e.g. ``{"type": "json_object"}``) is sent while the server takes
        it; a server that answers it with a 4xx naming the field is asked again without it,
        for the rest of the run."""
        plain = self.plain_roles  # read once: other threads may set it meanwhile
        body: dict[str, Any] = {"model": self.model, **self._sampling(decoding)}
        if tools and not plain:
            body["tools"] = list(tools)
        json_mode = response_format is not None and self.json_mode
        if json_mode:
            body["response_format"] = response_format
        body["messages"] = plain_roles(messages) if plain else list(messages)
        try:
            answer = self._request(
                "POST",
                "/chat/completions",
                body,
                roles_may_fail=not plain,
                format_may_fail=json_mode,
            )
        except _RoleRejected:
            self.plain_roles = True
            return self.chat(messages, tools, response_format, decoding)
        except _FormatRejected:
            self.json_mode = False
            return self.chat(messages, tools, response_format, decoding)
        message = _first_choice(answer, self.endpoint.url)["message"]
        result = _result(assistant_text(message), answer, _tool_calls(message), decoding)
        return replace(result, content=message.get("content"))

    def call_function(
        self, messages: Sequence[dict], function: dict, decoding: Decoding | None = None
    ) -> ModelResult:
        """The model's call of ``function`` (an OpenAI function schema): a result whose
        :meth:`~inference_utils.backends.ModelResult.arguments` are the arguments it gives.

        The call is forced with ``tool_choice`` while the server does tool calling. A server
        that refuses the tools (a 4xx naming them) or answers without a tool call is asked,
        from then on, for the arguments as a JSON object in text: the schema goes into the
        last message, in JSON mode where the server takes it."""
        if self.tool_calling:
            body: dict[str, Any] = {
                "model": self.model,
                **self._sampling(decoding),
                "messages": list(messages),
            }
            body["tools"] = [{"type": "function", "function": function}]
            body["tool_choice"] = {"type": "function", "function": {"name": function["name"]}}
            try:
                answer = self._request("POST", "/chat/completions", body, tools_may_fail=True)
            except _ToolsRejected:
                self.tool_calling = False
            else:
                calls = _tool_calls(_first_choice(answer, self.endpoint.url)["message"])
                if calls:
                    return _result("", answer, calls[:1])
                self.tool_calling = False
        asked = ask_for_json(messages, function)
        return self.chat(asked, response_format={"type": "json_object"}, decoding=decoding)

    def stream_complete(
        self, prompt: str, decoding: Decoding | None = None
    ) -> Generator[str, None, ModelResult]:
        """The completion of an α-UMi text prompt, piece by piece as the server sends it
        (ending before a stop string, whatever the server does with it); returns the whole
        result, with the token counts the server reports at the end of the stream."""
        body = {
            "model": self.model,
            "prompt": MODEL_INPUT_PREFIX + prompt,
            **self._sampling(decoding),
        }
        usage: dict = {}
        chunks = self._stream("/completions", body, usage)
        pieces = (c["text"] for c in chunks if c.get("text"))
        stop = decoding.stop if decoding else ()
        return (yield from _collected(cut_stream(pieces, stop), chunks, usage))

    def stream_chat(
        self,
        messages: Sequence[dict],
        tools: Sequence[dict] | None = None,
        decoding: Decoding | None = None,
    ) -> Generator[str, None, ModelResult]:
        """The answer's text, piece by piece as the server sends it (tool messages as text
        for a server known to refuse them; ending before a stop string); returns the whole
        result, as :meth:`stream_complete`."""
        plain = self.plain_roles
        body: dict[str, Any] = {"model": self.model, **self._sampling(decoding)}
        if tools and not plain:
            body["tools"] = list(tools)
        body["messages"] = plain_roles(messages) if plain else list(messages)
        usage: dict = {}
        chunks = self._stream("/chat/completions", body, usage)
        pieces = (t for c in chunks if (t := (c.get("delta") or {}).get("content")))
        stop = decoding.stop if decoding else ()
        return (yield from _collected(cut_stream(pieces, stop), chunks, usage))

    def _stream(self, path: str, body: dict, usage: dict | None = None) -> Iterator[dict]:
        """Each streamed chunk's first choice (server-sent events, ``stream: true``); the
        ``usage`` the server reports (``stream_options.include_usage``, asked while the
        server takes it) goes into ``usage``. A request that fails before the first chunk is
        retried as :meth:`_request` retries; a stream cut off later raises
        :class:`EndpointError`. At most ``max_answer_bytes`` are read."""
        where = f"POST {self.endpoint.url.rstrip('/')}{path} (streamed)"
        body = {**body, "stream": True}
        attempt = 0
        while attempt <= self.max_retries:
            started = False
            asked = dict(body)
            if self.stream_usage:
                asked["stream_options"] = {"include_usage": True}
            try:
                with self._http.stream("POST", path, json=asked) as response:
                    if response.status_code >= 400:
                        text = _first_bytes(response, 500).decode("utf-8", "replace")
                        problem = f"HTTP {response.status_code}: {text}"
                        if self.stream_usage and "stream_options" in text:
                            self.stream_usage = False  # asked again without, for good
                            continue
                        if response.status_code not in _RETRY_STATUS:
                            raise EndpointError(f"{where}: {problem}")
                    else:
                        for line in _lines(response, self.max_answer_bytes, where):
                            data = line.removeprefix(b"data:").strip()
                            if not line.startswith(b"data:") or not data:
                                continue
                            if data == b"[DONE]":
                                return
                            try:
                                chunk = json.loads(data)
                                choices = chunk.get("choices") or []
                            except (ValueError, AttributeError):
                                raise EndpointError(
                                    f"{where}: a streamed chunk is not a JSON object: "
                                    f"{data[:200]!r}"
                                ) from None
                            if usage is not None and isinstance(chunk.get("usage"), dict):
                                usage.update(chunk["usage"])
                            if choices:
                                started = True
                                yield choices[0]
                        return
            except httpx.TransportError as exc:
                if started:
                    raise EndpointError(f"{where}: the stream broke: {exc}") from exc
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self.max_retries:
                time.sleep(min(self.backoff * 2**attempt * random.uniform(0.5, 1.0), 30.0))
            attempt += 1
        raise EndpointError(f"{where}: failed after {self.max_retries + 1} attempts: {problem}")

    def _request(
        self,
        method: str,
        path: str,
        body: dict | None,
        roles_may_fail: bool = False,
        format_may_fail: bool = False,
        tools_may_fail: bool = False,
    ) -> dict:
        where = f"{method} {self.endpoint.url.rstrip('/')}{path}"
        for attempt in range(self.max_retries + 1):
            delay = self.backoff * 2**attempt * random.uniform(0.5, 1.0)  # jittered
            timed_out = False
            try:
                response = bounded_http.request(
                    self._http, method, path, json=body, cap=self.max_answer_bytes
                )
            except bounded_http.BodyTooLarge as exc:
                raise EndpointError(str(exc)) from None
            except httpx.TransportError as exc:  # refused, reset, timed out
                problem = f"{type(exc).__name__}: {exc}"
                timed_out = isinstance(exc, httpx.TimeoutException)
            else:
                if response.status_code < 400:
                    try:
                        return response.json()
                    except ValueError:
                        problem = f"answer is not JSON: {response.text[:200]!r}"
                elif response.status_code in _RETRY_STATUS:
                    problem = f"HTTP {response.status_code}: {response.text[:200]}"
                    delay = max(delay, _retry_after(response))
                elif roles_may_fail and rejects_tool_roles(response.status_code, response.text):
                    raise _RoleRejected
                elif format_may_fail and "response_format" in response.text:
                    raise _FormatRejected
                elif tools_may_fail and _TOOL_WORDS.search(response.text):
                    raise _ToolsRejected
                else:
                    raise EndpointError(
                        f"{where}: HTTP {response.status_code}: {response.text[:500]}"
                    )
            if attempt == self.max_retries:
                break
            time.sleep(min(delay, 30.0))
        raise EndpointError(
            f"{where}: failed after {self.max_retries + 1} attempts: {problem}", timed_out
        )


class _RoleRejected(Exception):
    pass


class _FormatRejected(Exception):
    pass


class _ToolsRejected(Exception):
    pass


_TOOL_WORDS = re.compile(r"\btools?\b|tool_choice|function", re.I)


def _first_bytes(response: httpx.Response, limit: int) -> bytes:
    """At most ``limit`` bytes of a streamed body (an error's text)."""
    head = b""
    for chunk in response.iter_bytes():
        head += chunk
        if len(head) >= limit:
            break
    return head[:limit]


def _lines(response: httpx.Response, cap: int, where: str) -> Iterator[bytes]:
    """The lines of a streamed body, reading at most ``cap`` bytes in all (a server that
    never ends a line, or never ends, is cut off there)."""
    buffer, read = bytearray(), 0
    for chunk in response.iter_bytes():
        read += len(chunk)
        if read > cap:
            raise EndpointError(f"{where}: the answer exceeds {cap:,} bytes; reading stopped there")
        if b"\n" not in chunk:  # only the new bytes are searched: linear in the body
            buffer += chunk
            continue
        first, *lines, rest = chunk.split(b"\n")
        yield bytes(buffer + first).rstrip(b"\r")
        yield from (line.rstrip(b"\r") for line in lines)
        buffer = bytearray(rest)
    if buffer:
        yield bytes(buffer).rstrip(b"\r")


def _retry_after(response: httpx.Response) -> float:
    try:
        return float(response.headers.get("retry-after", 0))
    except ValueError:
        return 0.0


def _tool_calls(message: dict) -> tuple[dict, ...]:
    """An answer message's tool calls as results hold them: ``{"name", "arguments"}``, the
    arguments as text (``{}`` where the server gave none)."""
    return tuple(
        {"name": c["function"]["name"], "arguments": c["function"].get("arguments") or "{}"}
        for c in message.get("tool_calls") or ()
    )


def _collected(
    pieces: Iterator[str], chunks: Iterator[dict], usage: dict
) -> Generator[str, None, ModelResult]:
    """Pass the pieces on, then return them as one result with the counts of ``usage``,
    which the stream's last chunk fills: after a stop string the rest of the stream is read
    for it (a server that honours ``stop`` has ended there anyway)."""
    text = []
    for piece in pieces:
        text.append(piece)
        yield piece
    for _ in chunks:
        pass
    return _result("".join(text), {"usage": usage})


def _result(
    text: str, answer: dict, calls: tuple[dict, ...] = (), decoding: Decoding | None = None
) -> ModelResult:
    """A result with the token counts of the answer's ``usage`` (``None`` where the server
    reports none); the text ends before a stop string even where the server ignores it."""
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    counts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens")]
    counts = [n if isinstance(n, int) and not isinstance(n, bool) else None for n in counts]
    text = decoding.cut(text) if decoding is not None else text
    return ModelResult(text, calls, *counts)


def _first_choice(answer: dict, url: str) -> dict:
    choices = answer.get("choices") or []
    if not choices:
        raise EndpointError(f"{url}: answer has no choices: {json.dumps(answer)[:300]}")
    return choices[0]


@dataclass
class EndpointBackend:
    """One OpenAI-compatible endpoint client per role (:class:`EndpointClient`: retries,
    timeouts, the role-refusal and JSON-mode fallbacks). A request is sent to the completions
    API as its α-UMi prompt, or to the chat API as its messages, as the role's endpoint
    speaks (``Endpoint.api``)."""

    clients: Mapping[str, EndpointClient]
    concurrency: int = 8
    batched: bool = field(default=False, init=False)

    def client(self, role: str) -> EndpointClient:
        client = self.clients.get(role)
        if client is None:
            raise KeyError(f"no endpoint for role {role!r}")
        return client

    def generate(self, role: str, requests: Sequence[ModelRequest]) -> list[ModelResult]:
        client = self.client(role)
        return [self._one(client, role, request) for request in requests]

    def _one(self, client: EndpointClient, role: str, request: ModelRequest) -> ModelResult:
        decoding = request.decoding
        if request.function is not None:
            messages = self._messages(client, role, request)
            return client.call_function(messages, request.function, decoding)
        if request.json_mode:
            messages = self._messages(client, role, request)
            json_format = {"type": "json_object"}
            return client.chat(messages, response_format=json_format, decoding=decoding)
        if client.endpoint.api == "chat":
            messages = self._messages(client, role, request)
            tools = list(request.tools) if request.tools else None
            result = client.chat(messages, tools, decoding=decoding)
        else:
            if request.prompt is None:
                raise ValueError(f"the {role} endpoint speaks completions: give a prompt")
            result = client.complete(request.prompt, decoding)
        return replace(result, text=clean_output(result.text))

    @staticmethod
    def _messages(client: EndpointClient, role: str, request: ModelRequest) -> list[dict]:
        if request.messages is None:
            raise ValueError(f"the {role} endpoint speaks chat: the request has no messages")
        return list(request.messages)

    def stream(self, role: str, request: ModelRequest) -> Generator[str, None, ModelResult]:
        """The text as the endpoint streams it (server-sent events); returns the whole result
        with the token counts the server reports."""
        client = self.client(role)
        if client.endpoint.api == "chat":
            tools = list(request.tools) if request.tools else None
            messages = self._messages(client, role, request)
            return (yield from client.stream_chat(messages, tools, request.decoding))
        if request.prompt is None:
            raise ValueError(f"the {role} endpoint speaks completions: give a prompt")
        return (yield from client.stream_complete(request.prompt, request.decoding))

    def release(self, sessions: Iterable[Hashable]) -> None:
        """Endpoints keep no sessions."""

    def close(self) -> None:
        for client in self.clients.values():
            client.close()
