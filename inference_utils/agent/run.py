"""``python -m inference_utils.agent.run`` (``umi-run-agent``): the real-time agent.

    python -m inference_utils.agent.run \\
        --queries G1_instruction.json --toolserver http://127.0.0.1:8080/virtual \\
        --method DFS_woFilter_w2 --output_dir out/answers/G1_instruction \\
        --planner_model_name_or_path P --caller_model_name_or_path C \\
        --summarizer_model_name_or_path S [--concurrency 8] [--max_observation_length 1024] \\
        [--parallel_calls]

Each query runs ToolBench's search (``CoT@n`` or ``DFS_woFilter_wN``) with α-UMi's planner,
caller and summarizer (local checkpoints, LoRA adapters with ``--<role>_use_lora``, or
OpenAI-compatible endpoints with ``--<role>_endpoint URL``), or with one model in the
single-LLM mode (``--backbone_model_name_or_path`` / ``--backbone_endpoint``); the role flags
are the static pipeline's. Up to ``--concurrency`` queries run at once: their tool calls in
parallel, their model calls batched per role (local models) or in parallel (endpoints).

``--parallel_calls`` (off by default; an extension beyond α-UMi and ToolBench): a caller (or
backbone) output holding several ``Action:`` / ``Action Input:`` pairs, none of them
``Finish``, runs them all as one plan, each call as soon as those it refers to have answered:
an argument value ``"$N"`` (or ``"${N}"``) is the N-th call's response, ``${N}`` inside text its
text. The answer file holds them as consecutive calls (the first with the thought), so ToolEval
and process_data read it unchanged. Without the flag such an output is read as ToolBench and
α-UMi read it: one call whose arguments are the rest of the text.

Outputs in ``--output_dir``: one ToolBench answer file per query,
``<query_id>_<method>.json`` (under a folder named after the query file when ``--queries`` is
a folder), written atomically as each query ends, for ToolEval and for process_data; queries
whose file exists are skipped, so a run that stopped is resumed by running it again. Then
``summary.json`` (counts, failed queries with their reasons, LLM and tool calls, seconds). The
exit code is 3 when some queries failed; running the command again retries just those.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Generator, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from inference_utils.agent.answers import answer_json, answer_path, write_answer
from inference_utils.agent.environment import (
    MAX_OBSERVATION_LENGTH,
    QueryEnv,
    load_tool_descriptions,
)
from inference_utils.agent.llmcompiler import (
    DEFAULT_CONFIG,
    MAX_REPLANS,
    CompilerConfig,
    llmcompiler,
)
from inference_utils.agent.policies import agent_policy, make_policy
from inference_utils.agent.search import (
    MAX_QUERY_COUNT,
    MAX_STEPS,
    Method,
    SearchResult,
    parse_method,
    search,
)
from inference_utils.driver import RunStats, run_searches
from inference_utils.endpoints import EndpointError
from inference_utils.role_flags import (
    add_role_arguments,
    build_endpoints,
    build_models,
    generation_settings,
    prompt_types_of,
    sampling_temperature,
)
from inference_utils.search_requests import Request
from inference_utils.toolclient import ToolClient

PROG = "run_agent"


@dataclass(frozen=True)
class Query:
    """One query to run: where its answer goes and what the search needs."""

    key: str  # unique in the run: "<query_id>" or "<group>/<query_id>"
    query_id: str
    data: dict
    answer: Path


def read_queries(path: str | os.PathLike[str], output_dir: Path, method: str) -> list[Query]:
    """The queries of a test-instruction file (answers in ``output_dir``), or of every
    ``*.json`` file of a folder (answers in ``output_dir/<file name without .json>``)."""
    root = Path(path)
    if root.is_dir():
        files = sorted(root.glob("*.json"))
        if not files:
            raise SystemExit(f"{PROG}: {root}: no .json query files in this folder")
        sources = [(f, output_dir / f.stem, f"{f.stem}/") for f in files]
    elif root.is_file():
        sources = [(root, output_dir, "")]
    else:
        raise SystemExit(f"{PROG}: {root}: no such file or folder")
    queries: list[Query] = []
    for file, folder, prefix in sources:
        try:
            listed = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise SystemExit(f"{PROG}: {file}: cannot read JSON: {exc}") from None
        if not isinstance(listed, list):
            raise SystemExit(f"{PROG}: {file}: expected a JSON array of queries")
        seen = set()
        for k, data in enumerate(listed):
            if not isinstance(data, dict):
                raise SystemExit(f"{PROG}: {file}: query {k} is not an object")
            qid = str(data.get("query_id", k))  # ToolBench numbers queries without an id
            if qid in seen:
                raise SystemExit(f"{PROG}: {file}: query id {qid} appears twice")
            seen.add(qid)
            try:
                path = answer_path(folder, qid, method)
            except ValueError as exc:
                raise SystemExit(f"{PROG}: {file}: query {k}: {exc}") from None
            queries.append(Query(prefix + qid, qid, data, path))
    return queries


def select(queries: list[Query], query_ids: str | None, num_queries: int) -> list[Query]:
    """``--query_ids`` (comma-separated ids, in the file's order), then the first
    ``--num_queries``."""
    if query_ids:
        wanted = {q.strip() for q in query_ids.split(",") if q.strip()}
        missing = wanted - {q.query_id for q in queries}
        if missing:
            raise SystemExit(f"{PROG}: no query with id {', '.join(sorted(missing))}")
        queries = [q for q in queries if q.query_id in wanted]
    return queries[:num_queries] if num_queries > 0 else queries


@dataclass
class Summary:
    """What ``summary.json`` says of a run."""

    queries: int = 0
    skipped: int = 0  # answered by an earlier run
    answered: int = 0
    gave_up: int = 0
    no_answer: int = 0  # the search ended without a final answer or a give-up
    failed: dict[str, str] = field(default_factory=dict)  # query key → reason
    model_errors: int = 0  # model calls that failed and became messages (--on_model_error)
    query_seconds: dict[str, float] = field(default_factory=dict)  # from start to end

    def outcome(self, result: SearchResult) -> None:
        self.model_errors += result.model_errors
        if any(not node.pruned for node in result.terminal_nodes):
            self.answered += 1
        elif result.give_up_nodes:
            self.gave_up += 1
        else:
            self.no_answer += 1

    def to_json(self, stats: RunStats, args: argparse.Namespace) -> dict:
        return {
            "method": args.method,
            "queries": self.queries,
            "skipped": self.skipped,
            "run": self.queries - self.skipped,
            "answered": self.answered,
            "gave_up": self.gave_up,
            "no_answer": self.no_answer,
            "failed": len(self.failed),
            "failures": self.failed,
            "model_errors_continued": self.model_errors,
            "llm_calls": stats.llm_calls,
            "llm_calls_by_role": stats.llm_calls_by_role,
            "model_calls": stats.model_calls,
            "prompt_tokens": stats.prompt_tokens,
            "completion_tokens": stats.completion_tokens,
            "tool_calls": stats.tool_calls,
            "prefilled_tokens": stats.prefilled_tokens,
            "reused_tokens": stats.reused_tokens,
            "seconds": round(stats.seconds, 3),
            "concurrency": args.concurrency,
            "agent": args.agent,
            "query_seconds": self.query_seconds,
        }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m inference_utils.agent.run", description=__doc__.splitlines()[0]
    )
    p.add_argument("--queries", required=True, help="a test-instruction query file or folder")
    p.add_argument("--toolserver", required=True, help="e.g. http://127.0.0.1:8080/virtual")
    p.add_argument(
        "--agent",
        choices=AGENTS,
        default="alpha_umi",
        help="alpha_umi: ToolBench's search (--method) with alpha-UMi's roles or the "
        "backbone; react: one model, ToolLLaMA's Thought/Action/Action Input; "
        "function_calling: an endpoint's OpenAI tool calls, every call of a turn at once; "
        "llmcompiler: LLMCompiler's plan-and-execute (the last three on the backbone role)",
    )
    p.add_argument(
        "--method",
        help="CoT@n or DFS_woFilter_wN (default: DFS_woFilter_w2 for alpha_umi, CoT@1 for "
        "react and function_calling)",
    )
    p.add_argument(
        "--llmcompiler_config",
        default=str(DEFAULT_CONFIG),
        help="a folder with config.yaml: the planner's and joiner's examples",
    )
    p.add_argument(
        "--max_replans",
        type=int,
        default=MAX_REPLANS,
        help="new plans the joiner may ask for after the first (llmcompiler)",
    )
    p.add_argument("--output_dir", required=True)
    add_role_arguments(p)
    p.add_argument("--concurrency", type=int, default=8, help="queries run at once")
    p.add_argument(
        "--tool_concurrency",
        type=int,
        help="tool calls at once in all (default: --concurrency, at least 8): the calls of "
        "one plan or one turn run in parallel even with --concurrency 1",
    )
    p.add_argument("--max_observation_length", type=int, default=MAX_OBSERVATION_LENGTH)
    p.add_argument(
        "--parallel_calls",
        action="store_true",
        help="run a caller output holding several calls as one plan ($N: the N-th call's "
        "response); off by default, an extension beyond alpha-UMi",
    )
    p.add_argument("--single_chain_max_step", type=int, default=MAX_STEPS)
    p.add_argument(
        "--max_query_count",
        type=int,
        help=f"steps a query may take (default: ToolBench's, {MAX_QUERY_COUNT} for a DFS and "
        "no cap for CoT)",
    )
    p.add_argument(
        "--count_role_calls",
        action="store_true",
        help="count each role's LLM call toward --max_query_count and query_count (a "
        "multi-LLM step is two); ToolBench counts one per step",
    )
    p.add_argument(
        "--on_model_error",
        choices=("fail", "continue"),
        default="fail",
        help="a model call that fails for good: fail the query, reported and retried by the "
        "next run (default), or go on from an assistant message holding the error's text, "
        "as ToolBench's ChatGPT client does",
    )
    p.add_argument("--query_ids", help="comma-separated query ids to run (default: all)")
    p.add_argument("--num_queries", type=int, default=-1, help="run the first N queries")
    p.add_argument(
        "--tool_root_dir",
        help="ToolBench's toolenv/tools, for the tool descriptions in the system message",
    )
    p.add_argument("--toolbench_key", default="", help="sent to the tool server")
    p.add_argument("--tool_timeout", type=float, default=30.0, help="seconds per tool call")
    p.add_argument("--tool_retries", type=int, default=3)
    return p


#: The agents ``--agent`` picks; each writes ToolBench answer files.
AGENTS = ("alpha_umi", "react", "function_calling", "llmcompiler")
#: Each agent's default ``--method``; LLMCompiler's names its answer files.
AGENT_METHODS = {
    "alpha_umi": "DFS_woFilter_w2",
    "react": "CoT@1",
    "function_calling": "CoT@1",
    "llmcompiler": "LLMCompiler",
}


def _say(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def _searches(
    todo: list[Query],
    args: argparse.Namespace,
    chat: bool,
    descriptions: dict[str, str],
    started: dict[str, float],
) -> Iterator[tuple[Hashable, object]]:
    """Each query's search, made when the driver starts it (a bad query fails alone);
    ``started`` gets the moment each one starts."""
    method = parse_method(args.method) if args.agent != "llmcompiler" else None
    backbone = bool(args.backbone_model_name_or_path or args.backbone_endpoint)
    for query in todo:
        started[query.key] = time.monotonic()
        yield query.key, _search(query, method, args, chat, backbone, descriptions)


def _search(
    query: Query,
    method: Method | None,
    args: argparse.Namespace,
    chat: bool,
    backbone: bool,
    descriptions: dict[str, str],
) -> Generator[Request, object, SearchResult]:
    env = QueryEnv.from_query(query.data, descriptions, args.max_observation_length)
    if args.agent == "llmcompiler":
        return (yield from llmcompiler(env, args.compiler_config, max_replans=args.max_replans))
    if args.agent == "alpha_umi":
        policy = make_policy(
            backbone, env.query, query.key, prompt_types_of(args), chat, args.parallel_calls
        )
    else:
        policy = agent_policy(args.agent, query.key, chat)
    return (
        yield from search(
            method,
            policy,
            env,
            max_steps=args.single_chain_max_step,
            max_query_count=args.max_query_count,
            count_role_calls=args.count_role_calls,
            continue_on_model_error=args.on_model_error == "continue",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.agent == "llmcompiler" and args.method not in (None, AGENT_METHODS["llmcompiler"]):
        _say("--agent llmcompiler plans, it does not search: leave --method out")
        return 2
    args.method = args.method or AGENT_METHODS[args.agent]
    if args.agent != "alpha_umi" and not (
        args.backbone_model_name_or_path or args.backbone_endpoint
    ):
        _say(
            f"--agent {args.agent} runs on the backbone role: give --backbone_endpoint or "
            "--backbone_model_name_or_path"
        )
        return 2
    if args.agent == "function_calling" and args.backbone_endpoint and args.endpoint_api != "chat":
        _say(
            "--agent function_calling sends OpenAI tools: give --endpoint_api chat with "
            "--backbone_endpoint (or a local model, --backbone_model_name_or_path, whose chat "
            "template gets the tools)"
        )
        return 2
    if args.agent == "llmcompiler":
        try:  # read once, for every query
            args.compiler_config = CompilerConfig.load(args.llmcompiler_config)
        except (OSError, ValueError) as exc:
            _say(str(exc))
            return 2
    if args.concurrency < 1 or (args.tool_concurrency is not None and args.tool_concurrency < 1):
        _say("--concurrency and --tool_concurrency must be at least 1")
        return 2
    try:
        method = parse_method(args.method) if args.agent != "llmcompiler" else None
    except ValueError as exc:
        _say(str(exc))
        return 2
    if method and method.kind == "CoT" and method.n > 1 and not sampling_temperature(args):
        _say(
            f"{args.method} with greedy decoding: every try after the first repeats it; "
            "--temperature 0.5 samples as ToolBench's ToolLLaMA does"
        )
    out = Path(args.output_dir)
    queries = select(read_queries(args.queries, out, args.method), args.query_ids, args.num_queries)
    todo = [q for q in queries if not q.answer.exists()]
    summary = Summary(queries=len(queries), skipped=len(queries) - len(todo))
    for folder in sorted({q.answer.parent for q in queries}):
        folder.mkdir(parents=True, exist_ok=True)
    descriptions = load_tool_descriptions(args.tool_root_dir) if args.tool_root_dir else {}
    stats = RunStats()
    if todo:
        _run(todo, args, descriptions, summary, stats)
    (out / "summary.json").write_text(json.dumps(summary.to_json(stats, args), indent=2) + "\n")
    _say(
        f"{summary.queries} queries: {summary.skipped} done before, {summary.answered} answered, "
        f"{summary.gave_up} gave up, {summary.no_answer} without answer, "
        f"{len(summary.failed)} failed; {stats.llm_calls} LLM calls, {stats.tool_calls} tool "
        f"calls, {stats.seconds:.1f} s → {out}"
    )
    if summary.failed:
        _say(
            f"the failures are listed in {out / 'summary.json'}; run the same command again "
            "to retry the failed queries"
        )
        return 3
    return 0


def _run(
    todo: list[Query],
    args: argparse.Namespace,
    descriptions: dict[str, str],
    summary: Summary,
    stats: RunStats,
) -> None:
    from process_data.progress import progress

    endpoints = build_endpoints(args, PROG)
    chat = endpoints is not None and args.endpoint_api == "chat"
    llm = endpoints or build_models(args, generation_settings(args), PROG)
    by_key = {q.key: q for q in todo}
    started: dict[str, float] = {}
    tool_width = args.tool_concurrency or max(args.concurrency, 8)
    tools = ToolClient(
        args.toolserver,
        toolbench_key=args.toolbench_key,
        timeout=args.tool_timeout,
        max_retries=args.tool_retries,
        max_connections=tool_width,
    )
    with progress(len(todo), "query") as bar:

        def on_done(key: Hashable, result: object, error: BaseException | None) -> None:
            query = by_key[key]
            summary.query_seconds[query.key] = round(time.monotonic() - started.pop(key), 3)
            if error is None:
                try:
                    write_answer(query.answer, answer_json(result, seed=query.query_id))
                    summary.outcome(result)
                except Exception as exc:  # a full disk, a result that cannot be written
                    error = exc
            if error is not None:
                summary.failed[key] = f"{type(error).__name__}: {error}"
                _say(f"query {key} failed: {summary.failed[key]}")
                if not isinstance(error, OSError | ValueError | KeyError | EndpointError):
                    traceback.print_exception(error, file=sys.stderr)
            bar.update(1)
            bar.set_postfix(
                answered=summary.answered,
                gave_up=summary.gave_up,
                failed=len(summary.failed),
                llm=stats.llm_calls,
                tools=stats.tool_calls,
                refresh=False,
            )

        try:
            run_searches(
                _searches(todo, args, chat, descriptions, started),
                llm,
                tools,
                args.concurrency,
                on_done,
                stats,
                # a backstop for a planned call: each attempt's timeout and backoff (≤ 10 s)
                plan_timeout=(args.tool_timeout + 10.0) * (args.tool_retries + 1),
                tool_lane_width=tool_width,
            )
        finally:
            tools.close()
            llm.close()


if __name__ == "__main__":
    sys.exit(main())
