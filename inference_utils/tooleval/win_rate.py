"""``python -m inference_utils.tooleval.win_rate`` (``umi-tooleval-win-rate``): ToolEval's win rate
of candidate answers against reference answers, with two defects of the references fixed.

Each round of each test query is decided in this order:

1. **The shortcut**: when the pass-rate results say that exactly one of the two answers passed,
   it wins the round without a judge call (read as each record's reference reads it: ToolBench's
   label, a seeded coin on a tied vote; StableToolBench's majority status, Solved against
   Unsolved only; see :func:`passed`). (StableToolBench's shortcut never fires: it reads
   the solved verdicts back from its CSV as the text of a dict, which never equals a status.)
2. An answer that is missing loses the round.
3. **A preference judgment**, ToolEval's: the judge checks whether each answer is solved; a
   single Solved answer wins, else a single Unsure one, else the judge compares the two
   (``select_better_answer``). The order in which the two answers are shown alternates between
   rounds: the reference first in even rounds, the candidate first in odd ones, so a judge that
   prefers a position gives a tie rather than noise. ToolBench and StableToolBench mean to
   alternate too, but their test, ``i % 2 == 0 or i >= 0``, is always true, so they always pass
   the reference first, and ``annotate_preference`` then shuffles the two at random
   (``random.shuffle(indices)``): the judge sees a random order in every round, and a position
   bias adds noise to their numbers, not a lean toward either side. ``--order random`` does the
   same, with a coin seeded by the query and the round.

The candidate wins a query when it won more rounds than the reference, and ties when they
won as many. Outputs are ToolBench's (``<set>_<ref>_<out>.json`` with the votes per query and a
tab-separated ``.csv`` with preference labels 1 reference, 2 candidate, 3 tie) and a summary
with the references' win rate (the queries won over all queries, ties apart), the tie rate,
the win rate counting ties as half, and the win rate among the queries that are not ties.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inference_utils.endpoints import EndpointError
from inference_utils.tooleval.answer_status import (
    COMPAT_CHOICES,
    OURS,
    REFERENCES,
    SOLVED,
    TEST_SETS,
    UNSOLVED,
    UNSURE,
    check_is_solved,
    converted_file,
    load_test_ids,
    steps,
    tool_names,
    votes_pass,
    win_rates,
)
from inference_utils.tooleval.judge import Judge, RubricError
from inference_utils.tooleval.judge_flags import (
    add_judge_flags,
    build_judge,
    judge_all,
    judge_failed,
)
from process_data.jsonio import write_json_atomic
from process_data.protocol import file_name_part

REF, OUT, EQUAL = "ref", "output", "equal"
#: ``--order``: which answer the judge is shown first.
ALTERNATE, RANDOM = "alternate", "random"


def passed(record: dict | None, seed: int = 0, qid: str = "") -> bool | None:
    """What a pass-rate record (ours, ToolBench's or StableToolBench's JSON) says for the
    shortcut, as the record's reference reads it; None when there is none or it says nothing.

    * Votes (``passed``, ``failed``; ToolBench's mode): ToolBench's ``eval_preference.py``
      reads ``machine_label`` from the pass-rate CSV, whose ``write_results`` labels a query
      passed when its passed votes outnumber its failed ones, failed when fewer, and by a
      coin on a tie (``random.random() < 0.5``); here the coin is seeded by the query. A
      query without an answer failed.
    * Statuses by round (``is_solved``; StableToolBench's SoPR): the most frequent one.
      StableToolBench's intended shortcut (commented out in its ``eval_preference.py``)
      compares ``AnswerStatus.Solved`` with ``AnswerStatus.Unsolved`` only, so Solved passes,
      Unsolved fails, and Unsure says nothing.
    """
    if record is None:
        return None
    if "passed" in record and "failed" in record:
        return votes_pass(record, seed, qid)
    verdicts = record.get("is_solved")
    if isinstance(verdicts, dict) and verdicts:
        majority = Counter(verdicts.values()).most_common(1)[0][0]
        return {f"AnswerStatus.{SOLVED}": True, f"AnswerStatus.{UNSOLVED}": False}.get(majority)
    return None


def _shown(example: dict) -> dict:
    """An answer as the preference judge sees it (ToolEval's trimming): the final answer cut
    to 1,000 characters, no method."""
    answer = dict(example["answer"])
    answer.pop("method", None)
    answer["final_answer"] = (answer.get("final_answer") or "")[:1000]
    return answer


def reference_first(order: str, seed: int, qid: str, round_: int) -> bool:
    """Whether the judge is shown the reference first in a round: :data:`ALTERNATE`, in even
    rounds; :data:`RANDOM`, by a coin seeded by the query and the round, as the references'
    ``annotate_preference`` shuffles the two (``random.shuffle(indices)``)."""
    if order == RANDOM:
        return random.Random(f"{seed}-{qid}-{round_}-order").random() < 0.5
    return round_ % 2 == 0


def prefer(
    judge: Judge, qid: str, ref: dict, out: dict, round_: int, seed: int, order: str = ALTERNATE
) -> str:
    """One round's preference judgment: ``"ref"``, ``"output"`` or ``"equal"``, with the
    answers in the ``order`` of :func:`reference_first`."""
    first_is_ref = reference_first(order, seed, qid, round_)
    pair = [(REF, ref), (OUT, out)] if first_is_ref else [(OUT, out), (REF, ref)]
    statuses = [
        check_is_solved(judge, ref["query"], example["answer"], round_)[0] for _, example in pair
    ]
    for wanted in (SOLVED, UNSURE):
        hits = [k for k, status in enumerate(statuses) if status == wanted]
        if len(hits) == 1:
            return pair[hits[0]][0]
        if hits:
            break
    a, b = (_shown(example) for _, example in pair)
    if a["final_answer"] == b["final_answer"] and str(a["answer_details"]) == str(
        b["answer_details"]
    ):
        return pair[random.Random(f"{seed}-{qid}-{round_}").randrange(2)][0]
    verdict = judge.ask(
        "select_better_answer",
        {"query": ref["query"], "answer_0": json.dumps(a), "answer_1": json.dumps(b)},
        round_,
    )
    try:
        index = int(float(verdict["index"]))
    except (KeyError, TypeError, ValueError):
        return EQUAL  # the judge gave no usable index, twice
    return pair[index][0] if index in (0, 1) else EQUAL


@dataclass
class Round:
    qid: str
    round: int
    winner: str
    how: str  # shortcut, missing answer, judge


def decide(
    judge: Judge,
    qid: str,
    refs: dict,
    outs: dict,
    ref_pass: dict,
    out_pass: dict,
    round_: int,
    seed: int,
    order: str = "alternate",
) -> Round:
    ref_ok = passed(ref_pass.get(qid), seed, qid)
    out_ok = passed(out_pass.get(qid), seed, qid)
    if ref_ok is not None and out_ok is not None and ref_ok != out_ok:
        return Round(qid, round_, REF if ref_ok else OUT, "shortcut")
    if qid not in refs or qid not in outs:
        return Round(qid, round_, OUT if qid not in refs else REF, "missing answer")
    winner = prefer(judge, qid, refs[qid], outs[qid], round_, seed, order)
    return Round(qid, round_, winner, "judge")


@dataclass
class WinResult:
    test_set: str
    queries: int
    wins: int
    losses: int
    ties: int
    records: dict[str, dict]
    judged: int  # rounds that needed the judge

    @property
    def rates(self) -> dict[str, float]:
        """The references' win rate, the tie rate and the win rate with ties as half."""
        return win_rates(self.wins, self.ties, self.queries)

    @property
    def win_rate_decided(self) -> float:
        """Among the queries that are not ties."""
        return 100 * self.wins / max(self.wins + self.losses, 1)


def evaluate_set(
    judge: Judge, refs, outs, ref_pass, out_pass, test_ids, args, test_set: str
) -> WinResult:
    jobs = [(qid, r) for qid in test_ids for r in range(args.evaluate_times)]
    rounds = judge_all(
        decide,
        [(judge, q, refs, outs, ref_pass, out_pass, r, args.seed, args.order) for q, r in jobs],
        args.max_eval_threads,
        f"win rate {test_set}",
    )
    records: dict[str, dict] = {}
    for r in rounds:
        record = records.setdefault(r.qid, {args.ref_name: 0, args.out_name: 0, "rounds": {}})
        if r.winner != EQUAL:
            record[args.ref_name if r.winner == REF else args.out_name] += 1
        record[f"round_{r.round}"] = "complete"
        record["rounds"][r.round] = f"{r.winner} ({r.how})"
    labels = {qid: _label(rec, args) for qid, rec in records.items()}
    counts = Counter(labels.values())
    judged = sum(r.how == "judge" for r in rounds)
    return WinResult(test_set, len(records), counts[2], counts[1], counts[3], records, judged)


RESERVED = re.compile(r"rounds|round_\d+")  # the other keys of a query's record


def names_problem(ref_name: str, out_name: str) -> str | None:
    """Why the two answer sets' names cannot key a query's record (which holds each side's
    votes under its name, beside ``rounds`` and ``round_<n>``) and name the result files;
    None if they can."""
    if ref_name == out_name:
        return (
            f"the reference and the candidate are both named {ref_name!r}: their votes would "
            "be counted as one; name them apart with --reference_model / --output_model"
        )
    for name in (ref_name, out_name):
        if RESERVED.fullmatch(name):
            return f"the model name {name!r} is a key of the records; choose another"
        try:
            file_name_part(name, "model name")
        except ValueError as exc:
            return str(exc)
    return None


def _label(record: dict, args: argparse.Namespace) -> int:
    ref, out = record[args.ref_name], record[args.out_name]
    return 1 if ref > out else 2 if out > ref else 3


def write_set(result: WinResult, refs: dict, outs: dict, args: argparse.Namespace) -> None:
    stem = args.save_path / f"{result.test_set}_{args.ref_name}_{args.out_name}"
    write_json_atomic(stem.with_suffix(".json"), result.records, indent=4)
    with open(stem.with_suffix(".csv"), "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh, delimiter="\t")
        sides = ["model_intermediate_steps", "model_final_step"]
        head = [
            "query",
            "available_tools",
            *(f"ref_{c}" for c in sides),
            *(f"output_{c}" for c in sides),
        ]
        out.writerow([*head, "preference_label", "query_id", "ref_model", "output_model"])
        for qid, record in result.records.items():
            ref, cand = refs.get(qid), outs.get(qid)
            known = ref or cand or {}
            row = [known.get("query", ""), str(tool_names(known)) if known else "[]"]
            row += [*(steps(ref) if ref else ("", "")), *(steps(cand) if cand else ("", ""))]
            out.writerow([*row, str(_label(record, args)), qid, args.ref_name, args.out_name])
    summary = {
        "test_set": result.test_set,
        "reference": args.ref_name,
        "candidate": args.out_name,
        "evaluate_times": args.evaluate_times,
        "order": args.order,
        "compat": args.compat,
        "queries": result.queries,
        "wins": result.wins,
        "losses": result.losses,
        "ties": result.ties,
        **result.rates,
        "win_rate_without_ties": result.win_rate_decided,
        "judged_rounds": result.judged,
    }
    write_json_atomic(stem.with_name(stem.name + ".summary.json"), summary, indent=2)


def load_pass(folder: Path | None, model: str, test_set: str) -> dict:
    """Pass-rate records: ``<folder>/<set>_<model>.json``, or the same in ``<folder>/<model>/``."""
    if folder is None:
        return {}
    for path in (folder / f"{test_set}_{model}.json", folder / model / f"{test_set}_{model}.json"):
        if path.is_file():
            with open(path, encoding="utf-8") as fh:
                return {str(k): v for k, v in json.load(fh).items()}
    print(
        f"win rate {test_set}: no pass-rate results for {model} in {folder}: no shortcut",
        file=sys.stderr,
    )
    return {}


def _answers(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return {str(k): v for k, v in json.load(fh).items()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="umi-tooleval-win-rate", description=__doc__.splitlines()[0])
    p.add_argument(
        "--ref_converted_answer_path",
        type=Path,
        help="the reference's converted answers (folder of <set>.json)",
    )
    p.add_argument(
        "--output_converted_answer_path", type=Path, help="the candidate's converted answers"
    )
    p.add_argument(
        "--converted_answer_path",
        type=Path,
        help="ToolBench's layout: <path>/<model>/<set>.json for both",
    )
    p.add_argument(
        "--reference_model", help="the reference's name (and folder in ToolBench's layout)"
    )
    p.add_argument("--output_model", help="the candidate's name (and folder)")
    p.add_argument(
        "--ref_pass", type=Path, help="the reference's pass-rate results (for the shortcut)"
    )
    p.add_argument("--output_pass", type=Path, help="the candidate's pass-rate results")
    p.add_argument(
        "--pass_rate_result_path",
        type=Path,
        help="ToolBench's layout: both pass-rate results in one folder",
    )
    p.add_argument("--test_ids", required=True, type=Path)
    p.add_argument("--test_set", nargs="+", default=list(TEST_SETS))
    p.add_argument("--save_path", type=Path, default=Path("preference_results"))
    p.add_argument("--evaluate_times", type=int, default=2)
    p.add_argument("--max_eval_threads", type=int, default=16)
    p.add_argument(
        "--order",
        choices=[ALTERNATE, RANDOM],
        help="which answer the judge sees first: alternate (the reference in even rounds; the "
        "default) or random (the references' shuffle, seeded; the default with --compat)",
    )
    p.add_argument(
        "--compat",
        choices=COMPAT_CHOICES,
        default=OURS,
        help="toolbench, stable: the reference's way (the answers shown in a random order)",
    )
    p.add_argument(
        "--seed", type=int, default=42, help="for identical answers, tied votes and --order random"
    )
    add_judge_flags(p)
    return p  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.order is None:
        args.order = RANDOM if args.compat in REFERENCES else ALTERNATE
    if args.order == ALTERNATE and args.evaluate_times % 2:
        n = args.evaluate_times
        print(
            f"umi-tooleval-win-rate: --evaluate_times {n} is odd: the reference is shown first "
            f"in {(n + 1) // 2} of the {n} rounds (an even number balances the order)",
            file=sys.stderr,
        )
    ref_root = args.ref_converted_answer_path or args.converted_answer_path
    out_root = args.output_converted_answer_path or args.converted_answer_path
    if ref_root is None or out_root is None:
        print(
            "umi-tooleval-win-rate: give the reference's and the candidate's converted answers",
            file=sys.stderr,
        )
        return 2
    args.ref_name = args.reference_model or ref_root.stem
    args.out_name = args.output_model or out_root.stem
    if (problem := names_problem(args.ref_name, args.out_name)) is not None:
        print(f"umi-tooleval-win-rate: {problem}", file=sys.stderr)
        return 2
    ref_pass_dir = args.ref_pass or args.pass_rate_result_path
    out_pass_dir = args.output_pass or args.pass_rate_result_path
    try:
        judge = build_judge(args, args.save_path / "verdicts.sqlite")
    except (RubricError, ValueError, OSError) as exc:
        print(f"umi-tooleval-win-rate: {exc}", file=sys.stderr)
        return 2
    evaluated = 0
    for test_set in args.test_set:
        test_ids = load_test_ids(args.test_ids, test_set)
        ref_file = converted_file(ref_root, args.reference_model, test_set)
        out_file = converted_file(out_root, args.output_model, test_set)
        if test_ids is None or not ref_file.is_file() or not out_file.is_file():
            continue
        refs, outs = _answers(ref_file), _answers(out_file)
        ref_pass = load_pass(ref_pass_dir, args.ref_name, test_set)
        out_pass = load_pass(out_pass_dir, args.out_name, test_set)
        try:
            result = evaluate_set(judge, refs, outs, ref_pass, out_pass, test_ids, args, test_set)
        except EndpointError as exc:
            return judge_failed("umi-tooleval-win-rate", test_set, exc)
        write_set(result, refs, outs, args)
        evaluated += 1
        rates = result.rates
        print(
            f"{test_set}: win rate {rates['win_rate']:.1f}% (queries won / all, as ToolBench "
            f"and StableToolBench count it), ties {rates['tie_rate']:.1f}%; "
            f"{rates['win_rate_ties_as_half']:.1f}% with ties as half, "
            f"{result.win_rate_decided:.1f}% without the {result.ties} ties; "
            f"over {result.queries} queries"
        )
    print(f"judge calls: {judge.calls}", file=sys.stderr)
    if not evaluated:
        print(
            "umi-tooleval-win-rate: no test set has test ids and both sides' answers",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
