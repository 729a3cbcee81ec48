"""Tool server benchmark: requests/s and latency on loopback, for cache hits and simulator misses,
beside StableToolBench's way of serving a cache hit.

Our server (``python -m inference_utils.toolserver`` on StableToolBench's 765 test queries, a
fresh SQLite cache, the offline simulator) is loaded by 1, 8 and 64 concurrent clients, each a
keep-alive HTTP/1.1 connection that sends ToolBench's request and waits for the answer before
the next (a closed loop, as agents call tools). The calls are distinct calls of the queries'
APIs, with the APIs' documented arguments:

* *miss*: every request is a call the server has not seen: the offline simulator answers and
  the answer is committed to the cache before it is sent;
* *hit*: the same calls again, shuffled: every answer comes from the cache.

*StableToolBench's way*: a server with StableToolBench's structure for a cache hit, on the same
stack (FastAPI, uvicorn, one process): a synchronous handler with a pydantic request model that
standardizes the names, finds ``<category>/<tool>_for_<category>/<api>.json``, reads and parses
the whole file, and looks up ``str(tool_input)``. Its cache folder is ours, exported
(``--export_stb_cache``), so it holds the same answers to the same calls.

The load generator is this process (uvloop, raw HTTP on asyncio streams, so that it costs the
2 cores as little as possible); each server is a child process. A request counts as an error
unless its answer is HTTP 200 with an empty ``error``.

    python benchmarks/bench_toolserver.py [--calls 1500] [--hit_requests 6000] [--write_results]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import orjson
from bench_prepro import free_port, machine, write_results
from fastapi import FastAPI
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
QUERIES = (
    ROOT.parent / "shared" / "data" / "stabletoolbench" / "solvable_queries" / "test_instruction"
)
SECTION = "## Tool server (inference_utils.toolserver)"
CLIENTS = (1, 8, 64)
TARGET_RATE, TARGET_P99_MS = 1000.0, 50.0

sys.path.insert(0, str(ROOT))
from inference_utils.toolserver.tools import load_registry  # noqa: E402
from process_data.protocol import api_name_of, category_name_of, standardize  # noqa: E402


@dataclass
class Measure:
    server: str
    source: str
    clients: int
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def workload(count: int, seed: int) -> list[bytes]:
    """``count`` distinct ToolBench requests over the test queries' APIs, as request bodies."""
    registry = load_registry([QUERIES])
    specs = [registry.get(key) for key in sorted(registry._apis, key=str)]
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        spec = specs[rng.randrange(len(specs))]
        params = spec.required_parameters + spec.optional_parameters[:1]
        arguments = {
            p.get("name", "q"): f"{p.get('default') or p.get('name', 'v')}-{seed}-{i}"
            for p in params
            if isinstance(p, dict)
        }
        arguments = arguments or {"page": f"{seed}-{i}"}
        body = {
            "category": spec.category,
            "tool_name": spec.tool_name,
            "api_name": spec.api_name,
            "tool_input": json.dumps(arguments),
            "strip": "",
            "toolbench_key": "",
        }
        bodies.append(orjson.dumps(body))
    return bodies


REQUEST_HEAD = (
    b"POST /virtual HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n"
)


async def _client(port: int, bodies: list[bytes], latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    try:
        for body in bodies:
            head = REQUEST_HEAD % len(body)
            start = time.perf_counter()
            writer.write(head + body)
            header = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in header.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            )
            answer = await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if not header.startswith(b"HTTP/1.1 200") or b'"error":""' not in answer.replace(
                b'": "', b'":"'
            ):
                errors += 1
    finally:
        writer.close()
    return errors


def load(port: int, bodies: list[bytes], clients: int) -> tuple[float, list[float], int]:
    """Send ``bodies`` over ``clients`` connections; (seconds, latencies, errors)."""

    async def run() -> tuple[float, list[float], int]:
        shares = [bodies[k::clients] for k in range(clients)]
        latencies: list[float] = []
        start = time.perf_counter()
        errors = await asyncio.gather(*(_client(port, share, latencies) for share in shares))
        return time.perf_counter() - start, latencies, sum(errors)

    import uvloop

    return uvloop.run(run())


