"""α-UMi's step-level metrics, with its exact definitions (``evaluate-multi_agent.py``).

* ``plan_em``: the predicted plan (call / finish / give up) equals the gold one, over all steps;
* ``action_em``: the predicted function name equals the gold one, over gold call steps;
* ``hallu_rate``: the prediction names a function that is not among the tools, over all steps;
* ``f1``, ``easy_f1``, ``hard_f1``: argument F1 over gold call steps. A wrong function scores 0
  in all three lists. With the right function: a gold ``{}`` goes to ``easy_f1`` (1 only for a
  predicted ``{}``), other gold arguments to ``hard_f1``, where a key with the right value
  counts 1 and a key with another value 0.5. A gold argument string that is not JSON leaves
  the step out of all three lists; a prediction that is not JSON scores 0;
* ``rouge``: ROUGE-L F (the ``rouge`` 1.0.1 package) of the final answer, over gold finish
  steps.

Where α-UMi crashes, the result here is defined instead: see
:data:`DEFINED_WHERE_ALPHA_UMI_CRASHES`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from process_data.protocol import TURN_END

#: What this module returns where α-UMi's script raises an exception.
DEFINED_WHERE_ALPHA_UMI_CRASHES = {
    "empty subset": "a metric over no steps (no gold call, no gold finish...) is 0.0",
    "ROUGE of an empty text": "a hypothesis or reference that is empty once punctuation is "
    "removed (such as '...') scores 0 for that step",
    "call without '</s>'": "a call prediction with no '</s>' separator is parsed whole",
    "'conclusion:' without a space": "the whole text is the answer",
    "F1 of disjoint arguments": "0 (α-UMi reaches 0 too, through a caught ZeroDivisionError)",
}

PLANS = ("call", "finish", "give up")


@dataclass(frozen=True)
class Parsed:
    plan: str
    action: str | None = None
    action_input: str | None = None
    answer: str | None = None


def parse_output(text: str) -> Parsed:
    """A reference or prediction string, read as α-UMi's ``parse_output`` reads it."""
    if "Next: give up" in text:
        return Parsed("give up")
    if "Next: conclusion" in text:
        answer = (
            text[text.rindex("conclusion: ") + len("conclusion: ") :]
            if ("conclusion:" in text and "conclusion: " in text)
            else text
        )
        return Parsed("finish", answer=answer.replace(TURN_END, ""))
    parts = text.split(TURN_END)
    call = parts[1] if len(parts) > 1 else text
    if "Action Input:" in call:
        action_input = call[call.rindex("Action Input:") + len("Action Input:") :].strip()
    else:
        action_input = "{}"
    if "Action:" in call:
        action = call[call.rindex("Action:") + len("Action:") :].strip()
        if "Action Input:" in action:
            action = action[: action.index("Action Input:")].strip()
    else:
        action = "none"
    return Parsed("call", action, action_input)


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
    """ROUGE-L F of one pair, as α-UMi's averaged ``get_scores`` counts it; 0 where the
    package refuses an empty text."""
    from rouge import Rouge

    try:
        return Rouge().get_scores(hyps=[hypothesis], refs=[reference], avg=True)["rouge-l"]["f"]
    except ValueError:  # "Hypothesis is empty." / "Reference is empty."
        return 0.0


def score_step(index: int, record: dict) -> StepScore:
    ref = parse_output(record["reference"])
    pred = parse_output(record["predictions"])
    names = {t["Name"] for t in record.get("tools", [])}
    step = StepScore(
        index=index,
        ref_plan=ref.plan,
        pred_plan=pred.plan,
        plan_correct=ref.plan == pred.plan,
        hallucinated=pred.action is not None and pred.action != "none" and pred.action not in names,
    )
    if ref.plan == "finish":
        step.rouge_l = rouge_l(pred.answer if pred.answer is not None else "none", ref.answer)
    elif ref.plan == "call":
        step.ref_action = ref.action
        step.pred_action = pred.action if pred.action is not None else "none"
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
