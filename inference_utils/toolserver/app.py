"""The HTTP face of the tool server: ToolBench's ``POST /rapidapi`` and StableToolBench's
``POST /virtual`` (the same request and answer), ``GET /stats`` and ``GET /health``.

A call's problems (unknown tool or API, ``tool_input`` that is not JSON, a simulator that is
down) are answered with HTTP 200 and ``{"error": ..., "response": ""}``, as ToolBench's server
answers them. A body that is not ToolBench's request gets 400 or 422, one over the size cap
413, each with the same ``{"error", "response"}`` shape. Nothing a client sends gives a 500:
an unexpected failure is logged (without the request's key) and answered as an error.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response

from .service import BadRequest, ToolService, error_answer

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 1 << 20

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def json_response(value: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json")


class BodyLimit:
    """Answers 413 to a request body over ``max_bytes``: at once when its ``Content-Length``
    says so, else as soon as the streamed body passes the cap (the route catches
    :class:`_TooLarge` from its body read)."""

    def __init__(self, app: Callable, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(scope, receive, send)
        seen = 0

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        await self.app(scope, counted, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await too_large(self.max_bytes)(scope, receive, send)


class _TooLarge(Exception):
    """Raised into the application's body read when the streamed body passes the cap."""


def too_large(max_bytes: int) -> Response:
    return json_response(error_answer(f"Request body over {max_bytes} bytes"), 413)


def create_app(service: ToolService, max_body_bytes: int = MAX_BODY_BYTES) -> Any:
    """The ASGI application serving ``service``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if service.upstream is not None:
            await service.upstream.aclose()
        service.cache.close()

    app = FastAPI(title="tool server", lifespan=lifespan, docs_url=None, redoc_url=None)

    async def call(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except _TooLarge:
            return too_large(max_body_bytes)
        except orjson.JSONDecodeError as exc:
            return json_response(error_answer(f"Request body is not JSON: {exc}"), 400)
        if isinstance(body, dict) and not body.get("toolbench_key"):  # ToolBench sends both
            body["toolbench_key"] = request.headers.get("toolbench_key", "")
        try:
            return json_response(await service.call(body))
        except BadRequest as exc:
            return json_response(error_answer(f"Bad request: {exc}"), 422)
        except Exception as exc:  # a bug or a broken disk: answer, log, keep serving
            log.exception("unexpected failure on %s", request.url.path)
            service.stats.errors["internal"] += 1
            return json_response(error_answer(f"Internal error: {type(exc).__name__}"))

    app.add_api_route("/virtual", call, methods=["POST"])
    app.add_api_route("/rapidapi", call, methods=["POST"])

    @app.get("/stats")
    async def stats() -> Response:
        return json_response(
            {
                **service.stats.as_dict(),
                "cache_entries": service.cache.counts(),
                "chain": service.chain(),
            }
        )

    @app.get("/health")
    async def health() -> Response:
        registry = service.registry
        return json_response({"status": "ok", "tools": registry.tools, "apis": len(registry)})

    return BodyLimit(app, max_body_bytes)
