"""Same output for any worker count; a killed run leaves nothing that looks complete."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TOOLBENCH_EXAMPLE, kill_when, read_json


def replicate(dest: Path, copies: int) -> int:
    """``copies`` × the 15 real answers, each under a new query id, in ToolBench's layout."""
    sources = sorted(TOOLBENCH_EXAMPLE.glob("answer/*/*.json"))
    for k in range(copies):
        for j, src in enumerate(sources):
            target = dest / "answer" / src.parent.name / f"{k * 100 + j}_ChatGPT_DFS.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, target) if k else shutil.copy(src, target)
    return copies * len(sources)


def same_tree(a: Path, b: Path, ignore=("summary.json",)) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        if rel.name not in ignore:
            assert filecmp.cmp(a / rel, b / rel, shallow=False), rel


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "process_data.toolbench", *args]


@pytest.mark.parametrize("fmt", ["alpha_umi", "chat"])
def test_same_output_for_any_worker_count(tmp_path: Path, fmt: str, shared) -> None:
    data = tmp_path / "data"
    replicate(data, 4)
    outs = []
    for workers in (1, 2, 3):
        out = tmp_path / f"w{workers}"
        proc = subprocess.run(
            cli(
                "all",
                "--data_dir",
                str(data),
                "--output_dir",
                str(out),
                "--format",
                fmt,
                "--num_workers",
                str(workers),
            ),
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 3, proc.stderr
        outs.append(out)
    for out in outs[1:]:
        same_tree(outs[0], out)
    summaries = [read_json(o / "summary.json") for o in outs]
    assert len({s["kept"] for s in summaries}) == 1


def test_kill_then_rerun_gives_the_same_output(tmp_path: Path, shared) -> None:
    data = tmp_path / "data"
    n = replicate(data, 80)
    reference = tmp_path / "reference"
    args = ["all", "--data_dir", str(data), "--num_workers", "2"]
    done = subprocess.run(
        cli(*args, "--output_dir", str(reference)), cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == 3, done.stderr
    assert read_json(reference / "summary.json")["read"] == n

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        cli(*args, "--output_dir", str(out)),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    partial = out / "train_backbone.json.partial"
    kill_when(proc, lambda: partial.exists() and partial.stat().st_size > 200_000)
    # nothing under a final name: no summary, no role file, no stage file
    finals = [p for p in out.rglob("*") if p.is_file() and ".partial" not in str(p)]
    assert finals == []
    assert partial.exists()

    rerun = subprocess.run(
        cli(*args, "--output_dir", str(out)), cwd=REPO, capture_output=True, text=True
    )
    assert rerun.returncode == 3, rerun.stderr
    assert not list(out.rglob("*.partial*"))  # the killed run's leftovers are gone too
    same_tree(reference, out)


def test_killed_rerun_over_a_finished_folder_is_not_marked_complete(tmp_path: Path, shared) -> None:
    data = tmp_path / "data"
    replicate(data, 40)
    out = tmp_path / "out"
    args = cli("all", "--data_dir", str(data), "--output_dir", str(out))
    assert subprocess.run(args, cwd=REPO, capture_output=True).returncode == 3
    before = (out / "train_planner.json").read_bytes()
    proc = subprocess.Popen(
        args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    partial = out / "train_planner.json.partial"
    kill_when(proc, partial.exists)
    assert not (out / "summary.json").exists()  # the folder no longer claims to be finished
    assert (out / "train_planner.json").read_bytes() == before  # never half-overwritten
