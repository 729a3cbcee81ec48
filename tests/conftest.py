"""Shared fixtures: the real public data beside the repository, and CLI helpers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from servers import (  # noqa: F401 (the hook is registered by being here)
    pytest_runtest_makereport,
    start_server,
    stop_server,
    watch,
)

from GLPFT.models import TINY_LLAMA, gguf_path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
ALPHA_UMI = SHARED / "alpha_umi"
TOOLBENCH_EXAMPLE = SHARED / "toolbench" / "data_example"
STB_ANSWERS = SHARED / "stabletoolbench" / "data_example" / "answer"
SAMPLE = REPO / "data" / "toolbench_sample"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests read the public sample data from there")
    return SHARED


@pytest.fixture
def answers_copy(tmp_path: Path, shared: Path) -> Path:
    """A writable ToolBench data folder holding the 15 real DFS answers."""
    dest = tmp_path / "toolbench"
    shutil.copytree(TOOLBENCH_EXAMPLE / "answer", dest / "answer")
    return dest


def tiny_train_flags(data: Path, out: Path, **flags: object) -> list[str]:
    """``GLPFT.train`` flags for a short run of the tiny random LLaMA on ``data``; ``flags``
    add or override (``max_steps=8`` gives ``--max_steps 8``)."""
    merged: dict[str, object] = {
        "model_name_or_path": TINY_LLAMA,
        "data_path": data,
        "output_dir": out,
        "model_max_length": 512,
        "per_device_train_batch_size": 2,
        "learning_rate": 3e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        **flags,
    }
    return [arg for key, value in merged.items() for arg in (f"--{key}", str(value))]


def read_json(path: Path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_jsonl(path: Path) -> list:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def kill_when(
    proc: subprocess.Popen, ready: Callable[[], bool], delay: float = 0.0, timeout: float = 300
) -> None:
    """SIGKILL a run (started with ``start_new_session=True``, so its workers too) as soon as
    ``ready()`` holds, after ``delay`` seconds; fail if it ended before."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    time.sleep(delay)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory) -> str:
    """A llama.cpp OpenAI-compatible server with the default GGUF model; its API base URL."""
    log = tmp_path_factory.mktemp("llama") / "server.log"
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path())]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2"]
    url = f"http://127.0.0.1:{port}/v1"
    server = start_server(cmd, f"{url}/models", log)
    yield url
    stop_server(server)
