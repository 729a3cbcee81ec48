"""The HTTP face of the tool server: ToolBench's ``POST /rapidapi`` and StableToolBench's
``POST /virtual`` (the same request and answer), ``GET /stats`` and ``GET /health``.

A call's problems (unknown tool or API, ``tool_input`` that is not JSON, a simulator that is
down) are answered with HTTP 200 and ``{"error": ..., "response": ""}``, as ToolBench's server
answers them. A body that is not ToolBench's request gets 400 or 422, one over the size cap
413, each with the same ``{"error", "response"}`` shape. Nothing a client sends gives a 500:
an unexpected failure is logged (without the request's key) and answered as an error.

The two call routes are served by a plain ASGI handler, :class:`ToolApi`, in front of FastAPI:
without FastAPI's routing, dependency and request machinery a cache hit costs about half the
server time, and at 64 concurrent clients the latency tail is set by that cost
(``benchmarks/bench_toolserver.py``). FastAPI serves the rest (``/stats``, ``/health``, the
lifespan, 404s).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Response

from process_data.protocol import error_answer

from .service import BadRequest, ToolService

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20
CALL_PATHS = frozenset({"/virtual", "/rapidapi"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def json_response(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


class _TooLarge(Exception):
    """The request body passed the cap."""


class ToolApi:
    """The ASGI application: ``POST /virtual`` and ``POST /rapidapi`` here, the rest in
    ``app``. A body over ``max_bytes`` is refused with 413 at once when its
    ``Content-Length`` says so, else as soon as the streamed body passes the cap."""

    def __init__(self, service: ToolService, app: Callable, max_bytes: int):
        self.service, self.app, self.max_bytes = service, app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in CALL_PATHS:
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await _send(send, 405, error_answer("Method not allowed"), b"POST")
        status, answer = await self._call(scope, receive)
        await _send(send, status, answer)

    async def _call(self, scope: Scope, receive: Receive) -> tuple[int, dict]:
        headers = dict(scope["headers"])
        try:
            body = orjson.loads(await self._body(headers, receive))
        except _TooLarge:
            return 413, error_answer(f"Request body over {self.max_bytes} bytes")
        except orjson.JSONDecodeError as exc:
            return 400, error_answer(f"Request body is not JSON: {exc}")
        if isinstance(body, dict) and not body.get("toolbench_key"):  # ToolBench sends both
            body["toolbench_key"] = headers.get(b"toolbench_key", b"").decode("latin-1")
        try:
            return 200, await self.service.call(body)
        except BadRequest as exc:
            return 422, error_answer(f"Bad request: {exc}")
        except Exception as exc:  # a bug or a broken disk: answer, log, keep serving
            log.exception("unexpected failure on %s", scope["path"])
            self.service.stats.errors["internal"] += 1
            return 200, error_answer(f"Internal error: {type(exc).__name__}")

    async def _body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            raise _TooLarge
        parts, seen = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                raise _TooLarge
            parts.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(parts)


async def _send(send: Send, status: int, value: Any, allow: bytes | None = None) -> None:
    body = orjson.dumps(value)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if allow is not None:
        headers.append((b"allow", allow))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(service: ToolService, max_body_bytes: int = MAX_BODY_BYTES) -> Any:
    """The ASGI application serving ``service``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if service.upstream is not None:
            await service.upstream.aclose()
        service.cache.close()

    app = FastAPI(title="tool server", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/stats")
    async def stats() -> Response:
        return json_response(
            {
                **service.stats.as_dict(),
                "cache_entries": await asyncio.to_thread(service.cache.counts),
                "chain": service.chain(),
            }
        )

    @app.get("/health")
    async def health() -> Response:
        registry = service.registry
        return json_response({"status": "ok", "tools": registry.tools, "apis": len(registry)})

    return ToolApi(service, app, max_body_bytes)
