"""ToolEval's win rate with a local judge: our answer order against the references'.

The reference answers are ToolBench's default evalset (``tooleval_default_evalset``,
gpt-3.5-turbo CoT); there is no second answer set for its queries, so the candidate is made
from it: *one_call_fewer*, each answer without its last tool call before ``Finish`` (the final
answer kept). The judge is the default GGUF (SmolLM2-135M-Instruct) on a llama.cpp server of
this benchmark, with our prompts, at ``--temperature`` (0 by default, as the earlier figures in
RESULTS.md were taken) and ``--max_tokens``. The win rate runs twice on the same queries, with
one verdict cache: ``--order alternate`` (ours: the reference first in even rounds) and
``--order random`` (the references': a coin per round). For each, the rounds the judge decided
are split by the side shown first, which shows the judge's position bias and what each order
makes of it. A 135M judge gives no meaningful preference; the point is the bias.

    python benchmarks/bench_tooleval.py [--test_set G1_instruction] [--num_queries 100]
        [--evaluate_times 2] [--temperature 0] [--max_tokens 64] [--write_results]
    python benchmarks/bench_tooleval.py --num_queries 3   # smoke test, a few minutes
    python benchmarks/bench_tooleval.py --make_candidates DIR   # the whole-evalset answers

``--make_candidates DIR`` writes the candidates of the whole-evalset figures in RESULTS.md
and exits: ``DIR/one_call_fewer`` and ``DIR/cut_before_finish`` (each answer cut before its
``Finish`` call, final answer empty), one converted file per group, and ``DIR/ids``, the
groups' query ids for ``--test_ids``.

Run it alone: a judgment takes seconds on 2 cores, and other work slows it several times.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

from bench_prepro import free_port, machine, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EVALSET = ROOT.parent / "shared" / "data" / "toolbench" / "tooleval_default_evalset"
SECTION = "## ToolEval's answer order with a local judge (inference_utils.tooleval)"
ORDERS = ("alternate", "random")


def chain(answer: dict) -> list[dict]:
    """The nodes of a converted answer's first path, root first (each without ``next``)."""
    from inference_utils.tooleval.answer_status import first_path

    return [{k: v for k, v in n.items() if k != "next"} for n in first_path(answer)]


def nested(nodes: list[dict]) -> list[dict]:
    """The nodes as a converted answer's ``answer_details``: each the only child of the one
    before."""
    child: list[dict] = []
    for node in reversed(nodes):
        child = [{**node, "next": child}]
    return child


def one_call_fewer(example: dict) -> dict | None:
    """The answer without its last tool call before ``Finish``; None when it has none."""
    from inference_utils.tooleval.answer_status import finished

    nodes = chain(example["answer"])
    finish = [i for i, n in enumerate(nodes) if finished(str(n.get("message")))]
    end = finish[-1] if finish else len(nodes)
    calls = [i for i, n in enumerate(nodes[:end]) if n.get("role") == "tool"]
    if not calls:
        return None
    kept = nodes[: calls[-1]] + nodes[calls[-1] + 1 :]
    answer = {**example["answer"], "answer_details": nested(kept)}
    answer["total_steps"] = max(0, int(answer.get("total_steps", len(nodes))) - 1)
    return {**example, "answer": answer}


def cut_before_finish(example: dict) -> dict:
    """The answer cut before its first ``Finish`` call, with an empty final answer: what an
    agent that runs out of steps leaves. An answer without ``Finish`` is returned as it is."""
    from inference_utils.tooleval.answer_status import finished

    nodes = chain(example["answer"])
    finish = [i for i, n in enumerate(nodes) if finished(str(n.get("message")))]
    if not finish:
        return example
    answer = {**example["answer"], "answer_details": nested(nodes[: finish[0]])}
    answer["final_answer"] = ""
    answer["total_steps"] = max(0, int(answer.get("total_steps", len(nodes))) - 1)
    return {**example, "answer": answer}


MAKERS = {"one_call_fewer": one_call_fewer, "cut_before_finish": cut_before_finish}


