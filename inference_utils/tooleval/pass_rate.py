"""``python -m inference_utils.tooleval.pass_rate`` (``umi-tooleval-pass-rate``): ToolEval's pass
rate of converted answers, ToolBench's way (``--mode toolbench``) or StableToolBench's SoPR
(``--mode stable``), with any OpenAI-compatible judge.

Every judgment reads the answer's steps as ToolEval does (the tool steps of its first path;
the last is the *final step*). An answer whose final step is not a ``Finish`` call, or whose
final answer is empty or gives up, is Unsolved without a judge call. Otherwise the judge
checks the final answer (``check_answer_status``) and, when that is Unsure, the execution
trace (``parse_answer_status``).

* ``toolbench``: unless Solved, the judge also checks whether the task is solvable, and
  ToolBench's table combines the two (Solved passes; Unsolved fails on a solvable task, passes
  on an unsolvable one; the rest is Unsure). An Unsure judgment is settled by a coin seeded by
  the query and the round, so a run repeats (ToolBench's coin runs on a shared global
  generator and does not). A query passes when its failed judgments do not outnumber its
  passed ones, over ``--evaluate_times`` rounds.
* ``stable``: Solved 1, Unsure 0.5, Unsolved 0; each round averaged over the queries; the
  mean and the (population) standard deviation of the rounds.

A test query with no answer counts as failed (Unsolved) and is reported. ToolBench and
StableToolBench both leave it out of the denominator, which raises the score (ToolBench's
``eval_pass_rate.py`` counts only the queries of the answer file, ``pass_rate /=
len(label_cnt)``; StableToolBench's issue #37); ``--compat toolbench`` and ``--compat stable``
do the same, for comparison with their numbers. Outputs are ToolBench's:
``<save_path>/<test_set>_<model>.json`` and a tab-separated ``.csv`` of the same name, in the
chosen mode's shape, plus ``<test_set>_<model>.summary.json`` with the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inference_utils.endpoints import EndpointError
from inference_utils.tooleval.answer_status import (
    COMPAT_CHOICES,
    OURS,
    REFERENCES,
    SCORE,
    SOLVABLE,
    SOLVED,
    TEST_SETS,
    UNSOLVED,
    check_is_solved,
    check_task_solvable,
    converted_file,
    finished,
    is_passed,
    load_test_ids,
    not_hallucinated,
    steps,
    tool_names,
    votes_pass,
)
from inference_utils.tooleval.judge import Judge, RubricError
from inference_utils.tooleval.judge_flags import (
    add_judge_flags,
    build_judge,
    judge_all,
    judge_failed,
)
from process_data.jsonio import write_json_atomic

PASSED, FAILED = "passed", "failed"


def coin(seed: int, qid: str, round_: int) -> str:
    return PASSED if random.Random(f"{seed}-{qid}-{round_}").random() < 0.5 else FAILED


@dataclass
class Judgment:
    """One round's judgment of one answer."""

    round: int
    answer_status: str
    task_status: str
    label: str
    reason: str


def judge_answer(
    judge: Judge, qid: str, example: dict, round_: int, mode: str, seed: int
) -> Judgment:
    _, final_step = steps(example)
    if not finished(final_step):
        return Judgment(round_, UNSOLVED, SOLVABLE, FAILED, "No answer")
    status, reason = check_is_solved(judge, example["query"], example["answer"], round_)
    if mode == "stable":
        return Judgment(round_, status, "", PASSED if status == SOLVED else FAILED, reason)
    if status == SOLVED:
        task, task_reason = SOLVABLE, "Task has been solved before."
    else:
        task, task_reason = check_task_solvable(judge, example, round_)
    verdict = is_passed(status, task)
    label = {"Passed": PASSED, "Failed": FAILED}.get(verdict) or coin(seed, qid, round_)
    return Judgment(
        round_,
        status,
        task,
        label,
        reason if status == SOLVED else f"{reason} {task_reason}".strip(),
    )


# -- a test set --------------------------------------------------------------------------------


@dataclass
class SetResult:
    test_set: str
    queries: int
    answered: int
    pass_rate: float  # percent
    std: float  # percent, over rounds
    rounds: list[float]
    records: dict[str, dict]


