"""α-UMi's static metrics, reproduced exactly on α-UMi's own predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ALPHA_UMI, read_json

from inference_utils.toolbench.evaluate import main
from inference_utils.toolbench.metrics import aggregate, evaluate, parse_output, score_step

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


CALL = "assistant: t\n Next: caller.</s>caller: Action: f_for_t\nAction Input: {}</s>"


def test_where_alpha_umi_crashes_the_result_is_defined() -> None:
    # '...' is empty for rouge once punctuation is gone: α-UMi raises, we score 0
    finish = step(
        "assistant: x Next: conclusion.</s>conclusion: The answer is 4.</s>",
        "assistant: x Next: conclusion.</s>conclusion: ...</s>",
    )
    assert evaluate([finish]).metrics["rouge"] == 0.0
    # no gold call at all: action_em and the F1s are 0.0 instead of a ZeroDivisionError
    metrics = evaluate([finish]).metrics
    assert metrics["action_em"] == 0.0 and metrics["f1"] == pytest.approx(0.0)
    # a call without the '</s>' separator is parsed whole
    assert parse_output('Action: f_for_t\nAction Input: {"a": 1}').action == "f_for_t"
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
    ref = CALL.replace("Action Input: {}", f"Action Input: {ref_args}")
    pred = CALL.replace("Action Input: {}", f"Action Input: {pred_args}")
    scored = score_step(0, step(ref, pred))
    assert scored.f1 == [pytest.approx(f1)] and scored.hard_f1 == scored.f1


def test_unparsable_gold_arguments_leave_the_step_out() -> None:
    ref = CALL.replace("Action Input: {}", "Action Input: {oops")
    scored = score_step(0, step(ref, CALL))
    assert scored.action_correct and scored.f1 == scored.easy_f1 == scored.hard_f1 == []


def test_breakdown_marks_metrics_that_do_not_apply() -> None:
    result = evaluate([step(CALL, CALL), step(CALL, CALL.replace("f_for_t", "ghost"))])
    assert result.by_plan["call"]["action_em"] == 0.5
    assert result.by_plan["finish"]["rouge"] is None
    assert result.hallucinated == [1]
    assert aggregate([])["plan_em"] == 0.0
    assert json.dumps(result.per_step())


def test_step_samples_are_alpha_umis(shared) -> None:
    """Each sample's planner prompt and reference is one of α-UMi's (it reorders them)."""
    from inference_utils.toolbench.steps import step_samples

    samples = list(step_samples(read_json(STATIC / "out_of_domain_dev.json")))
    theirs = read_json(STATIC / "predictions_dev.json")
    assert len(samples) == len(theirs)
    assert {(s["model_input"], s["reference"]) for s in samples} == {
        (t["model_input"], t["reference"]) for t in theirs
    }
    assert {s["dispath"] for s in samples} == {t["dispath"] for t in theirs}
