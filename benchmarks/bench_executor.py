"""Plan executor benchmark: the cost of scheduling tool calls, through ``PlanRunner.run`` as the
agent runs a plan (validation, references, observations included).

* *noop*: 1,000 independent calls of a tool that does nothing: wall time / 1,000, in µs;
* *chain*: 100 calls, each taking the previous one's result (``"$N"``): wall time / 100, in ms;
* *fan-out*: 8 independent calls of a tool that sleeps 0.2 s, with 8 workers: the whole plan,
  in seconds.

Each figure is the median of ``--repeats`` runs (after one unmeasured warm-up run). The
targets are LLMCompiler's scheduler on the same machine (about 26 µs per task, 10 ms per
dependency level, 0.218 s for the fan-out; it polls every 10 ms): at most 26 µs, 1 ms and
0.205 s.

``--memory`` measures instead what a long-lived graph holds: ``--memory_tasks`` (1,000,000)
no-op tasks fed to one streaming ``TaskGraph`` while it runs, as a driver feeds it, with the
process's resident memory read every tenth of the way, for ``keep_results=False`` (what a
driver uses: flat) and the default (every result kept: grows).

    python benchmarks/bench_executor.py [--repeats 7] [--json]
    python benchmarks/bench_executor.py --memory [--memory_tasks 1000000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import psutil  # noqa: E402

from inference_utils.dag import PlanRunner, TaskGraph  # noqa: E402

NOOP_TASKS, CHAIN_LEVELS, FANOUT, SLEEP = 1000, 100, 8, 0.2
TARGETS = {"noop_per_task_us": 26.0, "chain_per_level_ms": 1.0, "fanout_8x200ms_s": 0.205}


def noop(arguments: dict) -> None:
    return None


def echo(arguments: dict) -> object:
    return arguments.get("x", 0)


def nap(arguments: dict) -> str:
    time.sleep(SLEEP)
    return "rested"


def timed(runner: PlanRunner, plan: list[dict], expect: int) -> float:
    start = time.perf_counter()
    observations = runner.run(plan)
    seconds = time.perf_counter() - start
    bad = [k for k, o in observations.items() if o.error]
    if len(observations) != expect or bad:
        raise RuntimeError(f"the plan did not run cleanly: {len(observations)} results, {bad}")
    return seconds


def noop_per_task_us() -> float:
    runner = PlanRunner({"noop": noop})
    plan = [{"id": i, "tool": "noop", "arguments": {}} for i in range(1, NOOP_TASKS + 1)]
    return timed(runner, plan, NOOP_TASKS) / NOOP_TASKS * 1e6


def chain_per_level_ms() -> float:
    runner = PlanRunner({"echo": echo})
    plan = [{"id": 1, "tool": "echo", "arguments": {"x": 1}}]
    plan += [{"id": i, "tool": "echo", "arguments": {"x": f"${i - 1}"}} for i in range(2, 101)]
    return timed(runner, plan, CHAIN_LEVELS) / CHAIN_LEVELS * 1e3


def fanout_s() -> float:
    runner = PlanRunner({"nap": nap}, max_workers=FANOUT)
    plan = [{"id": i, "tool": "nap", "arguments": {"n": i}} for i in range(1, FANOUT + 1)]
    return timed(runner, plan, FANOUT)


def memory_curve(tasks: int, keep_results: bool, points: int = 10) -> list[float]:
    """Resident MiB after each tenth of ``tasks`` no-op tasks, fed to one running streaming
    graph at most 1,000 ahead of the finished ones (as a driver adds work as it goes)."""
    graph = TaskGraph(max_workers=2, streaming=True, keep_results=keep_results)
    done = threading.Semaphore(0)
    graph.on_done = lambda _graph, _key, _value: done.release()
    runner = threading.Thread(target=graph.run)
    runner.start()
    process, curve = psutil.Process(), []
    for k in range(tasks):
        if k >= 1000:
            done.acquire()
        graph.add(k, int)
        if (k + 1) % (tasks // points) == 0:
            curve.append(round(process.memory_info().rss / 2**20, 1))
    graph.close()
    runner.join()
    return curve


def median_of(measure: Callable[[], float], repeats: int) -> float:
    measure()  # warm-up: imports, code paths, allocator
    return statistics.median(measure() for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="runs per figure; the median is kept")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--memory", action="store_true", help="the long-lived graph's memory")
    p.add_argument("--memory_tasks", type=int, default=1_000_000)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.memory:
        for keep in (False, True):
            start = time.perf_counter()
            curve = memory_curve(args.memory_tasks, keep)
            seconds = time.perf_counter() - start
            print(
                f"keep_results={keep}: RSS MiB at each tenth of {args.memory_tasks:,} tasks: "
                f"{curve} ({seconds:.1f} s)"
            )
        return 0
    figures = {
        "noop_per_task_us": round(median_of(noop_per_task_us, args.repeats), 2),
        "chain_per_level_ms": round(median_of(chain_per_level_ms, args.repeats), 4),
        "fanout_8x200ms_s": round(median_of(fanout_s, args.repeats), 4),
    }
    if args.json:
        print(json.dumps({**figures, "statistic": f"median of {args.repeats}", **_targets()}))
        return 0
    print(f"median of {args.repeats} runs (after one warm-up run)")
    for name, value in figures.items():
        verdict = "met" if value <= TARGETS[name] else "MISSED"
        print(f"{name:20} {value:>10}   target ≤ {TARGETS[name]:g}: {verdict}")
    return 0


def _targets() -> dict[str, float]:
    return {f"target_{name}": value for name, value in TARGETS.items()}


if __name__ == "__main__":
    sys.exit(main())
