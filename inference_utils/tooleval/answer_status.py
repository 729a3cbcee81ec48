"""What ToolEval asks of one converted answer, shared by the pass rate and the win rate: its
steps as ToolEval reads them, its tools, the status questions put to the judge (is it solved,
is the task solvable) and ToolBench's table that combines them; and where test ids and answer
sets lie (ToolBench's test sets and layouts)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

from inference_utils.tooleval.judge import Judge
from process_data.protocol import FINISH, GIVE_UP_AND_RESTART

SOLVED, UNSOLVED, UNSURE = "Solved", "Unsolved", "Unsure"
SOLVABLE, UNSOLVABLE = "Solvable", "Unsolvable"
TEST_SETS = (
    "G1_instruction",
    "G1_category",
    "G1_tool",
    "G2_instruction",
    "G2_category",
    "G3_instruction",
)
SCORE = {SOLVED: 1.0, UNSURE: 0.5, UNSOLVED: 0.0}
_CALLED_NAME = re.compile(r"'name': '(.*?)'")


def first_path(answer: dict) -> Iterator[dict]:
    """The nodes of a converted answer's first path (each node's first ``next``), root
    first, as ToolEval walks them."""
    node = answer["answer_details"][0]
    while True:
        yield node
        if not node.get("next"):
            return
        node = node["next"][0]


def steps(example: dict) -> tuple[str, str]:
    """ToolEval's reading of an answer: its tool steps along the first path, as
    ``"Step k: <message>"`` lines, and the last of them as ``"Final step: <message>"``."""
    lines, final = [], ""
    for node in first_path(example["answer"]):
        if node.get("message") and node.get("role") == "tool":
            text = str(node["message"])
            lines.append(f"Step {len(lines) + 1}: {text}")
            final = f"Final step: {text}"
    return "\n".join(lines), final


def finished(final_step: str) -> bool:
    """Whether the final step is a ``Finish`` call (ToolEval's test on the step's text)."""
    return f"'name': '{FINISH}'" in final_step


def tool_names(example: dict) -> list[str]:
    return [t.get("function", t).get("name") for t in example.get("available_tools", [])]


def not_hallucinated(example: dict) -> bool:
    """Whether every tool step names an available function."""
    known = set(tool_names(example))
    return all(name in known for name in _CALLED_NAME.findall(steps(example)[0]))


def check_is_solved(judge: Judge, query: str, answer: dict, round_: int) -> tuple[str, str]:
    final = answer.get("final_answer") or ""
    if not final or GIVE_UP_AND_RESTART in final:
        return UNSOLVED, "Empty final answer!"
    verdict = judge.ask("check_answer_status", {"query": query, "answer": final}, round_)
    if verdict.get("answer_status") == UNSURE:
        detail = json.dumps(answer)
        verdict = judge.ask("parse_answer_status", {"query": query, "answer": detail}, round_)
    return verdict.get("answer_status", UNSURE), str(verdict.get("reason", ""))


def check_task_solvable(judge: Judge, example: dict, round_: int) -> tuple[str, str]:
    task = json.dumps({"query": example["query"], "available_tools": example["available_tools"]})
    verdict = judge.ask("check_task_solvable", {"task": task}, round_)
    return verdict.get("task_status", UNSURE), str(verdict.get("reason", ""))


def is_passed(answer_status: str, task_status: str) -> str:
    """ToolBench's table: ``"Passed"``, ``"Failed"`` or ``"Unsure"``."""
    if answer_status == SOLVED or task_status == UNSOLVABLE:
        return "Passed"
    if answer_status == UNSOLVED and task_status == SOLVABLE:
        return "Failed"
    return "Unsure"


#: The ``--compat`` values that reproduce a reference's figures, and the default: ours.
REFERENCES = ("toolbench", "stable")
OURS = "none"
COMPAT_CHOICES = (OURS, *REFERENCES)


def tied_vote_passes(seed: int, qid: str) -> bool:
    """ToolBench's label of a query whose passed and failed votes are equal: a coin
    (``write_results`` in its ``eval_pass_rate.py``), here seeded by the query so that the
    pass-rate CSV and the win-rate shortcut agree and a re-run repeats."""
    return random.Random(f"{seed}-{qid}-label").random() < 0.5


def votes_pass(record: dict, seed: int, qid: str) -> bool:
    """ToolBench's ``pass_rate_label`` of a record of votes (``passed``, ``failed``), as its
    ``write_results`` writes it and its ``eval_preference.py`` reads it back: passed when the
    passed votes outnumber the failed ones, failed when fewer, :func:`tied_vote_passes` on a
    tie. A query without an answer failed. (The printed pass rate counts a tie as passed:
    ``failed <= passed``.)"""
    if record.get("missing"):
        return False
    if record["passed"] != record["failed"]:
        return record["passed"] > record["failed"]
    return tied_vote_passes(seed, qid)


def win_rates(wins: int, ties: int, queries: int) -> dict[str, float]:
    """A win-rate summary's rates (%) from its counts: ``win_rate``, the references' figure
    (the queries won over all queries, ties apart: ``win_rate /= len(prefer_dict)`` in their
    ``eval_preference.py``), ``tie_rate``, and ``win_rate_ties_as_half`` (50 is as good as the
    reference)."""
    n = max(queries, 1)
    return {
        "win_rate": 100 * wins / n,
        "tie_rate": 100 * ties / n,
        "win_rate_ties_as_half": 100 * (wins + 0.5 * ties) / n,
    }


def load_test_ids(folder: Path, test_set: str) -> list[str] | None:
    path = folder / f"{test_set}.json"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as fh:
        ids = json.load(fh)
    return [str(q) for q in (ids if isinstance(ids, list) else ids.keys())]


def converted_file(root: Path, model: str | None, test_set: str) -> Path:
    """``root/<model>/<set>.json`` (ToolBench's layout) where it exists, else
    ``root/<set>.json`` (or ``root`` itself when it is a file)."""
    if root.is_file():
        return root
    nested = root / model / f"{test_set}.json" if model else None
    return nested if nested is not None and nested.is_file() else root / f"{test_set}.json"
