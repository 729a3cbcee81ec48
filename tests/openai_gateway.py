"""A real HTTP gateway in front of an OpenAI-compatible server, for fault injection.

It forwards every request to the upstream server and can, on demand, behave like the servers
users meet: answer 503 or 500, answer late, or refuse ``tool``/``function`` messages with
``{"given":"function","permitted":["system","assistant","user"]}``. It logs each request and
which gateways were busy when it arrived, so tests can see concurrency across role endpoints.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from servers import watch

PERMITTED = ["system", "assistant", "user"]


@dataclass
class Faults:
    reject_tool_roles: bool = False
    fail_first: int = 0  # answer the first N POSTs with ``fail_status``
    fail_status: int = 503
    fail_always: bool = False
    delay_first: int = 0  # hold the first N POSTs for ``delay`` seconds
    delay: float = 0.0


@dataclass
class Busy:
    """In-flight requests per gateway, shared by the gateways of one test."""

    now: dict[str, int] = field(default_factory=dict)
    seen: list[tuple[str, ...]] = field(default_factory=list)  # busy gateways at each arrival
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self, name: str) -> None:
        with self.lock:
            self.now[name] = self.now.get(name, 0) + 1
            self.seen.append(tuple(sorted(k for k, v in self.now.items() if v)))

    def leave(self, name: str) -> None:
        with self.lock:
            self.now[name] -= 1


class Gateway:
    def __init__(self, name: str, upstream: str, busy: Busy | None = None):
        self.name = name
        self.upstream = upstream.rstrip("/")
        self.busy = busy or Busy()
        self.faults = Faults()
        self.log: list[dict] = []  # {path, body, status}
        self.posts = 0
        self.abandoned = 0  # held requests whose client had hung up when the hold ended
        self.keys: list[str] = []  # each POST's Authorization header ("" if none)
        self.app = FastAPI()
        self.app.add_api_route("/v1/{path:path}", self._handle, methods=["GET", "POST"])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> Gateway:
        self._thread.start()
        deadline = time.time() + 30
        while not self._server.started:
            if (message := self.death()) is not None:
                raise RuntimeError(message)
            if time.time() > deadline:
                raise RuntimeError("gateway did not start")
            time.sleep(0.05)
        watch(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    @property
    def expected_end(self) -> bool:
        return self._server.should_exit

    def death(self) -> str | None:
        """How the gateway stopped serving, if it stopped before ``__exit__``."""
        if self.expected_end or self._thread.ident is None or self._thread.is_alive():
            return None
        return f"the {self.name} gateway at {self.url} stopped serving: its server thread ended"

    def statuses(self) -> list[int]:
        return [entry["status"] for entry in self.log]

    async def _handle(self, path: str, request: Request) -> JSONResponse:
        body = await request.json() if request.method == "POST" else None
        if body is None:
            async with httpx.AsyncClient(timeout=600) as client:
                answer = await client.get(f"{self.upstream}/{path}")
            return JSONResponse(answer.json(), status_code=answer.status_code)
        self.busy.enter(self.name)
        self.keys.append(request.headers.get("authorization", ""))
        try:
            self.posts += 1
            n, f = self.posts, self.faults
            status, content = None, None
            if f.fail_always or n <= f.fail_first:
                status, content = f.fail_status, {"error": {"message": "injected failure"}}
            elif f.reject_tool_roles:
                bad = next(
                    (m["role"] for m in body.get("messages", []) if m["role"] not in PERMITTED),
                    None,
                )
                if bad is not None:
                    status, content = 400, {"given": bad, "permitted": PERMITTED}
            if status is None and n <= f.delay_first:
                await asyncio.sleep(f.delay)
                if await request.is_disconnected():  # the client gave up waiting
                    self.abandoned += 1
                    return JSONResponse({}, status_code=499)
            if status is None:
                async with httpx.AsyncClient(timeout=600) as client:
                    answer = await client.post(f"{self.upstream}/{path}", json=body)
                status, content = answer.status_code, answer.json()
            self.log.append({"path": path, "body": body, "status": status})
            return JSONResponse(content, status_code=status)
        finally:
            self.busy.leave(self.name)


class ScriptedEndpoint(Gateway):
    """An OpenAI-compatible completions server that answers each prompt from a script
    (prompt → completion): a model whose outputs are known. A prompt it does not know gets a
    404, so a client that prompts differently fails."""

    def __init__(self, script: dict[str, str]):
        super().__init__("scripted", "http://127.0.0.1:9")
        self.script = script
        self.unknown: list[str] = []

    async def _handle(self, path: str, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"object": "list", "data": [{"id": "scripted"}]})
        prompt = (await request.json()).get("prompt")
        text = self.script.get(prompt)
        if text is None:
            self.unknown.append(prompt)
            return JSONResponse({"error": {"message": "unknown prompt"}}, status_code=404)
        return JSONResponse({"choices": [{"index": 0, "text": text}]})


class ScriptedJudge(Gateway):
    """An OpenAI-compatible chat server that plays a judge: each request names a function
    (``tool_choice``) and a query (a ``[qN]`` tag in the prompt); the n-th request for that pair
    gets the n-th verdict of ``script[(function, tag)]`` (the last one repeats), as a tool call,
    or as JSON text when ``tool_calls=False``. ``faults`` (``Faults``) injects 429/500 answers
    and delays; ``garbage`` answers the first N requests with text that is not JSON."""

    def __init__(
        self, script: dict[tuple[str, str], list[dict]], tool_calls: bool = True, garbage: int = 0
    ):
        super().__init__("judge", "http://127.0.0.1:9")
        self.script, self.tool_calls, self.garbage = script, tool_calls, garbage
        self.asked: dict[tuple[str, str], int] = {}
        self.requests: list[dict] = []
        self.keys: list[str] = []  # the bearer token of each request
        self._lock = threading.Lock()

    async def _handle(self, path: str, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse({"object": "list", "data": [{"id": "scripted-judge"}]})
        body = await request.json()
        with self._lock:
            self.posts += 1
            n = self.posts
            self.requests.append(body)
            self.keys.append(request.headers.get("authorization", "").removeprefix("Bearer "))
        f = self.faults
        if f.fail_always or n <= f.fail_first:
            return JSONResponse({"error": {"message": "injected"}}, status_code=f.fail_status)
        if n <= f.delay_first:
            await asyncio.sleep(f.delay)
        text = body["messages"][-1]["content"]
        name = (body.get("tool_choice") or {}).get("function", {}).get("name")
        if name is None:  # JSON in text: the function is named in the instruction
            name = next(fn for (fn, _) in self.script if f"`{fn}`" in text)
        tag = next((t for (fn, t) in self.script if fn == name and f"[{t}]" in text), None)
        if tag is None:
            return JSONResponse({"error": {"message": f"no script for {name}"}}, status_code=404)
        with self._lock:
            k = self.asked.get((name, tag), 0)
            self.asked[(name, tag)] = k + 1
        verdicts = self.script[(name, tag)]
        verdict = verdicts[min(k, len(verdicts) - 1)] | {"reason": f"scripted {k}"}
        arguments = "no json here" if n <= self.garbage else json.dumps(verdict)
        if self.tool_calls and "tools" in body:
            call = {
                "id": f"call_{n}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        else:
            message = {"role": "assistant", "content": arguments}
        return JSONResponse(
            {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
        )
