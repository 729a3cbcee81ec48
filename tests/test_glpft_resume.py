"""A run killed with SIGKILL after a checkpoint resumes to the same loss curve."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ALPHA_UMI, REPO, kill_when, read_json, tiny_train_flags

STEPS, SAVE_EVERY = 12, 4


def command(out: Path) -> list[str]:
    return [
        sys.executable,
        str(REPO / "tests" / "train_probe.py"),
        *tiny_train_flags(
            ALPHA_UMI / "train-example" / "train_caller.json",
            out,
            max_steps=STEPS,
            save_strategy="steps",
            save_steps=SAVE_EVERY,
            seed=11,
        ),
    ]


def test_sigkill_then_resume_gives_the_uninterrupted_loss_curve(tmp_path: Path, shared) -> None:
    reference = tmp_path / "reference"
    done = subprocess.run(command(reference), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = read_json(reference / "train_summary.json")["loss_history"]

    out = tmp_path / "killed"
    env = {**os.environ, "PROBE_STEP_SECONDS": "0.4"}  # time to kill between checkpoints
    proc = subprocess.Popen(
        command(out),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    state = out / f"checkpoint-{SAVE_EVERY}" / "trainer_state.json"
    kill_when(proc, state.exists, delay=0.5)  # into the next step, before the next checkpoint
    assert not (out / "train_summary.json").exists()
    assert not (out / f"checkpoint-{2 * SAVE_EVERY}").exists()

    resumed = subprocess.run(command(out), cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr and f"checkpoint-{SAVE_EVERY}" in resumed.stderr
    summary = read_json(out / "train_summary.json")
    assert summary["resumed_from"].endswith(f"checkpoint-{SAVE_EVERY}")
    assert summary["loss_history"]["steps"] == expected["steps"] == list(range(1, STEPS + 1))
    for got, want in zip(summary["loss_history"]["loss"], expected["loss"], strict=True):
        assert abs(got - want) <= 1e-4 * abs(want), (summary["loss_history"], expected)
