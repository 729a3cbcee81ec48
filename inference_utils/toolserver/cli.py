"""``python -m inference_utils.toolserver`` (``umi-toolserver``): serve ToolBench's tool API
offline, from a cache, an upstream server, an LLM simulator or the offline simulator.

    python -m inference_utils.toolserver \\
        --queries ../shared/data/stabletoolbench/solvable_queries/test_instruction \\
        --cache cache/tools.sqlite [--import_stb_cache DIR] [--upstream URL] \\
        [--simulator_endpoint http://127.0.0.1:8000/v1 --simulator_model M] \\
        --host 127.0.0.1 --port 8080

``--export_stb_cache DIR`` writes the cache in StableToolBench's layout and exits.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from inference_utils.endpoints import Endpoint, EndpointBackend, EndpointClient

from .app import MAX_BODY_BYTES, create_app
from .cache import AnswerCache, export_stb_cache, import_stb_cache
from .service import ToolService
from .simulate import DEFAULT_PROMPT, SIMULATOR, LlmSimulator, SimulatorPrompt
from .tools import ToolSourceError, load_registry
from .upstream import Upstream

PROG = "umi-toolserver"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    tools = p.add_argument_group("tools")
    tools.add_argument(
        "--queries",
        action="append",
        default=[],
        metavar="PATH",
        help="a test-instruction query file, or a folder of them (repeatable)",
    )
    tools.add_argument(
        "--tools_dir",
        action="append",
        default=[],
        metavar="DIR",
        help="ToolBench's toolenv/tools folder (repeatable)",
    )
    cache = p.add_argument_group("cache")
    cache.add_argument("--cache", type=Path, default=Path("cache/tools.sqlite"), help="SQLite file")
    cache.add_argument(
        "--import_stb_cache",
        type=Path,
        metavar="DIR",
        help="StableToolBench's tool_response_cache, read before serving",
    )
    cache.add_argument(
        "--export_stb_cache",
        type=Path,
        metavar="DIR",
        help="write the cache in StableToolBench's layout and exit",
    )
    src = p.add_argument_group("sources after the cache")
    src.add_argument(
        "--upstream",
        metavar="URL",
        help="a ToolBench or StableToolBench server, e.g. http://HOST:8080/rapidapi",
    )
    src.add_argument("--upstream_timeout", type=float, default=30.0, help="seconds")
    src.add_argument(
        "--simulator_endpoint",
        metavar="URL",
        help="an OpenAI-compatible API base, e.g. http://127.0.0.1:8000/v1",
    )
    src.add_argument("--simulator_model", help="model name (default: the first the endpoint lists)")
    src.add_argument(
        "--simulator_api_key",
        help="the simulator endpoint's key (default: $OPENAI_API_KEY, for OpenAI's API only)",
    )
    src.add_argument(
        "--simulator_api_key_env",
        metavar="VAR",
        help="the environment variable holding the simulator's key (keeps it out of ps)",
    )
    src.add_argument(
        "--simulator_prompt",
        type=Path,
        default=DEFAULT_PROMPT,
        help="YAML with 'system' and 'user' texts",
    )
    src.add_argument("--simulator_max_tokens", type=int, default=1024)
    src.add_argument("--simulator_timeout", type=float, default=120.0, help="seconds per request")
    src.add_argument(
        "--no_offline",
        action="store_true",
        help="no offline simulator: calls nothing else answers get an error",
    )
    srv = p.add_argument_group("server")
    srv.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    srv.add_argument("--port", type=int, default=8080)
    srv.add_argument("--max_body_bytes", type=int, default=MAX_BODY_BYTES)
    srv.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    srv.add_argument(
        "--access_log", action="store_true", help="log each request line (never bodies or keys)"
    )
    return p  # fmt: skip


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _import(cache: AnswerCache, folder: Path) -> None:
    report = import_stb_cache(cache, folder)
    _say(f"imported {folder}: {report.summary()}")
    if report.rejects:
        rejects = cache.path.with_name(cache.path.name + ".import-rejects.jsonl")
        with open(rejects, "w", encoding="utf-8") as fh:
            for reject in report.rejects:
                fh.write(json.dumps(reject, ensure_ascii=False) + "\n")
        first = report.rejects[0]
        _say(
            f"{len(report.rejects)} keys or files not imported, listed in {rejects}; "
            f"the first: {first['file']}: {first['reason']}"
        )


def build_service(args: argparse.Namespace) -> ToolService:
    registry = load_registry(args.queries, args.tools_dir)
    _say(f"tools: {registry.tools} tools, {len(registry)} APIs ({registry.report.summary()})")
    for reject in registry.report.rejects[:5]:
        _say(f"skipped {reject}")
    cache = AnswerCache(args.cache)
    if args.import_stb_cache:
        _import(cache, args.import_stb_cache)
    upstream = Upstream(args.upstream, args.upstream_timeout) if args.upstream else None
    simulator = None
    if args.simulator_endpoint:
        endpoint = Endpoint(
            args.simulator_endpoint,
            args.simulator_model,
            "chat",
            args.simulator_api_key,
            args.simulator_api_key_env,
        )
        client = EndpointClient(
            endpoint, max_new_tokens=args.simulator_max_tokens, temperature=0.0,
            timeout=args.simulator_timeout, max_retries=2,
        )  # fmt: skip
        backend = EndpointBackend({SIMULATOR: client})
        simulator = LlmSimulator(backend, SimulatorPrompt.load(args.simulator_prompt))
    return ToolService(registry, cache, upstream, simulator, offline=not args.no_offline)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.export_stb_cache:
        with AnswerCache(args.cache) as cache:
            if args.import_stb_cache:
                _import(cache, args.import_stb_cache)
            try:
                count = export_stb_cache(cache, args.export_stb_cache)
            except ValueError as exc:
                _say(f"error: nothing exported: {exc}")
                return 2
        _say(f"exported {count} answers to {args.export_stb_cache}")
        return 0
    try:
        service = build_service(args)
    except (ToolSourceError, FileNotFoundError, ValueError) as exc:
        _say(f"error: {exc}")
        return 2
    if not len(service.registry) and not sum(service.cache.counts().values()):
        _say("warning: no tools and an empty cache: every call will be answered with an error")
    if not _is_loopback(args.host):
        _say(
            f"warning: serving on {args.host}, reachable from other machines; "
            "the API has no authentication"
        )
    _say(f"sources: cache {args.cache} → {' → '.join(service.chain()) or 'nothing'}")
    import uvicorn

    app = create_app(service, args.max_body_bytes)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log
    )
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
