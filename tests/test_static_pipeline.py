"""Static inference end to end on the tiny model: order, outputs, resume after SIGKILL,
single-LLM mode, LoRA adapters on one base."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ALPHA_UMI, REPO, kill_when, read_json, read_jsonl

from inference_utils.backends import generate_texts
from inference_utils.static.infer import backbone_prediction
from inference_utils.static.metrics import evaluate
from inference_utils.static.steps import step_samples
from process_data.protocol import ASSISTANT, MODEL_INPUT_PREFIX, USER, prompt_suffix, render_turn
from process_data.toolbench.roles import build_role_steps

DEV = ALPHA_UMI / "static_eval" / "out_of_domain_dev.json"
TINY = "tiny-random-llama"


def pipeline(out: Path, *extra: str, n: int = 24) -> list[str]:
    return [
        sys.executable,
        "-m",
        "inference_utils.static.infer",
        "--data_path",
        str(DEV),
        "--output_dir",
        str(out),
        "--num_infer_samples",
        str(n),
        "--max_new_tokens",
        "6",
        "--max_input_length",
        "768",
        "--chunk_size",
        "8",
        "--per_device_eval_batch_size",
        "4",
        *extra,
    ]


ROLE_FLAGS = [f"--{r}_model_name_or_path={TINY}" for r in ("planner", "caller", "summarizer")]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_multi_llm_chain_keeps_input_order_and_alpha_umi_fields(tmp_path: Path, shared) -> None:
    out = tmp_path / "run"
    run(pipeline(out, *ROLE_FLAGS, "--report_to", "none"))  # α-UMi's extra flags are ignored
    predictions = read_json(out / "predictions.json")
    expected = list(step_samples(read_json(DEV)))[:24]
    assert [p["model_input"] for p in predictions] == [s["model_input"] for s in expected]
    for p in predictions:
        assert {
            "tools",
            "history",
            "dispath",
            "model_input",
            "reference",
            "predictions",
        } <= p.keys()
        if "planner_prediction" in p:  # routed to the caller or the summarizer
            follow = [k for k in p if k.startswith("model_input_for_")]
            assert (
                len(follow) == 1 and render_turn(ASSISTANT, p["planner_prediction"]) in p[follow[0]]
            )
    lines = read_jsonl(out / "predictions.jsonl")
    assert [x["index"] for x in lines] == list(range(24))
    from inference_utils.static.evaluate import main as evaluate

    assert (
        evaluate(
            [
                "--input_path",
                str(out / "predictions.jsonl"),
                "--output_path",
                str(out / "metrics.json"),
            ]
        )
        == 0
    )
    assert set(read_json(out / "metrics.json")) == {
        "rouge",
        "plan_em",
        "action_em",
        "easy_f1",
        "hard_f1",
        "f1",
        "hallu_rate",
    }


def test_sigkill_then_rerun_finishes_with_the_same_files(tmp_path: Path, shared) -> None:
    reference = tmp_path / "reference"
    run(pipeline(reference, *ROLE_FLAGS, n=40))
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        pipeline(out, *ROLE_FLAGS, n=40),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    jsonl = out / "predictions.jsonl"
    kill_when(proc, lambda: jsonl.exists() and jsonl.read_text().count("\n") >= 8)
    assert not (out / "predictions.json").exists()
    with open(jsonl, "a") as fh:  # a line cut short by the kill
        fh.write('{"index": 39, "tools": [')
    resumed = run(pipeline(out, *ROLE_FLAGS, n=40))
    assert "steps" in resumed.stderr
    for name in ("predictions.json", "predictions.jsonl"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


def test_other_arguments_refuse_to_resume(tmp_path: Path, shared) -> None:
    out = tmp_path / "run"
    run(pipeline(out, *ROLE_FLAGS, n=8))
    proc = subprocess.run(
        pipeline(out, *ROLE_FLAGS, "--max_new_tokens", "9", n=8),
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "other arguments" in proc.stderr


def test_single_llm_mode_is_scored_by_the_same_evaluator(tmp_path: Path, shared) -> None:
    out = tmp_path / "backbone"
    run(pipeline(out, f"--backbone_model_name_or_path={TINY}", n=8))
    predictions = read_json(out / "predictions.json")
    assert len(predictions) == 8
    for p in predictions:  # the prediction is the backbone's own output, converted
        assert p["predictions"] == backbone_prediction(p["backbone_output"])
    from inference_utils.static.evaluate import main as evaluate

    assert (
        evaluate(
            [
                "--input_path",
                str(out / "predictions.json"),
                "--output_path",
                str(out / "metrics.json"),
            ]
        )
        == 0
    )


def test_single_llm_mode_prompts_as_training_and_scores_gold_outputs_exactly(
    tmp_path: Path, shared
) -> None:
    """A backbone that answers every training prompt with its training target: single-LLM
    mode must send exactly those prompts (the same history rendering as the backbone's
    training data), and its converted outputs must score what the gold references score
    against themselves."""
    from openai_gateway import ScriptedEndpoint

    script = {
        MODEL_INPUT_PREFIX + step.input: step.target
        for record in read_json(DEV)
        for step in build_role_steps("backbone", record, compat=False).steps
    }
    out = tmp_path / "gold_backbone"
    with ScriptedEndpoint(script) as server:
        cmd = pipeline(out, f"--backbone_endpoint={server.url}", "--request_timeout=30", n=-1)
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and not server.unknown, proc.stderr[-2000:]
    predictions = read_json(out / "predictions.json")
    assert len(predictions) == len(list(step_samples(read_json(DEV))))
    gold = [dict(p, predictions=p["reference"]) for p in predictions]
    ours = evaluate(predictions)
    assert ours.metrics == evaluate(gold).metrics and ours.metrics["plan_em"] == 1.0
    assert ours.metrics["action_em"] == 1.0


@pytest.fixture
def adapters(tmp_path: Path) -> dict[str, Path]:
    """Three random LoRA adapters on the tiny model, as GLPFT stage 2 saves them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from GLPFT.models import resolve_model

    base = resolve_model(TINY)
    paths = {}
    for k, role in enumerate(("planner", "caller", "summarizer")):
        torch.manual_seed(k)
        model = AutoModelForCausalLM.from_pretrained(base)
        peft = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        )
        paths[role] = tmp_path / role
        peft.save_pretrained(paths[role])
    return paths