def measure(server: str, source: str, port: int, bodies: list[bytes], clients: int) -> Measure:
    seconds, latencies, errors = load(port, bodies, clients)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Measure(
        server, source, clients, len(bodies), seconds, cuts[49] * 1e3, cuts[98] * 1e3, errors
    )


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
        if proc.poll() is not None:
            break
    proc.kill()
    sys.exit(f"bench_toolserver: {cmd[2]} did not start: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(timeout=30)


# -- StableToolBench's way of serving a cache hit ----------------------------------------------


class Info(BaseModel):
    """ToolBench's request, as StableToolBench's server declares it."""

    category: str
    tool_name: str
    api_name: str
    tool_input: str | dict
    strip: str
    toolbench_key: str


def stb_style_app(cache_dir: Path) -> FastAPI:
    """A server with StableToolBench's structure for a cache hit (see the module docstring)."""
    app = FastAPI()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/virtual")
    def virtual(info: Info) -> dict:
        category = category_name_of(info.category)
        tool = standardize(info.tool_name)
        api = api_name_of(info.api_name).split(f"_for_{tool}")[0]
        tool_input = (
            json.loads(info.tool_input) if isinstance(info.tool_input, str) else info.tool_input
        )
        path = cache_dir / category / f"{tool}_for_{category}" / f"{api}.json"
        if path.exists():
            with open(path, encoding="utf-8") as fh:
                cache = json.load(fh)
            if str(tool_input) in cache:
                return cache[str(tool_input)]
        return {"error": "not in the cache", "response": ""}

    return app


def serve_stb_style(cache_dir: Path, port: int) -> None:
    import uvicorn

    uvicorn.run(
        stb_style_app(cache_dir), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


# -- the benchmark ------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> list[Measure]:
    results = []
    cache = work / "tools.sqlite"
    port = free_port()
    ours = [sys.executable, "-m", "inference_utils.toolserver", "--queries", str(QUERIES)]
    ours += ["--cache", str(cache), "--port", str(port), "--log_level", "warning"]
    proc = start(ours, port, work / "ours.log")
    seen: list[bytes] = []
    try:
        load(port, workload(200, seed=99), 8)  # warm up (its calls are not measured)
        for k, clients in enumerate(CLIENTS):
            bodies = workload(args.calls, seed=k)
            results.append(measure("ours", "miss: offline simulator", port, bodies, clients))
            seen += bodies
            print(results[-1], file=sys.stderr)
        hits = [seen[i % len(seen)] for i in range(args.hit_requests)]
        random.Random(7).shuffle(hits)
        for clients in CLIENTS:
            results.append(measure("ours", "hit: cache", port, hits, clients))
            print(results[-1], file=sys.stderr)
    finally:
        stop(proc)
    exported = work / "stb_cache"
    subprocess.run(
        [*ours[:3], "--cache", str(cache), "--export_stb_cache", str(exported)],
        check=True,
        capture_output=True,
    )
    port = free_port()
    stb = [sys.executable, __file__, "--serve_stb_style", str(exported), "--port", str(port)]
    proc = start(stb, port, work / "stb.log")
    try:
        load(port, hits[:200], 8)
        for clients in CLIENTS:
            results.append(
                measure("StableToolBench's way", "hit: per-API JSON file", port, hits, clients)
            )
            print(results[-1], file=sys.stderr)
    finally:
        stop(proc)
    files = list(exported.glob("*/*/*.json"))
    args.stb_files = (len(files), statistics.mean(f.stat().st_size for f in files))
    return results


def report(results: list[Measure], args: argparse.Namespace, minutes: float) -> str:
    rows = "\n".join(
        f"| {m.server} | {m.source} | {m.clients} | {m.requests:,} | {m.rate:,.0f} "
        f"| {m.p50_ms:.1f} | {m.p99_ms:.1f} | {m.errors} |"
        for m in results
    )
    ours = [m for m in results if m.server == "ours" and m.source.startswith("hit")]
    hit64 = next(m for m in ours if m.clients == 64)
    stb64 = next(m for m in results if m.server != "ours" and m.clients == 64)
    files, size = args.stb_files
    met = hit64.rate >= TARGET_RATE and hit64.p99_ms < TARGET_P99_MS
    met = met and not any(m.errors for m in results)
    stack = f"fastapi {version('fastapi')}, uvicorn {version('uvicorn')} (httptools, uvloop)"
    setup = (
        "Our server on StableToolBench's 765 test queries (2,490 APIs), a fresh SQLite cache "
        "and the offline simulator, one process. Clients are keep-alive connections that each "
        "wait for an answer before sending the next request; the load generator runs on the "
        f"same 2 cores. *Miss* rows send {args.calls:,} calls the server has not seen (each "
        "level its own), so each answer is simulated and committed to the cache before it is "
        f"sent; *hit* rows send {args.hit_requests:,} requests drawn from those "
        f"{3 * args.calls:,} calls, shuffled. *StableToolBench's way* serves the same hits "
        "with StableToolBench's structure on the same stack (a synchronous FastAPI handler "
        "with a pydantic model that reads and parses the API's JSON cache file on every "
        f"request); its cache is ours, exported: {files:,} files of {size / 1024:.1f} KiB on "
        f"average, about {3 * args.calls / files:.1f} calls per API (a long-used "
        "StableToolBench cache holds more per API, and each request then parses more). The "
        f"benchmark took {minutes:.1f} minutes."
    )
    verdict = (
        f"Cache hits at 64 clients: {hit64.rate:,.0f} requests/s with p99 "
        f"{hit64.p99_ms:.1f} ms (targets: at least {TARGET_RATE:,.0f}/s, p99 under "
        f"{TARGET_P99_MS:.0f} ms and 0 errors: {'met' if met else 'NOT met'}); "
        f"StableToolBench's way: {stb64.rate:,.0f} requests/s with p99 {stb64.p99_ms:.1f} ms "
        f"on the same calls (ours {hit64.rate / stb64.rate:.1f}× its rate). These figures "
        "are this 2-core CPU's: the clients and the server share it."
    )
    command = (
        f"python benchmarks/bench_toolserver.py --calls {args.calls} "
        f"--hit_requests {args.hit_requests} --write_results"
    )
    return f"""{SECTION}

{datetime.date.today()}, {machine()}; {stack}.

```bash
{command}
```

{setup}

| server | answers from | clients | requests | requests/s | p50 (ms) | p99 (ms) | errors |
|---|---|---:|---:|---:|---:|---:|---:|
{rows}

{verdict}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1500, help="distinct calls per miss level")
    parser.add_argument("--hit_requests", type=int, default=6000, help="requests per hit level")
    parser.add_argument("--write_results", action="store_true")
    parser.add_argument("--serve_stb_style", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_stb_style:
        return serve_stb_style(args.serve_stb_style, args.port)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_toolserver_") as tmp:
        results = run(args, Path(tmp))
    text = report(results, args, (time.monotonic() - started) / 60)
    print(text)
    if args.write_results:
        write_results(text, SECTION)


if __name__ == "__main__":
    main()
