"""scripts/train_glpft.sh's defaults, CPU and CUDA (as printed by --dry_run), and the flags
they become: the commands parse, later flags win, and a flag given after -- replaces the
script's own instead of clashing with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from GLPFT.train import _distributed_defaults, parse_args

SCRIPT = REPO / "scripts" / "train_glpft.sh"
ROLES = ("backbone", "planner", "caller", "summarizer")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for role in ROLES:
        (folder / f"train_{role}.json").write_text("[]")
    return folder


def dry_run(data: Path, *options: str) -> tuple[str, list[list[str]]]:
    """The printed defaults line, and each GLPFT.train call's flags (after ``GLPFT.train``)."""
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--data", str(data), "--out", "OUT", "--dry_run", *options],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    defaults = [line for line in lines if line.startswith("train_glpft.sh defaults:")]
    assert len(defaults) == 1, proc.stderr
    commands = [line[2:].split(" ") for line in lines if line.startswith("+ ")]
    return defaults[0], commands


def train_flags(command: list[str]) -> list[str]:
    return command[command.index("GLPFT.train") + 1 :]


def names(flags: list[str]) -> list[str]:
    return [f.split("=")[0] for f in flags if f.startswith("--")]


def value(flags: list[str], name: str) -> str | None:
    return flags[flags.index(name) + 1] if name in flags else None


def test_cpu_commands_are_todays(data: Path) -> None:
    """On CPU nothing is added: α-UMi's hyperparameters only, one process, no DeepSpeed."""
    line, commands = dry_run(data, "--device", "cpu", "--", "--max_steps", "2")
    assert "device=cpu" in line and "bf16=off" in line and "ds1=none" in line
    assert len(commands) == 4
    for command, role in zip(commands, ROLES, strict=True):
        assert command[:3] == [sys.executable, "-m", "GLPFT.train"]
        flags = train_flags(command)
        base = "smollm2-135m" if role == "backbone" else "OUT/backbone"
        epochs = "2" if role in ("backbone", "summarizer") else "1"
        lr, warmup = ("5e-5", "0.4") if role == "backbone" else ("1e-5", "0.2")
        stage2 = [] if role == "backbone" else ["--weight_decay", "0.01"]
        assert flags == [
            "--model_name_or_path",
            base,
            "--data_path",
            str(data / f"train_{role}.json"),
            "--output_dir",
            f"OUT/{role}",
            "--num_train_epochs",
            epochs,
            "--learning_rate",
            lr,
            *stage2,
            "--warmup_ratio",
            warmup,
            "--lr_scheduler_type",
            "cosine",
            "--save_strategy",
            "steps",
            "--save_steps",
            "500",
            "--save_total_limit",
            "2",
            "--logging_steps",
            "2",
            "--model_max_length",
            "4096",
            "--max_steps",
            "2",
        ]


def test_auto_picks_the_cpu_defaults_here(data: Path) -> None:
    line, _ = dry_run(data)
    assert f"device={'cuda' if torch.cuda.is_available() else 'cpu'}" in line