def make_candidates(folder: Path) -> None:
    """Both candidates of every group of the evalset, and the groups' ids, under ``folder``;
    an answer a candidate cannot change is kept as it is (and counted)."""
    for name in (*MAKERS, "ids"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    for path in sorted(EVALSET.glob("*.json")):
        reference = json.loads(path.read_text(encoding="utf-8"))
        (folder / "ids" / path.name).write_text(json.dumps(dict.fromkeys(reference, 0)))
        for name, make in MAKERS.items():
            made = {qid: make(example) or example for qid, example in reference.items()}
            changed = sum(made[qid] != reference[qid] for qid in reference)
            (folder / name / path.name).write_text(json.dumps(made), encoding="utf-8")
            print(f"{name}/{path.name}: {changed} of {len(reference)} answers changed")


def candidates(test_set: str, num_queries: int, folder: Path) -> tuple[Path, list[str]]:
    """The reference and the candidate answers of the first ``num_queries`` queries that have
    a call to drop, in ToolEval's converted layout under ``folder``; their ids."""
    reference = json.loads((EVALSET / f"{test_set}.json").read_text(encoding="utf-8"))
    picked, made = {}, {}
    for qid, example in reference.items():
        candidate = one_call_fewer(example)
        if candidate is not None:
            picked[qid], made[qid] = example, candidate
        if len(picked) == num_queries:
            break
    for name, answers in (("reference", picked), ("one_call_fewer", made)):
        (folder / name).mkdir(parents=True)
        (folder / name / f"{test_set}.json").write_text(json.dumps(answers), encoding="utf-8")
    ids = folder / "ids"
    ids.mkdir()
    (ids / f"{test_set}.json").write_text(json.dumps(dict.fromkeys(picked, 0)))
    return folder, list(picked)


def by_position(records: dict, order: str, seed: int) -> dict:
    """The rounds the judge decided, by whether the side shown first or second won."""
    from inference_utils.tooleval.win_rate import reference_first

    counts = {"judged": 0, "first shown won": 0, "second shown won": 0, "no usable answer": 0}
    for qid, record in records.items():
        for round_, how in record["rounds"].items():
            if not how.endswith("(judge)"):
                continue
            counts["judged"] += 1
            winner = how.split(" ")[0]
            if winner == "equal":
                counts["no usable answer"] += 1
                continue
            ref_first = reference_first(order, seed, qid, int(round_))
            first = "ref" if ref_first else "output"
            counts["first shown won" if winner == first else "second shown won"] += 1
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test_set", default="G1_instruction")
    p.add_argument("--num_queries", type=int, default=100)
    p.add_argument("--evaluate_times", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max_tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--write_results", action="store_true")
    p.add_argument("--make_candidates", type=Path, help="write the whole-evalset candidates")
    args = p.parse_args()
    if args.make_candidates:
        make_candidates(args.make_candidates)
        return

    from GLPFT.models import gguf_path
    from inference_utils.server_process import ServerProcess
    from inference_utils.tooleval.win_rate import main as win_rate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, qids = candidates(args.test_set, args.num_queries, Path(tmp) / "answers")
        port = free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path())]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "8192"]
        cmd += ["--n_threads", "2"]
        base = f"http://127.0.0.1:{port}/v1"
        with ServerProcess("llama.cpp judge", cmd, f"{base}/models", Path(tmp) / "judge.log"):
            for order in ORDERS:
                save = Path(tmp) / order
                start = time.monotonic()
                code = win_rate(
                    [
                        "--ref_converted_answer_path", str(folder / "reference"),
                        "--output_converted_answer_path", str(folder / "one_call_fewer"),
                        "--reference_model", "reference", "--output_model", "one_call_fewer",
                        "--test_ids", str(folder / "ids"), "--test_set", args.test_set,
                        "--save_path", str(save), "--verdict_cache", str(Path(tmp) / "v.sqlite"),
                        "--evaluate_times", str(args.evaluate_times), "--order", order,
                        "--seed", str(args.seed), "--evaluator", f"openai:{gguf_path().name}",
                        "--api_base", base, "--max_eval_threads", "1",
                        "--request_timeout", "600", "--temperature", str(args.temperature),
                        "--max_tokens", str(args.max_tokens),
                    ]
                )  # fmt: skip
                if code != 0:
                    raise SystemExit(f"bench_tooleval: the win rate ({order}) exited with {code}")
                seconds = time.monotonic() - start
                stem = save / f"{args.test_set}_reference_one_call_fewer"
                summary = json.loads(stem.with_name(stem.name + ".summary.json").read_text())
                records = json.loads(stem.with_suffix(".json").read_text())
                rows.append((order, summary, by_position(records, order, args.seed), seconds))

    lines = [
        SECTION,
        "",
        f"Measured {datetime.date.today()} on {machine()}, nothing else running. "
        f"{len(qids)} queries of {args.test_set}, {args.evaluate_times} rounds, the judge at "
        f"temperature {args.temperature:g} with up to {args.max_tokens} tokens; one verdict "
        "cache for both orders, so the second run asks only what the first did not.",
        "",
        "```bash",
        f"python benchmarks/bench_tooleval.py --test_set {args.test_set} "
        f"--num_queries {args.num_queries} --evaluate_times {args.evaluate_times} "
        f"--temperature {args.temperature:g} --max_tokens {args.max_tokens} --write_results",
        "```",
        "",
        "| order | rounds judged | first shown won | second shown won | no usable answer | "
        "win rate (won / all) | ties | win rate, ties as half | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for order, summary, counts, seconds in rows:
        lines.append(
            f"| {order} | {counts['judged']} | {counts['first shown won']} | "
            f"{counts['second shown won']} | {counts['no usable answer']} | "
            f"{summary['win_rate']:.1f}% | {summary['ties']} | "
            f"{summary['win_rate_ties_as_half']:.1f}% | {seconds:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write_results:
        write_results(text, SECTION)


if __name__ == "__main__":
    main()
