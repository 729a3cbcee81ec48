"""A server that dies is named as dead, with its signal and the end of its log: in setup's
llama.cpp check, in ``ServerProcess`` and in the report of a test that fails while a server it
uses lies dead (instead of only ``Connection refused``); and a test that hangs fails."""

from __future__ import annotations

import importlib.util
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO, free_port

from GLPFT.models import gguf_path
from inference_utils.server_process import ServerDied, ServerProcess
from process_data.exits import describe_exit

pytest_plugins = ["pytester"]


def load_installer():
    spec = importlib.util.spec_from_file_location(
        "install_llama_cpp", REPO / "scripts" / "install_llama_cpp.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_describe_exit_names_the_signal_and_its_likely_cause() -> None:
    assert describe_exit(3) == "exited with status 3"
    message = describe_exit(-signal.SIGILL)
    assert message.startswith("was killed by SIGILL (Illegal instruction; likely cause:")
    assert "AMX" in message and "rebuild portably" in message
    assert "out-of-memory" in describe_exit(-signal.SIGKILL)
    assert describe_exit(-signal.SIGUSR1).startswith("was killed by SIGUSR1 (User defined")


def test_a_server_that_dies_while_starting_says_how(tmp_path: Path) -> None:
    crash = "print('loading the model', flush=True); import os; os.kill(os.getpid(), 4)"
    server = ServerProcess(
        "crasher", [sys.executable, "-c", crash], "http://127.0.0.1:9/", tmp_path / "log"
    )
    start = time.monotonic()
    with pytest.raises(ServerDied) as err:
        server.start(timeout=60)
    assert time.monotonic() - start < 30
    message = str(err.value)
    assert f"crasher (pid {server.pid}) was killed by SIGILL" in message
    assert message.rstrip().endswith("loading the model")


def test_a_stopped_or_killed_server_is_not_a_death(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    for end in ("stop", "kill"):
        server = ServerProcess("http.server", cmd, f"http://127.0.0.1:{port}/", tmp_path / "log")
        with server:
            assert server.death() is None
            getattr(server, end)()
            assert server.death() is None
            server.check_alive()


INNER_TEST = """
import os, signal, sys
from pathlib import Path
import httpx
from servers import start_server

def test_a_request_to_a_server_that_died(tmp_path: Path) -> None:
    port = int(os.environ["INNER_PORT"])
    cmd = [sys.executable, "-u", "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    server = start_server(cmd, f"http://127.0.0.1:{port}/", tmp_path / "server.log")
    os.kill(server.pid, signal.SIGILL)
    server.proc.wait()
    httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
"""


def test_a_failing_test_names_the_server_that_died(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inner test's request fails with ``ConnectError``; its report says first that the
    server was killed by SIGILL, with the end of the server's log."""
    pytester.makepyfile(test_inner=textwrap.dedent(INNER_TEST))
    monkeypatch.setenv("INNER_PORT", str(free_port()))
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"), prepend=":")
    result = pytester.runpytest_subprocess("-p", "servers", "-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    died = out.index("A SERVER DIED: http.server (pid ")
    assert "was killed by SIGILL (Illegal instruction; likely cause:" in out[died:]
    assert "Serving HTTP on 127.0.0.1" in out[died:], "the end of the server's log"
    assert out.index("ConnectError") > died, "the request's own error comes after"


def test_setup_check_runs_a_completion_with_the_default_gguf() -> None:
    installer = load_installer()
    assert installer.completion_fails(gguf_path()) is None


def test_setup_check_says_how_a_crashing_build_died() -> None:
    installer = load_installer()
    crash = "import os, signal; print('ggml_backend_amx_mul_mat'); os.kill(os.getpid(), 4)"
    message = installer.completion_fails(gguf_path(), check=crash)
    assert message.startswith("was killed by SIGILL (Illegal instruction; likely cause:")
    hang = "import time; time.sleep(60)"
    assert installer.completion_fails(gguf_path(), check=hang, timeout=1) == (
        "did not finish in 1 s"
    )


def test_setup_builds_are_keyed_by_flags_and_pinned_in_their_own_file() -> None:
    installer = load_installer()
    extras, version = installer.pinned()
    assert extras == "[server]" and version
    portable = installer.PORTABLE
    assert "-DGGML_NATIVE=OFF" in portable and "AMX" not in portable.replace("=OFF", "")
    assert installer.cache_key(version, portable) != installer.cache_key(
        version, "-DGGML_NATIVE=ON"
    )
    dev = (REPO / "requirements-dev.txt").read_text(encoding="utf-8")
    assert not any(line.startswith("llama-cpp-python") for line in dev.splitlines()), (
        "pip install -r requirements-dev.txt would build llama.cpp natively"
    )


def test_a_hanging_test_fails_at_the_suite_time_limit(
    pytester: pytest.Pytester, pytestconfig: pytest.Config
) -> None:
    """pytest-timeout gives every test a default limit (pyproject.toml), so a hang fails its
    test, with the stacks, instead of holding the suite."""
    assert float(pytestconfig.getini("timeout")) > 0
    pytester.makepyfile(test_hang="import time\n\ndef test_hangs():\n    time.sleep(120)\n")
    start = time.monotonic()
    result = pytester.runpytest_subprocess("-o", "timeout=2", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "Timeout" in result.stdout.str()
    assert time.monotonic() - start < 60