def test_lora_adapters_share_one_base(tmp_path: Path, adapters: dict[str, Path]) -> None:
    from inference_utils.generation import GenerationSettings, LoRAModels

    models = LoRAModels(
        {r: str(p) for r, p in adapters.items()},
        GenerationSettings(max_new_tokens=5, max_input_length=256),
    )
    prompt = [render_turn(USER, "Weather in Lyon?") + prompt_suffix("planner")]
    outputs = {role: generate_texts(models, role, prompt)[0] for role in adapters}
    assert len(set(outputs.values())) > 1  # the adapters are switched per role
    bases = [m for m in models.model.modules() if type(m).__name__ == "LlamaModel"]
    assert len(bases) == 1
    out = tmp_path / "lora_run"
    flags = [f"--{r}_model_name_or_path={p}" for r, p in adapters.items()]
    flags += [f"--{r}_use_lora=True" for r in adapters]
    run(pipeline(out, *flags, n=8))
    assert len(read_json(out / "predictions.json")) == 8


class ScriptedRoles:
    """A batched role backend whose planner decides call, conclusion and give-up in turn, and
    whose summarizer is down; it notes each batch."""

    batched, concurrency = True, 1

    def __init__(self) -> None:
        self.batches: list[tuple[str, int]] = []

    def generate(self, role, requests):
        from inference_utils.backends import ModelResult
        from process_data.protocol import format_plan

        self.batches.append((role, len(requests)))
        if role == "summarizer":
            raise RuntimeError("the summarizer is down")
        if role == "planner":
            kinds = ("caller", "conclusion", "give up")
            return [ModelResult(format_plan(f"t{k}", kinds[k % 3])) for k in range(len(requests))]
        return [ModelResult('Action: f\nAction Input: {"a": 1}')] * len(requests)

    def release(self, sessions) -> None:
        pass

    def close(self) -> None:
        pass


def test_steps_run_on_the_driver_as_one_batch_per_role(shared) -> None:
    """α-UMi's pipeline asks each role once for all the steps that need it; a role that
    fails fails its own steps only, and the others keep their predictions."""
    from inference_utils.static.infer import run_steps
    from process_data.jsonio import iter_json_array

    records = [r for _, r in zip(range(3), iter_json_array(DEV), strict=False)]
    samples = dict(enumerate(step_samples(records)))
    n = len(samples)
    backend, done = ScriptedRoles(), {}
    failed = run_steps(samples, backend, {}, False, False, done.__setitem__)
    calls, concludes = range(0, n, 3), range(1, n, 3)
    assert backend.batches == [
        ("planner", n),
        ("caller", len(calls)),
        ("summarizer", len(concludes)),
    ]
    assert sorted(failed) == list(concludes)
    assert all("summarizer is down" in str(e) for e in failed.values())
    assert sorted(done) == sorted(set(range(n)) - set(concludes))
    for i in calls:
        assert done[i]["predictions"].endswith('caller: Action: f\nAction Input: {"a": 1}')
    for i in range(2, n, 3):
        assert done[i]["predictions"] == done[i]["planner_output"]  # a give-up: the turn alone
