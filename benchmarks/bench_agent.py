"""Real-time agent benchmark: queries/s at ``--concurrency`` 8 against 1, with tool calls that
take 0.5 s.

The tool server is ours (offline simulator, a fresh cache) behind a proxy of this benchmark
that holds every call ``--delay`` seconds before forwarding it, as a remote API would. The
queries are the ``--num_queries`` StableToolBench G1 test queries with the shortest prompts;
the search is ``DFS_woFilter_w2``. Two workloads:

* ``endpoints``: the three roles behind OpenAI-compatible servers of this benchmark that
  answer by rule, at once (or after ``--llm_delay`` s): the planner calls a tool until the
  query has ``--calls`` observations, then concludes; the caller calls the next API of the
  query's tool documents with every argument set; the summarizer quotes the last
  observation. The run is bound by the tool calls, as with roles served on a GPU.
* ``local``: SmolLM2-135M (``smollm2-135m``) as the three roles, on this machine's CPU, with
  the bounds of the end-to-end tests (``--max_new_tokens 24``, 3 steps a chain, 8 LLM calls a
  query). The untrained model writes no valid call, so this run is bound by the model: it
  measures batching across queries. The model is loaded and warmed before timing.

Each workload runs at concurrency 1, then at ``--concurrency``, on the same queries; the time
is that of the driver (:func:`inference_utils.driver.run_searches`), from the first
request to the last answer. The answers of the two runs are compared (they must not depend on
the concurrency).

    python benchmarks/bench_agent.py [--workloads endpoints,local] [--num_queries 16]
        [--concurrency 8] [--delay 0.5] [--calls 2] [--threads 1]
    python benchmarks/bench_agent.py --workloads endpoints --num_queries 4 --delay 0.1  # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from bench_prepro import free_port
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
QUERIES = (
    ROOT.parent / "shared" / "data" / "stabletoolbench" / "solvable_queries" / "test_instruction"
) / "G1_instruction.json"
METHOD = "DFS_woFilter_w2"
TARGET = 4.0

from inference_utils.agent.answers import answer_json  # noqa: E402
from inference_utils.agent.environment import QueryEnv  # noqa: E402
from inference_utils.agent.policies import make_policy  # noqa: E402
from inference_utils.agent.search import search  # noqa: E402
from inference_utils.backends import ModelRequest  # noqa: E402
from inference_utils.driver import RunStats, run_searches  # noqa: E402
from inference_utils.endpoints import Endpoint, EndpointBackend, EndpointClient  # noqa: E402
from inference_utils.toolclient import ToolClient  # noqa: E402
from process_data.protocol import (  # noqa: E402
    ASSISTANT,
    MODEL_INPUT_PREFIX,
    OBSERVATION,
    PROMPT_TEMPLATES,
    format_action,
)

# Where the tool documents sit in a caller prompt, and how history turns start.
_DOCS_BEFORE, _DOCS_AFTER = PROMPT_TEMPLATES["toolbench_caller"].split("{doc}")
_DOCS_AFTER = _DOCS_AFTER.split("{history}")[0].rstrip("\n")
_SEEN, _PLANNED = f"{OBSERVATION}: ", f"{ASSISTANT}: "

# --------------------------------------------------------------------------------------------
# Servers: the delaying tool proxy, the rule-playing role endpoints
# --------------------------------------------------------------------------------------------


class DelayedTools(ThreadingHTTPServer):
    """Forwards each tool call to ``upstream`` after ``delay`` seconds."""

    daemon_threads = True

    def __init__(self, upstream: str, delay: float):
        super().__init__(("127.0.0.1", 0), _DelayHandler)
        self.upstream, self.delay = upstream, delay
        self.http = httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64))
        self.url = f"http://127.0.0.1:{self.server_address[1]}/virtual"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _DelayHandler(BaseHTTPRequestHandler):
    server: DelayedTools

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["content-length"]))
        time.sleep(self.server.delay)
        answer = self.server.http.post(
            self.server.upstream, content=body, headers={"content-type": "application/json"}
        )
        self.send_response(answer.status_code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)


def tool_docs(prompt: str) -> list[dict]:
    """The α-UMi tool documents at the head of a role prompt."""
    head = prompt.split(_DOCS_BEFORE, 1)[-1]
    docs = head.split(_DOCS_AFTER, 1)[0]
    return [json.loads(line) for line in docs.splitlines() if line.startswith("{")]


def rule(role: str, prompt: str, calls: int) -> str:
    """What each role answers: ``calls`` tool calls, then the answer."""
    seen = prompt.count(_SEEN)
    if role == "planner":
        if seen < calls:
            return f"Step {seen + 1}: call the next API.\n Next: caller."
        return "The observations answer the query.\n Next: conclusion."
    if role == "caller":
        docs = tool_docs(prompt)
        tool = docs[seen % len(docs)]
        arguments = {name: "1" for name in tool.get("input", {})}
        return format_action(tool["Name"], json.dumps(arguments))
    last = prompt.rsplit(_SEEN, 1)[-1].split(_PLANNED)[0]
    return "From the tools: " + last[:80]


class RoleServer:
    """An OpenAI-compatible completions server playing ``role`` by :func:`rule`."""

    def __init__(self, role: str, calls: int, delay: float):

        app = FastAPI()

        async def models() -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": role}]})

        async def complete(request: Request) -> JSONResponse:
            body = await request.json()
            if delay:
                await asyncio.sleep(delay)
            prompt = body["prompt"].removeprefix(MODEL_INPUT_PREFIX)
            text = rule(role, prompt, calls)
            return JSONResponse({"choices": [{"index": 0, "text": text}]})

        app.add_api_route("/v1/models", models, methods=["GET"])
        app.add_api_route("/v1/completions", complete, methods=["POST"])
        self.server, port = serve(app, f"the {role} server")
        self.url = f"http://127.0.0.1:{port}/v1"

    def stop(self) -> None:
        self.server.should_exit = True


def serve(app: FastAPI, what: str):
    """``app`` served by uvicorn on 127.0.0.1 from a thread of this process, once it has
    started; the server (``should_exit`` stops it) and its port."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)
    return server, port