def evaluate_set(
    judge: Judge,
    answers: dict[str, dict],
    test_ids: Sequence[str],
    args: argparse.Namespace,
    test_set: str,
) -> SetResult:
    answered = [qid for qid in test_ids if qid in answers]
    missing = [qid for qid in test_ids if qid not in answers]
    jobs = [(qid, r) for qid in answered for r in range(args.evaluate_times)]
    done = judge_all(
        judge_answer,
        [(judge, qid, answers[qid], r, args.mode, args.seed) for qid, r in jobs],
        args.max_eval_threads,
        f"pass rate {test_set}",
    )
    by_qid: dict[str, list[Judgment]] = {}
    for (qid, _), judgment in zip(jobs, done, strict=True):
        by_qid.setdefault(qid, []).append(judgment)
    counted = answered if args.compat in REFERENCES else list(test_ids)
    records = {qid: _record(qid, answers.get(qid), by_qid.get(qid, []), args) for qid in counted}
    if args.mode == "stable":
        rounds = [
            sum(SCORE[_round_status(by_qid.get(qid, []), r)] for qid in counted)
            / max(len(counted), 1)
            for r in range(args.evaluate_times)
        ]
        rate = statistics.fmean(rounds) * 100 if rounds else math.nan
        std = statistics.pstdev(rounds) * 100 if rounds else math.nan
    else:
        passed = [
            records[qid]["failed"] <= records[qid]["passed"] and qid in by_qid for qid in counted
        ]
        rate = 100 * sum(passed) / max(len(counted), 1)
        rounds = [
            sum(_round_label(by_qid.get(qid, []), r) == PASSED for qid in counted)
            / max(len(counted), 1)
            for r in range(args.evaluate_times)
        ]
        std = statistics.pstdev(rounds) * 100 if rounds else math.nan
    if missing:
        note = (
            f"left out of the denominator (--compat {args.compat})"
            if args.compat in REFERENCES
            else "counted as failed (--compat toolbench or stable leaves them out)"
        )
        print(
            f"pass rate {test_set}: {len(missing)} of {len(test_ids)} test queries have no "
            f"answer, {note}",
            file=sys.stderr,
        )
    return SetResult(test_set, len(test_ids), len(answered), rate, std, rounds, records)


def _round_status(judgments: list[Judgment], round_: int) -> str:
    return next((j.answer_status for j in judgments if j.round == round_), UNSOLVED)


def _round_label(judgments: list[Judgment], round_: int) -> str:
    return next((j.label for j in judgments if j.round == round_), FAILED)


def _record(
    qid: str, example: dict | None, judgments: list[Judgment], args: argparse.Namespace
) -> dict:
    answer_steps, final_step = steps(example) if example else ("", "")
    base = {
        "query": example["query"] if example else "",
        "tool_names": tool_names(example) if example else [],
    }
    base |= {"answer_steps": answer_steps, "final_step": final_step}
    if args.mode == "stable":
        statuses = {j.round: f"AnswerStatus.{j.answer_status}" for j in judgments}
        statuses = statuses or {r: f"AnswerStatus.{UNSOLVED}" for r in range(args.evaluate_times)}
        return base | {"is_solved": statuses} | ({} if example else {"missing": True})
    last = judgments[-1] if judgments else Judgment(0, UNSOLVED, SOLVABLE, FAILED, "No answer file")
    return {
        "passed": sum(j.label == PASSED for j in judgments),
        "failed": sum(j.label == FAILED for j in judgments) if judgments else args.evaluate_times,
        "query": base["query"],
        "task_solvable": f"TaskStatus.{last.task_status}",
        "tool_names": base["tool_names"],
        "answer_steps": answer_steps,
        "final_step": final_step,
        "is_solved": f"AnswerStatus.{last.answer_status}",
        "reason": last.reason,
        "not_hallucinate": not_hallucinated(example) if example else True,
        "rounds": {j.round: j.label for j in judgments},
    } | ({} if example else {"missing": True})


