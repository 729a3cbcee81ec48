"""α-UMi's step-level metrics, with its exact definitions (``evaluate-multi_agent.py``).

* ``plan_em``: the predicted plan (call / finish / give up) equals the gold one, over all steps;
* ``action_em``: the predicted function name equals the gold one, over gold call steps;
* ``hallu_rate``: the prediction names a function that is not among the tools, over all steps;
* ``f1``, ``easy_f1``, ``hard_f1``: argument F1 over gold call steps. A wrong function scores 0
  in all three lists. With the right function: a gold ``{}`` goes to ``easy_f1`` (1 only for a
  predicted ``{}``), other gold arguments to ``hard_f1``, where a key with the right value
  counts 1 and a key with another value 0.5. A gold argument string that is not JSON leaves
  the step out of all three lists; a prediction that is not JSON scores 0;
* ``rouge``: ROUGE-L F of the final answer, over gold finish steps, as the ``rouge`` 1.0.1
  package computes it (:func:`rouge_l`, which also scores the long answers it crashes on).

Steps are read by :func:`process_data.protocol.read_step`, exactly as α-UMi's evaluator reads
them; its docstring says where that reading differs from the router's, and why. Where α-UMi
crashes, the result here is defined instead: see :data:`DEFINED_WHERE_ALPHA_UMI_CRASHES`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from process_data.protocol import CONCLUSION_TAG, PLACEHOLDER, PLAN_OF_DECISION, TURN_END, read_step

#: What this module returns where α-UMi's script raises an exception.
DEFINED_WHERE_ALPHA_UMI_CRASHES = {
    "empty subset": "a metric over no steps (no gold call, no gold finish...) is 0.0",
    "ROUGE of an empty text": "a hypothesis or reference that is empty once punctuation is "
    "removed (such as '...') scores 0 for that step",
    "call without a separator": f"a call prediction with no {TURN_END!r} separator is parsed whole",
    "a conclusion with no tag": f"with no {CONCLUSION_TAG!r}, the whole text is the answer",
    "F1 of disjoint arguments": "0 (α-UMi reaches 0 too, through a caught ZeroDivisionError)",
    "ROUGE of a long sentence": "scored (the package's recursive LCS raises RecursionError on "
    "a sentence of about 1,000 words; rouge_l computes the same score iteratively)",
}

#: α-UMi's plan names, in its report's order (``read_step`` gives them).
PLANS = tuple(PLAN_OF_DECISION.values())


@dataclass
class StepScore:
    """What one step contributes to each metric (``None``: not part of that subset)."""

    index: int
    ref_plan: str
    pred_plan: str
    plan_correct: bool
    hallucinated: bool
    ref_action: str | None = None
    pred_action: str | None = None
    action_correct: bool | None = None
    easy_f1: list[float] = field(default_factory=list)
    hard_f1: list[float] = field(default_factory=list)
    f1: list[float] = field(default_factory=list)
    rouge_l: float | None = None


def argument_f1(ref_input: str, pred_input: str) -> tuple[list, list, list] | None:
    """``(easy, hard, f1)`` items for a step whose function is right; ``None`` when the gold
    arguments are not JSON (α-UMi then leaves the step out)."""
    try:
        ref = json.loads(ref_input)
    except (json.JSONDecodeError, TypeError):
        return None
    try:
        pred = json.loads(pred_input)
    except (json.JSONDecodeError, TypeError):
        pred = _NOT_JSON
    if ref == {}:
        score = 1.0 if pred == {} else 0.0
        return [score], [], [score]
    if pred is _NOT_JSON or not isinstance(pred, dict) or not isinstance(ref, dict):
        return [], [0.0], [0.0]
    full = sum(1 for k, v in ref.items() if k in pred and pred[k] == v)
    half = sum(1 for k, v in ref.items() if k in pred and pred[k] != v)
    recall = (0.5 * half + full) / (len(ref) + 1e-30)
    precision = (0.5 * half + full) / (len(pred) + 1e-30)
    score = 0.0 if recall + precision == 0 else 2 * recall * precision / (recall + precision)
    return [], [score], [score]


_NOT_JSON = object()


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F of one pair, equal to what α-UMi's ``Rouge().get_scores(avg=True)`` (the
    ``rouge`` 1.0.1 package) gives, but defined on texts of any length.

    The package reconstructs each longest common subsequence recursively, one Python frame per
    word, so a sentence of about 1,000 words raises ``RecursionError`` (α-UMi's evaluator
    crashes there). This is the same computation with an iterative reconstruction: sentences
    are the non-empty pieces between periods with whitespace collapsed, words are split on
    single spaces, and the summary-level score is the union, over reference sentences, of
    the words of each one's LCS with every hypothesis sentence, counted as distinct words
    (the package's default ``exclusive`` sets), with ``F = 2PR / (P + R + 1e-8)``. Where the
    package refuses a text that is empty once split (such as ``'...'``), the score is 0.
    """
    hyp, ref = _rouge_sentences(hypothesis), _rouge_sentences(reference)
    if not hyp or not ref:
        return 0.0
    hyp_words = [s.split(" ") for s in hyp]
    union: set[str] = set()
    overlap = 0
    for sentence in ref:
        words = sentence.split(" ")
        before = len(union)
        for other in hyp_words:
            union.update(_lcs_words(words, other))
        overlap += len(union) - before
    recall = overlap / len({w for s in ref for w in s.split(" ")})
    precision = overlap / len({w for s in hyp_words for w in s})
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def _rouge_sentences(text: str) -> list[str]:
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def _lcs_words(x: list[str], y: list[str]) -> list[str]:
    """The words of one longest common subsequence of ``x`` and ``y``, chosen as the
    ``rouge`` package's reconstruction chooses them (an upward step wins only when strictly
    longer)."""
    n, m = len(x), len(y)
    table = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        row, above, word = table[i], table[i - 1], x[i - 1]
        for j in range(1, m + 1):
            row[j] = above[j - 1] + 1 if word == y[j - 1] else max(above[j], row[j - 1])
    words, i, j = [], n, m
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            words.append(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return words


def score_step(index: int, record: dict) -> StepScore:
    ref = read_step(record["reference"])
    pred = read_step(record["predictions"])
    names = {t["Name"] for t in record.get("tools", [])}
    step = StepScore(
        index=index,
        ref_plan=ref.plan,
        pred_plan=pred.plan,
        plan_correct=ref.plan == pred.plan,
        hallucinated=pred.action is not None
        and pred.action != PLACEHOLDER
        and pred.action not in names,
    )
    if ref.plan == "finish":
        step.rouge_l = rouge_l(pred.answer if pred.answer is not None else PLACEHOLDER, ref.answer)
    elif ref.plan == "call":
        step.ref_action = ref.action
        step.pred_action = pred.action if pred.action is not None else PLACEHOLDER
        step.action_correct = step.pred_action == ref.action
        if not step.action_correct:
            step.easy_f1, step.hard_f1, step.f1 = [0.0], [0.0], [0.0]
        else:
            pred_input = pred.action_input if pred.action_input is not None else "{}"
            items = argument_f1(ref.action_input, pred_input)
            if items is not None:
                step.easy_f1, step.hard_f1, step.f1 = items
    return step


def aggregate(steps: Sequence[StepScore], empty: float | None = 0.0) -> dict[str, Any]:
    """α-UMi's seven numbers (``+1e-30`` on the F1s, as α-UMi adds it). A metric over no
    step is ``empty``: 0.0 for α-UMi's report, ``None`` (not applicable) for breakdowns."""

    def mean(values: Sequence[float], offset: float = 0.0) -> float | None:
        return sum(values) / len(values) + offset if values else empty

    calls = [s for s in steps if s.ref_plan == "call"]
    flat = {
        name: [x for s in steps for x in getattr(s, name)] for name in ("easy_f1", "hard_f1", "f1")
    }
    return {
        "rouge": mean([s.rouge_l for s in steps if s.rouge_l is not None]),
        "plan_em": mean([float(s.plan_correct) for s in steps]),
        "action_em": mean([float(bool(s.action_correct)) for s in calls]),
        "easy_f1": mean(flat["easy_f1"], 1e-30),
        "hard_f1": mean(flat["hard_f1"], 1e-30),
        "f1": mean(flat["f1"], 1e-30),
        "hallu_rate": mean([float(s.hallucinated) for s in steps]),
    }


@dataclass
class Evaluation:
    metrics: dict[str, float]
    by_plan: dict[str, dict[str, Any]]
    steps: list[StepScore]
    hallucinated: list[int]

    def per_step(self) -> list[dict]:
        return [asdict(s) for s in self.steps]


def evaluate(records: Sequence[dict]) -> Evaluation:
    """Score α-UMi prediction records (``reference``, ``predictions``, ``tools``)."""
    steps = [score_step(i, r) for i, r in enumerate(records)]
    by_plan = {}
    for plan in PLANS:
        subset = [s for s in steps if s.ref_plan == plan]
        by_plan[plan] = {
            "steps": len(subset),
            "predicted_as": dict(Counter(s.pred_plan for s in subset)),
            **aggregate(subset, empty=None),
        }
    return Evaluation(aggregate(steps), by_plan, steps, [s.index for s in steps if s.hallucinated])


def markdown_table(metrics: dict[str, float], by_plan: dict[str, dict[str, Any]]) -> str:
    names = ["plan_em", "action_em", "hallu_rate", "f1", "easy_f1", "hard_f1", "rouge"]
    lines = ["| subset | steps | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    total = sum(p["steps"] for p in by_plan.values())
    rows = [("all", total, metrics)] + [(f"gold {k}", v["steps"], v) for k, v in by_plan.items()]
    for label, n, values in rows:
        cells = ("–" if values[k] is None else f"{values[k]:.4f}" for k in names)
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
