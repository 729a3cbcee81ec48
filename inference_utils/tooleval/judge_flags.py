"""The judge flags every ToolEval command shares, and the :class:`Judge` they describe.

``--evaluator openai:MODEL --api_base URL`` names any OpenAI-compatible endpoint (the key from
``--api_key`` or ``$OPENAI_API_KEY``); ``--api_pool FILE`` takes ToolBench's or StableToolBench's
key pool (a JSON list of ``{"api_key", "api_base" or "organization"}``), used in turn.
``--evaluator local:PATH`` runs a local model (a checkpoint or a ``GLPFT.models`` alias)
through its chat template. ``--evaluator_dir`` loads a ToolEval evaluator folder instead of
our prompts. Keys are passed to the endpoint clients and kept nowhere else.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from inference_utils.backends import Decoding
from inference_utils.dag import TaskGraph
from inference_utils.endpoints import Endpoint, EndpointBackend, EndpointClient, EndpointError
from inference_utils.tooleval.judge import JUDGE, Judge, Rubric, VerdictCache
from process_data.progress import progress


def add_judge_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("judge")
    g.add_argument(
        "--evaluator",
        default=None,
        help="openai:MODEL or local:PATH (default: openai, the model the prompts name)",
    )
    g.add_argument("--api_base", help="the endpoint's API base, e.g. http://127.0.0.1:8000/v1")
    g.add_argument(
        "--api_key",
        help="the judge endpoint's key (default: $OPENAI_API_KEY, for OpenAI's API only)",
    )
    g.add_argument(
        "--api_key_env",
        metavar="VAR",
        help="the environment variable holding the judge endpoint's key (keeps it out of ps)",
    )
    g.add_argument("--api_pool", type=Path, help="ToolBench's or StableToolBench's key pool file")
    g.add_argument(
        "--evaluator_dir", type=Path, help="a ToolEval evaluator folder (config.yaml, template.txt)"
    )
    g.add_argument(
        "--judge_prompts",
        type=Path,
        help="our prompt format (default: inference_utils/tooleval/judge_prompts.yaml)",
    )
    g.add_argument(
        "--verdict_cache", type=Path, help="SQLite file (default: <save_path>/verdicts.sqlite)"
    )
    g.add_argument(
        "--temperature",
        type=float,
        help="the judge's sampling temperature (default: the prompts', ToolEval's 0.2); at 0 "
        "every round gets the first round's verdict, asked once",
    )
    g.add_argument(
        "--max_tokens", type=int, help="the judge's output cap (default: the prompts', 1,000)"
    )
    g.add_argument("--request_timeout", type=float, default=120.0, help="seconds")
    g.add_argument("--max_retries", type=int, default=4, help="for 429, 5xx and timeouts")


def _pool(path: Path, api_base: str | None) -> list[tuple[str, str | None]]:
    """(api_base, api_key) of each entry of a key pool file."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the key pool: {exc}") from exc
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: a key pool is a non-empty JSON list of objects")
    pool = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("api_key"):
            raise ValueError(f"{path}: entry {k} has no api_key")
        base = entry.get("api_base") or api_base
        if not base:
            raise ValueError(f"{path}: entry {k} has no api_base, and no --api_base is given")
        pool.append((base, entry["api_key"]))
    return pool


def build_judge(args: argparse.Namespace, default_cache: Path) -> Judge:
    """The :class:`Judge` of the parsed flags, with its verdict cache."""
    if args.evaluator_dir:
        rubric = Rubric.load_tooleval(args.evaluator_dir)
    else:
        rubric = Rubric.load(args.judge_prompts) if args.judge_prompts else Rubric.load()
    kind, _, model = (args.evaluator or "openai:").partition(":")
    settings = rubric.settings
    decoding = rubric.decoding()
    if args.temperature is not None or args.max_tokens is not None:
        decoding = Decoding(
            max_new_tokens=args.max_tokens or decoding.max_new_tokens,
            temperature=decoding.temperature if args.temperature is None else args.temperature,
        )
    if decoding.temperature == 0:
        print(
            "judge: temperature 0 decodes greedily, so every round would get the same verdict: "
            "each question is asked once and its verdict counts for every round",
            file=sys.stderr,
        )
    cache = VerdictCache(args.verdict_cache or default_cache)
    if kind == "local" and model:
        from inference_utils.generation import GenerationSettings, HFModels

        local = HFModels({JUDGE: model}, GenerationSettings())
        return Judge(rubric, [local], f"local:{model}", cache, decoding=decoding)
    if kind != "openai":
        raise ValueError(f"--evaluator {args.evaluator!r}: expected openai:MODEL or local:PATH")
    model = model or settings.get("model")
    if args.api_pool:
        pool = _pool(args.api_pool, args.api_base)
    elif args.api_base:
        pool = [(args.api_base, args.api_key)]
    else:
        raise ValueError("the judge needs --api_base (or --api_pool)")
    clients = [
        EndpointClient(
            Endpoint(base, model or None, "chat", key, None if key else args.api_key_env),
            max_new_tokens=decoding.max_new_tokens or 1000,  # each request says its own
            temperature=decoding.temperature or 0.0,
            timeout=args.request_timeout,
            max_retries=args.max_retries,
        )
        for base, key in pool
    ]
    backends = [EndpointBackend({JUDGE: client}) for client in clients]
    return Judge(rubric, backends, model or clients[0].model, cache, decoding=decoding)


def judge_all(fn: Callable[..., Any], jobs: Sequence[tuple], threads: int, desc: str) -> list:
    """``fn(*job)`` for every job on the task graph, ``threads`` at once, results in job
    order, with a progress bar. A job that raises (a judge that fails for good, an
    ``EndpointError``) stops the rest, and its error is raised once the running ones have
    finished: the verdicts received so far are cached, so the same command resumes."""
    results: list = [None] * len(jobs)
    errors: list[BaseException] = []

    def failed(graph: TaskGraph, _key: int, error: BaseException) -> None:
        errors.append(error)
        graph.cancel()

    with progress(len(jobs), "judgment", desc) as bar:

        def done(_graph: TaskGraph, key: int, value: Any) -> None:
            results[key] = value
            bar.update()

        graph = TaskGraph(max(1, threads), on_done=done, on_error=failed, keep_results=False)
        for k, job in enumerate(jobs):
            graph.add(k, lambda job=job: fn(*job))
        graph.run()
    if errors:
        raise errors[0]
    return results


def judge_failed(prog: str, test_set: str, error: EndpointError) -> int:
    """Say that the judge failed for good and how to go on; returns the exit code, 3."""
    print(f"{prog}: {test_set}: the judge failed: {error}", file=sys.stderr)
    if error.timed_out:
        print(
            "the judge is slower than --request_timeout: raise it, or lower --max_eval_threads "
            "(a local server answers one request at a time, so the others wait in line)",
            file=sys.stderr,
        )
    print("the verdicts received are cached: the same command resumes from them", file=sys.stderr)
    return 3