@pytest.mark.parametrize("lora", [0, 8], ids=["full", "lora"])
def test_cuda_defaults(data: Path, lora: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # the DeepSpeed presets are named relative to the repository
    line, commands = dry_run(data, "--device", "cuda", "--nproc", "8", "--lora", str(lora))
    stage2 = "ds_configs/zero2.json" if lora else "ds_configs/zero3.json"
    for part in ("device=cuda", "bf16=on", "ds1=ds_configs/zero3.json", f"ds2={stage2}"):
        assert part in line
    assert "activation_checkpointing=on" in line and "batch=6, grad_accum=1" in line
    assert "48 samples a step" in line and "overridable by" in line
    for k, command in enumerate(commands):
        assert command[1:3] == ["-m", "torch.distributed.run"]
        assert value(command, "--nproc_per_node") == "8"
        flags = train_flags(command)
        assert len(names(flags)) == len(set(names(flags))), flags  # each flag once
        model, _, args = parse_args(flags)
        assert args.bf16 and args.activation_checkpointing
        assert args.per_device_train_batch_size == 6 and args.gradient_accumulation_steps == 1
        assert args.deepspeed == ("ds_configs/zero3.json" if k == 0 else stage2)
        assert model.lora_r == (lora if k else 0)


def test_cuda_defaults_keep_the_effective_batch_on_fewer_gpus(data: Path) -> None:
    line, commands = dry_run(data, "--device", "cuda", "--nproc", "2", "--roles", "planner")
    assert "batch=6, grad_accum=4 (6×4×2 = 48 samples a step)" in line
    line, _ = dry_run(data, "--device", "cuda", "--nproc", "4", "--nnodes", "2", "--batch", "3")
    assert "batch=3, grad_accum=2 (3×2×8 = 48 samples a step)" in line


def test_script_options_override_the_cuda_defaults(data: Path) -> None:
    options = ("--device", "cuda", "--nproc", "8", "--no_bf16", "--no_checkpointing", "--no_ds")
    line, commands = dry_run(data, *options, "--batch", "2", "--grad_accum", "5")
    assert "bf16=off" in line and "ds1=none, ds2=none" in line and "grad_accum=5" in line
    for command in commands:
        flags = train_flags(command)
        assert "--bf16" not in flags and "--deepspeed" not in flags
        assert "--activation_checkpointing" not in flags
        _, _, args = parse_args(flags)
        assert args.per_device_train_batch_size == 2 and args.gradient_accumulation_steps == 5


def test_flags_after_the_separator_replace_the_scripts_own(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp16 after -- replaces the bf16 default (the Trainer refuses both), a batch size
    replaces the default and sets the accumulation, an old flag name replaces the new one
    (which transformers would otherwise prefer), and every later flag wins."""
    extra = ["--fp16", "--per_device_train_batch_size=2", "--learning_rate", "1e-3"]
    extra += ["--warmup_steps", "0.1", "--deepspeed", "ds_configs/zero2.json"]
    extra += ["--gradient_checkpointing", "False"]  # the deprecated name of a default
    monkeypatch.chdir(REPO)
    line, commands = dry_run(data, "--device", "cuda", "--nproc", "8", "--", *extra)
    assert "batch=2, grad_accum=3" in line
    for command in commands:
        flags = train_flags(command)
        assert len(names(flags)) == len(set(names(flags))), flags
        assert "--bf16" not in flags and "--warmup_ratio" not in flags
        assert "--activation_checkpointing" not in flags
        _, _, args = parse_args(flags)
        assert args.fp16 and not args.bf16
        assert args.per_device_train_batch_size == 2 and args.gradient_accumulation_steps == 3
        assert args.learning_rate == 1e-3 and args.warmup_steps == 0.1
        assert args.deepspeed == "ds_configs/zero2.json" and not args.activation_checkpointing


def test_both_half_precisions_are_refused() -> None:
    """Why a user's --fp16 must replace the script's --bf16 rather than join it."""
    with pytest.raises(ValueError, match="fp16.*bf16|bf16.*fp16"):
        parse_args(["--data_path", "x", "--output_dir", "o", "--bf16", "--fp16"])


def test_unknown_device_is_refused(data: Path) -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--data", str(data), "--device", "tpu", "--dry_run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "--device must be cuda, cpu or auto" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_gpu_check_stops_at_once_without_cuda() -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu_check.sh")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 1 and "no CUDA device" in proc.stderr and "need a GPU" in proc.stderr


@pytest.mark.parametrize(
    ("flags", "config", "expected"),
    [
        ([], None, "group_by_length"),
        (["--train_sampling_strategy", "random"], None, "random"),
        (["--train_sampling_strategy=sequential"], None, "sequential"),
        ([], "train_sampling_strategy: random\n", "random"),
        (
            ["--train_sampling_strategy", "group_by_length"],
            "train_sampling_strategy: random\n",
            "group_by_length",
        ),
    ],
    ids=["default", "flag", "flag=", "config", "flag-over-config"],
)
def test_sampling_strategy_given_by_the_user_is_kept(
    tmp_path: Path, flags: list[str], config: str | None, expected: str
) -> None:
    argv = ["--data_path", "x", "--output_dir", str(tmp_path / "o"), *flags]
    if config is not None:
        (tmp_path / "c.yaml").write_text(config)
        argv += ["--config", str(tmp_path / "c.yaml")]
    _, _, args = parse_args(argv)
    _distributed_defaults(args)
    assert args.train_sampling_strategy == expected
