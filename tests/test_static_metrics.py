"""α-UMi's static metrics, reproduced exactly on α-UMi's own predictions."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
from conftest import ALPHA_UMI, read_json

from inference_utils.static.evaluate import main
from inference_utils.static.metrics import aggregate, evaluate, rouge_l, score_step
from process_data.protocol import (
    format_action,
    format_plan,
    format_prediction,
    read_step,
)

STATIC = ALPHA_UMI / "static_eval"


def test_metrics_equal_alpha_umi_on_the_dev_predictions(tmp_path: Path, shared) -> None:
    out = tmp_path / "metrics.json"
    assert (
        main(["--input_path", str(STATIC / "predictions_dev.json"), "--output_path", str(out)]) == 0
    )
    ours, expected = read_json(out), read_json(STATIC / "metrics_expected_dev.json")
    assert ours.keys() == expected.keys()
    for key, value in expected.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    for name in ("hallu_cases.json", "metrics_by_plan.json", "metrics_per_step.json", "metrics.md"):
        assert (tmp_path / name).is_file(), name
    assert len(read_json(tmp_path / "hallu_cases.json")) == 7


def test_every_step_contributes_what_alpha_umi_counts(shared) -> None:
    expected = read_json(STATIC / "per_sample_expected_dev.json")["samples"]
    records = read_json(STATIC / "predictions_dev.json")
    assert len(expected) == len(records)
    for want in expected:
        got = score_step(want["index"], records[want["index"]])
        assert got.ref_plan == want["ref_plan"] and got.pred_plan == want["pred_plan"]
        assert got.plan_correct == want["plan_correct"]
        assert got.hallucinated == want["hallucinated"]
        if want["ref_plan"] == "call":
            assert got.pred_action == want["pred_action"]
            assert got.action_correct == want["action_correct"]
        for name in ("easy_f1", "hard_f1", "f1"):
            want_items = want.get(f"{name}_items", [])  # absent: not a gold call
            assert getattr(got, name) == pytest.approx(want_items), (want, name)
        if "rouge_l_f" in want:
            assert got.rouge_l == pytest.approx(want["rouge_l_f"], abs=1e-12)


def step(reference: str, prediction: str, tools=("f_for_t",)) -> dict:
    return {
        "reference": reference,
        "predictions": prediction,
        "tools": [{"Name": name} for name in tools],
    }


def call(name: str = "f_for_t", arguments: str = "{}") -> str:
    return format_prediction(format_plan("t", "caller"), "caller", format_action(name, arguments))


def finish(answer: str) -> str:
    return format_prediction(format_plan("x", "conclusion"), "conclusion", answer)


CALL = call()


def test_where_alpha_umi_crashes_the_result_is_defined() -> None:
    # '...' is empty for rouge once punctuation is gone: α-UMi raises, we score 0
    finished = step(finish("The answer is 4."), finish("..."))
    assert evaluate([finished]).metrics["rouge"] == 0.0
    # no gold call at all: action_em and the F1s are 0.0 instead of a ZeroDivisionError
    metrics = evaluate([finished]).metrics
    assert metrics["action_em"] == 0.0 and metrics["f1"] == pytest.approx(0.0)
    # a call without the '</s>' separator is parsed whole
    assert read_step(format_action("f_for_t", '{"a": 1}')).action == "f_for_t"
    assert evaluate([]).metrics["plan_em"] == 0.0


@pytest.mark.parametrize(
    ("ref_args", "pred_args", "f1"),
    [
        ('{"a": 1, "b": 2}', '{"a": 1, "b": 2}', 1.0),
        ('{"a": 1, "b": 2}', '{"a": 1, "b": 3}', 0.75),  # a key with another value counts 0.5
        ('{"a": 1}', '{"c": 1}', 0.0),
        ('{"a": 1}', "not json", 0.0),
        ('{"a": 1}', "[1]", 0.0),
    ],
)
def test_argument_f1(ref_args: str, pred_args: str, f1: float) -> None:
    scored = score_step(0, step(call(arguments=ref_args), call(arguments=pred_args)))
    assert scored.f1 == [pytest.approx(f1)] and scored.hard_f1 == scored.f1


def test_unparsable_gold_arguments_leave_the_step_out() -> None:
    scored = score_step(0, step(call(arguments="{oops"), CALL))
    assert scored.action_correct and scored.f1 == scored.easy_f1 == scored.hard_f1 == []


def test_breakdown_marks_metrics_that_do_not_apply() -> None:
    result = evaluate([step(CALL, CALL), step(CALL, call("ghost"))])
    assert result.by_plan["call"]["action_em"] == 0.5
    assert result.by_plan["finish"]["rouge"] is None
    assert result.hallucinated == [1]
    assert aggregate([])["plan_em"] == 0.0
    assert json.dumps(result.per_step())


def test_step_samples_are_alpha_umis(shared) -> None:
    """Each sample's planner prompt and reference is one of α-UMi's (it reorders them)."""
    from inference_utils.static.steps import step_samples

    samples = list(step_samples(read_json(STATIC / "out_of_domain_dev.json")))
    theirs = read_json(STATIC / "predictions_dev.json")
    assert len(samples) == len(theirs)
    assert {(s["model_input"], s["reference"]) for s in samples} == {
        (t["model_input"], t["reference"]) for t in theirs
    }
    assert {s["dispath"] for s in samples} == {t["dispath"] for t in theirs}


def _long_answer(records: list[dict], words: int) -> str:
    """A long final answer made of real ones, with the periods turned into commas: one
    sentence of about ``words`` words, as a model listing many results writes it."""
    answers = [read_step(r["reference"]).answer for r in records]
    text: list[str] = []
    while len(text) < words:
        for answer in filter(None, answers):
            text += answer.replace(".", ",").split()
    return " ".join(text[:words])


def test_rouge_l_is_the_packages_and_defined_on_long_answers(shared) -> None:
    """Equal to ``rouge`` 1.0.1 where it works; where its recursive LCS overflows the stack
    (α-UMi's evaluator crashes), still a score, and 1 for an answer equal to its reference."""
    from rouge import Rouge

    records = read_json(STATIC / "predictions_dev.json")
    pairs = [
        (read_step(r["predictions"]).answer or "none", read_step(r["reference"]).answer)
        for r in records
        if read_step(r["reference"]).plan == "finish"
    ]
    medium = _long_answer(records, 300)
    pairs += [(medium, medium[: len(medium) // 2]), (medium[::-1], medium)]
    for hyp, ref in pairs:
        want = Rouge().get_scores(hyps=[hyp], refs=[ref], avg=True)["rouge-l"]["f"]
        assert rouge_l(hyp, ref) == want
    long_ref = _long_answer(records, 1200)
    words = long_ref.split()
    random.Random(0).shuffle(words)
    long_hyp = " ".join(words[:1000])
    with pytest.raises(RecursionError):
        Rouge().get_scores(hyps=[long_hyp], refs=[long_ref], avg=True)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # deep enough for the package, to compare with it
    try:
        want = Rouge().get_scores(hyps=[long_hyp], refs=[long_ref], avg=True)["rouge-l"]["f"]
    finally:
        sys.setrecursionlimit(limit)
    assert rouge_l(long_hyp, long_ref) == want and 0.0 < want < 0.99
    assert rouge_l(long_ref, long_ref) == pytest.approx(1.0, abs=1e-7)
    result = evaluate([step(finish(long_ref), finish(long_hyp))])
    assert result.metrics["rouge"] == pytest.approx(rouge_l(long_hyp, long_ref))