@contextlib.contextmanager
def gguf_judge(work: Path) -> Iterator[tuple[str, str]]:
    """The default GGUF (SmolLM2-135M-Instruct) on a llama.cpp server, as a ToolEval judge:
    its API base and model name while the block runs (its log in ``work/judge.log``)."""
    from GLPFT.models import gguf_path
    from inference_utils.server_process import ServerProcess

    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path())]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "8192", "--n_threads", "2"]
    url = f"http://127.0.0.1:{port}/v1"
    with ServerProcess("llama.cpp judge", cmd, f"{url}/models", work / "judge.log"):
        yield url, gguf_path().name


def start_toolserver(work: Path) -> subprocess.Popen:
    port = free_port()
    cmd = [sys.executable, "-m", "inference_utils.toolserver", "--queries", str(QUERIES)]
    cmd += ["--cache", str(work / "tools.sqlite"), "--port", str(port), "--log_level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.url = f"http://127.0.0.1:{port}/virtual"  # type: ignore[attr-defined]
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("the tool server did not start")
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def shortest_queries(n: int) -> list[dict]:
    """The ``n`` G1 queries whose first planner prompt is shortest (in characters)."""
    queries = json.loads(QUERIES.read_text())

    def length(query: dict) -> int:
        env = QueryEnv.from_query(query)
        policy = make_policy(False, env.query, query["query_id"])
        return len(next(policy.decide(env.initial_messages(), env.functions)).prompt)

    return sorted(queries, key=lambda q: (length(q), str(q["query_id"])))[:n]


def run(
    queries: list[dict], llm, tool_url: str, concurrency: int, bounds: dict
) -> tuple[RunStats, dict]:
    """One run of the driver; its stats and each query's answer file (as JSON text)."""
    answers: dict = {}
    searches = {}
    for query in queries:
        env = QueryEnv.from_query(query)
        policy = make_policy(False, env.query, query["query_id"])
        searches[query["query_id"]] = search(METHOD, policy, env, **bounds)

    def done(key, result, error) -> None:
        if error is not None:
            raise RuntimeError(f"query {key} failed: {error}") from error
        answers[key] = json.dumps(answer_json(result, seed=key), sort_keys=True)

    tools = ToolClient(tool_url, timeout=60, max_connections=64)
    try:
        stats = run_searches(searches, llm, tools, concurrency, done)
    finally:
        tools.close()
    return stats, answers


def workload(name: str, args: argparse.Namespace, tool_url: str) -> dict:
    queries = shortest_queries(args.num_queries if name == "endpoints" else args.local_queries)
    servers: list[RoleServer] = []
    if name == "endpoints":
        roles = ("planner", "caller", "summarizer")
        servers = [RoleServer(role, args.calls, args.llm_delay) for role in roles]
        llm = EndpointBackend(
            {
                role: EndpointClient(Endpoint(s.url), max_new_tokens=64, max_connections=64)
                for role, s in zip(roles, servers, strict=True)
            }
        )
        bounds: dict = {}
    else:
        from inference_utils.generation import GenerationSettings, HFModels

        settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
        llm = HFModels({r: args.model for r in ("planner", "caller", "summarizer")}, settings)
        llm.generate("planner", [ModelRequest(prompt="warm up")])  # load before timing
        # 8 LLM calls a query, as the recorded figures were measured
        bounds = {"max_steps": 3, "max_query_count": 8, "count_role_calls": True}
    rows = {}
    try:
        for concurrency in (1, args.concurrency):
            stats, answers = run(queries, llm, tool_url, concurrency, bounds)
            rows[concurrency] = (stats, answers)
            print(
                f"  {name} concurrency {concurrency}: {len(queries)} queries in "
                f"{stats.seconds:.1f} s, {len(queries) / stats.seconds:.3f} queries/s, "
                f"{stats.llm_calls} LLM calls ({stats.model_calls} model calls), "
                f"{stats.tool_calls} tool calls",
                file=sys.stderr,
                flush=True,
            )
    finally:
        for server in servers:
            server.stop()
        if isinstance(llm, dict):
            for client in llm.values():
                client.close()
    (one, one_answers), (many, many_answers) = rows[1], rows[args.concurrency]
    return {
        "workload": name,
        "queries": len(queries),
        "seconds_1": round(one.seconds, 2),
        f"seconds_{args.concurrency}": round(many.seconds, 2),
        "qps_1": round(len(queries) / one.seconds, 4),
        f"qps_{args.concurrency}": round(len(queries) / many.seconds, 4),
        "speedup": round(one.seconds / many.seconds, 2),
        "llm_calls": many.llm_calls,
        "model_calls": {1: one.model_calls, args.concurrency: many.model_calls},
        "tool_calls": many.tool_calls,
        "same_answers": one_answers == many_answers,
    }


def report(results: list[dict], args: argparse.Namespace) -> str:
    c = args.concurrency
    lines = [
        f"Real-time agent, {METHOD}, tool calls delayed {args.delay} s, concurrency {c} vs 1 "
        f"(target ≥{TARGET:g}×):",
        "",
        f"| workload | queries | LLM calls | tool calls | s at 1 | s at {c} | queries/s at 1 | "
        f"queries/s at {c} | speedup | same answers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['workload']} | {r['queries']} | {r['llm_calls']} | {r['tool_calls']} | "
            f"{r['seconds_1']} | {r[f'seconds_{c}']} | {r['qps_1']} | {r[f'qps_{c}']} | "
            f"{r['speedup']}× | {'yes' if r['same_answers'] else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="endpoints,local")
    p.add_argument("--num_queries", type=int, default=16, help="queries of the endpoints run")
    p.add_argument("--local_queries", type=int, default=8, help="queries of the local run")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--delay", type=float, default=0.5, help="seconds per tool call")
    p.add_argument("--llm_delay", type=float, default=0.0, help="seconds per role request")
    p.add_argument("--calls", type=int, default=2, help="tool calls per query (endpoints)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--max_new_tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=1, help="torch threads (local)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        server = start_toolserver(Path(work))
        proxy = DelayedTools(server.url, args.delay)  # type: ignore[attr-defined]
        try:
            results = [workload(w, args, proxy.url) for w in args.workloads.split(",") if w]
        finally:
            proxy.shutdown()
            server.terminate()
            server.wait(timeout=20)
    print(report(results, args))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