def write_set(
    result: SetResult, save: Path, model: str, args: argparse.Namespace, answers: dict[str, dict]
) -> None:
    stem = save / f"{result.test_set}_{model}"
    write_json_atomic(stem.with_suffix(".json"), result.records, indent=4)
    with open(stem.with_suffix(".csv"), "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh, delimiter="\t")
        steps_of = ["model_intermediate_steps", "model_final_step", "model", "query_id"]
        if args.mode == "stable":
            out.writerow(["query", "available_tools", *steps_of, "is_solved"])
            for qid, r in result.records.items():
                tools, solved = str(r["tool_names"]), str(r["is_solved"])
                out.writerow(
                    [r["query"], tools, r["answer_steps"], r["final_step"], model, qid, solved]
                )
        else:
            extra = ["is_solved", "pass_rate_label", "reason", "not_hallucinate"]
            out.writerow(["query", "solvable", "available_tools", *steps_of, *extra])
            for qid, r in result.records.items():
                label = PASSED if votes_pass(r, args.seed, qid) else FAILED
                head = [r["query"], r["task_solvable"], str(r["tool_names"])]
                body = [r["answer_steps"], r["final_step"], model, qid, r["is_solved"], label]
                out.writerow([*head, *body, r["reason"], r["not_hallucinate"]])
    summary = {
        "test_set": result.test_set,
        "model": model,
        "mode": args.mode,
        "compat": args.compat,
        "evaluate_times": args.evaluate_times,
        "queries": result.queries,
        "answered": result.answered,
        "denominator": result.answered if args.compat in REFERENCES else result.queries,
        "pass_rate": result.pass_rate,
        "std": result.std,
        "rounds": result.rounds,
    }
    write_json_atomic(stem.with_name(stem.name + ".summary.json"), summary, indent=2)


# -- the command -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umi-tooleval-pass-rate", description=__doc__.splitlines()[0])
    p.add_argument(
        "--converted_answer_path",
        required=True,
        type=Path,
        help="folder of <test_set>.json (or <model>/<test_set>.json with --model)",
    )
    p.add_argument(
        "--test_ids", required=True, type=Path, help="folder of <test_set>.json test query ids"
    )
    p.add_argument("--save_path", type=Path, default=Path("pass_rate_results"))
    p.add_argument(
        "--model",
        "--reference_model",
        dest="model",
        help="the answers' name in the outputs (and their folder)",
    )
    p.add_argument("--test_set", nargs="+", default=list(TEST_SETS))
    p.add_argument("--mode", choices=["toolbench", "stable"], default="toolbench")
    p.add_argument(
        "--compat",
        choices=COMPAT_CHOICES,
        default=OURS,
        help="toolbench, stable: leave unanswered queries out of the denominator, as "
        "ToolBench and StableToolBench do",
    )
    p.add_argument("--evaluate_times", type=int, default=4)
    p.add_argument("--max_eval_threads", type=int, default=16)
    p.add_argument(
        "--seed", type=int, default=42, help="for the coin that settles Unsure judgments"
    )
    add_judge_flags(p)
    return p  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = args.model or args.converted_answer_path.stem
    try:
        judge = build_judge(args, args.save_path / "verdicts.sqlite")
    except (RubricError, ValueError, OSError) as exc:
        print(f"umi-tooleval-pass-rate: {exc}", file=sys.stderr)
        return 2
    evaluated = 0
    for test_set in args.test_set:
        test_ids = load_test_ids(args.test_ids, test_set)
        path = converted_file(args.converted_answer_path, args.model, test_set)
        if test_ids is None or not path.is_file():
            continue
        with open(path, encoding="utf-8") as fh:
            answers = {str(k): v for k, v in json.load(fh).items()}
        try:
            result = evaluate_set(judge, answers, test_ids, args, test_set)
        except EndpointError as exc:
            return judge_failed("umi-tooleval-pass-rate", test_set, exc)
        write_set(result, args.save_path, model, args, answers)
        evaluated += 1
        print(
            f"{test_set}: pass rate {result.pass_rate:.1f}% ± {result.std:.1f} "
            f"({result.answered}/{result.queries} answered; over "
            f"{'the answered' if args.compat in REFERENCES else 'all test'} queries)"
        )
    print(f"judge calls: {judge.calls}", file=sys.stderr)
    if not evaluated:
        print(
            "umi-tooleval-pass-rate: no test set has both test ids and converted answers",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
