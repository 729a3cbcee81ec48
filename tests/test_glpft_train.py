"""The recipe end to end on a tiny model: flags, loss going down, outputs, LoRA, packing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ALPHA_UMI, REPO, read_json, tiny_train_flags

from GLPFT.train import cpu_bf16_check, cpu_bf16_decision, parse_args

PLANNER = ALPHA_UMI / "train-example" / "train_planner.json"
CALLER = ALPHA_UMI / "train-example" / "train_caller.json"
SUMMARIZER = ALPHA_UMI / "train-example" / "train_summarizer.json"

#: α-UMi's stage-2 command line (its scripts/train_toolbench.sh), minus torchrun and DeepSpeed
ALPHA_UMI_FLAGS = [
    "--model_name_or_path",
    "tiny-random-llama",
    "--data_path",
    str(PLANNER),
    "--output_dir",
    "OUT",
    "--num_train_epochs",
    "1",
    "--per_device_train_batch_size",
    "6",
    "--per_device_eval_batch_size",
    "6",
    "--gradient_accumulation_steps",
    "1",
    "--evaluation_strategy",
    "no",
    "--eval_steps",
    "0",
    "--save_strategy",
    "steps",
    "--save_steps",
    "500",
    "--save_total_limit",
    "8",
    "--learning_rate",
    "1e-5",
    "--weight_decay",
    "0.01",
    "--warmup_ratio",
    "0.2",
    "--lr_scheduler_type",
    "cosine",
    "--gradient_checkpointing",
    "True",
    "--bf16",
    "--logging_steps",
    "2",
    "--model_max_length",
    "4096",
    "--report_to",
    "none",
    "--lazy_preprocess",
    "True",
]


def test_alpha_umi_command_line_is_accepted() -> None:
    model, data, train = parse_args(ALPHA_UMI_FLAGS)
    assert data.data_path == str(PLANNER) and data.lazy_preprocess
    assert train.eval_strategy == "no" and train.model_max_length == 4096
    assert train.gradient_checkpointing and train.bf16 and train.lr_scheduler_type == "cosine"
    assert train.warmup_steps == 0.2  # α-UMi's --warmup_ratio
    assert train.use_cpu == (not torch.cuda.is_available())  # gloo DDP and bf16 need it


def test_config_file_gives_defaults_that_flags_override(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"data_path: {PLANNER}\noutput_dir: {tmp_path}/o\nlearning_rate: 0.001\n"
        "lora_r: 8\nmodel_max_length: 2048\n"
    )
    model, data, train = parse_args(["--config", str(config), "--model_max_length", "1024"])
    assert data.data_path == str(PLANNER) and model.lora_r == 8
    assert train.learning_rate == 0.001 and train.model_max_length == 1024


def run_train(out: Path, *extra: str, data: Path = PLANNER) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "GLPFT.train",
        *tiny_train_flags(data, out, per_device_train_batch_size=4, seed=7),
        *extra,
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return read_json(out / "train_summary.json")


def test_full_training_lowers_the_loss_and_writes_its_outputs(tmp_path: Path, shared) -> None:
    summary = run_train(tmp_path / "full", "--max_steps", "30")
    losses = summary["loss_history"]["loss"]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0
    assert summary["samples"] == len(read_json(PLANNER))
    assert 0 < summary["trained_share"] < 0.5
    for name in ("model.safetensors", "config.json", "tokenizer.json", "loss.png"):
        assert (tmp_path / "full" / name).is_file(), name


def test_lora_adapter_and_merged_checkpoint(tmp_path: Path, shared) -> None:
    out = tmp_path / "lora"
    summary = run_train(
        out,
        "--max_steps",
        "6",
        "--lora_r",
        "8",
        "--merge_lora",
        "True",
        "--learning_rate",
        "1e-2",
        data=CALLER,
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and set(config["target_modules"]) == {"q_proj", "v_proj"}
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "model.safetensors").is_file()
    assert summary["lora"]["lora_r"] == 8
    losses = summary["loss_history"]["loss"]
    assert losses[-1] < losses[0]
    # the merged model computes what base + adapter compute
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from GLPFT.models import TINY_LLAMA, resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model(TINY_LLAMA), dtype=torch.float32)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32)
    ids = torch.tensor([list(range(100, 164))])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, out).eval()(input_ids=ids).logits
        assert torch.allclose(merged.eval()(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_packing_trains_on_the_same_tokens(tmp_path: Path, shared) -> None:
    """The packed rows train exactly the samples' tokens, less the first label of each sample
    (``pack_features`` drops it: it would be predicted from the previous sample's last token),
    with positions restarting at 0 at every sample; ``--packing`` trains on these rows."""
    from collections import Counter

    from transformers import AutoTokenizer

    from GLPFT.collate import PackedCollator
    from GLPFT.data import IGNORE_INDEX, build_dataset, pack_dataset
    from GLPFT.models import TINY_LLAMA, resolve_model

    long_target = tmp_path / "long_target.json"  # its target alone overflows: label 0 trained
    long_target.write_text(json.dumps([{"input": "Summarize.", "target": "word " * 1100}]))
    data, cache = f"{SUMMARIZER},{long_target}", tmp_path / "cache"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(TINY_LLAMA))
    dataset = build_dataset(data, tokenizer, 1024, cache_dir=str(cache))
    samples, packed = dataset.to_list(), pack_dataset(dataset, 1024).to_list()
    assert len(packed) < len(samples)

    def trained_tokens(rows: list[dict]) -> Counter:
        return Counter(x for row in rows for x in row["labels"] if x != IGNORE_INDEX)

    dropped = Counter(s["labels"][0] for s in samples if s["labels"][0] != IGNORE_INDEX)
    assert dropped  # the long target's first token
    assert trained_tokens(packed) == trained_tokens(samples) - dropped

    # sample by sample: its tokens, its labels but the first, its positions from 0
    unpacked = {tuple(s["input_ids"]): s["labels"] for s in samples}
    assert len(unpacked) == len(samples)
    seen = []
    batch = PackedCollator(tokenizer.pad_token_id)(packed)
    assert "attention_mask" not in batch
    for r, row in enumerate(packed):
        start, width = 0, batch["input_ids"].shape[1]
        for n in row["seq_lengths"]:
            ids = tuple(row["input_ids"][start : start + n])
            assert row["labels"][start : start + n] == [IGNORE_INDEX, *unpacked[ids][1:]]
            assert batch["position_ids"][r, start : start + n].tolist() == list(range(n))
            seen.append(ids)
            start += n
        assert start == len(row["input_ids"]) <= 1024
        assert batch["position_ids"][r, start:].tolist() == list(range(width - start))
        assert batch["labels"][r, :start].tolist() == row["labels"]
        assert (batch["labels"][r, start:] == IGNORE_INDEX).all()
    assert sorted(seen) == sorted(unpacked)

    summary = run_train(
        tmp_path / "run",
        *("--max_steps", "1", "--model_max_length", "1024", "--packing", "True"),
        *("--cache_dir", str(cache)),
        data=data,
    )
    assert (summary["samples"], summary["rows"]) == (len(samples), len(packed))


def test_train_glpft_script_runs_both_stages(tmp_path: Path) -> None:
    """scripts/train_glpft.sh: backbone, then the three roles as LoRA adapters on it."""
    from process_data.toolbench.cli import main as process_data

    data = tmp_path / "data"
    process_data(
        ["all", "--data_dir", str(REPO / "data" / "toolbench_sample"), "--output_dir", str(data)]
    )
    out = tmp_path / "glpft"
    proc = subprocess.run(
        [
            str(REPO / "scripts" / "train_glpft.sh"),
            "--base",
            "tiny-random-llama",
            "--data",
            str(data),
            "--out",
            str(out),
            "--lora",
            "4",
            "--",
            "--max_steps",
            "1",
            "--model_max_length",
            "512",
            "--save_strategy",
            "no",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "backbone" / "model.safetensors").is_file()
    for role in ("planner", "caller", "summarizer"):
        adapter = json.loads((out / role / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(out / "backbone")
        summary = read_json(out / role / "train_summary.json")
        assert summary["data_path"] == str(data / f"train_{role}.json")


def test_the_cpu_bf16_check_says_what_it_decided(capsys: pytest.CaptureFixture) -> None:
    """bf16 autocast on the CPU is kept where the CPU lists bf16 instructions and a bf16
    matrix product runs in a child process; a product that kills its process (SIGILL: a VM
    that lists AMX without enabling it) makes training fall back to fp32, and says so."""
    check = cpu_bf16_check()
    _, _, args = parse_args(["--data_path", "x", "--output_dir", "o", "--bf16"])
    cpu_bf16_decision(args, check)
    said = capsys.readouterr().err
    if check.native is False:
        assert "the CPU flags list neither avx512_bf16 nor amx_bf16" in said and args.bf16
    else:
        assert f"GLPFT: --bf16 on the CPU: bf16 autocast ({check.reason})" in said
    if check.native:
        assert "a bf16 matrix product runs (torch's CPU kernels:" in check.reason
        crashed = cpu_bf16_check("import os, signal; os.kill(os.getpid(), signal.SIGILL)")
        assert crashed.native is False and crashed.crashed
        assert "a bf16 matrix product in a child process was killed by SIGILL" in crashed.reason
        cpu_bf16_decision(args, crashed)
        assert not args.bf16
        assert "--bf16 dropped, training in fp32" in capsys.readouterr().err
