"""Servers that the tests start, watched: a test that fails while one of them lies dead is
told so first, with the server's exit status or signal and the end of its log, instead of
only ``Connection refused``. ``conftest`` registers the hook; a pytest run of its own loads it
with ``-p servers``."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import pytest

from inference_utils.server_process import ServerProcess


def start_server(
    cmd: list[str], ready_url: str, log: Path, timeout: float = 120, **popen: object
) -> ServerProcess:
    """Start a server process (output to ``log``) and wait until ``ready_url`` answers 200;
    fail with how it died and the end of its log if it exits, or if it does not answer within
    ``timeout`` s. While it runs, a failing test is told if it has died (see ``watch``)."""
    name = next((part for part in cmd[1:] if not part.startswith("-")), cmd[0])
    return watch(ServerProcess(name, cmd, ready_url, log, **popen)).start(timeout)


def stop_server(server: ServerProcess) -> None:
    server.stop()


class Watched(Protocol):
    def death(self) -> str | None: ...


WATCHED: list[Watched] = []  # the servers the tests started, asked after each failure


def watch(server: Watched) -> Watched:
    """Name ``server`` in the report of any test that fails while it lies dead."""
    WATCHED.append(server)
    return server


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A test that fails while a server it may use lies dead says so first: the server's
    exit status or signal and the end of its log, before the request's own error (typically
    ``Connection refused``)."""
    report = yield
    if report.failed:
        WATCHED[:] = [s for s in WATCHED if not getattr(s, "expected_end", False)]
        deaths = [message for server in WATCHED if (message := server.death())]
        if deaths:
            report.longrepr = (
                "A SERVER DIED: "
                + "\n\nA SERVER DIED: ".join(deaths)
                + "\n\nThe test's own error follows.\n\n"
                + str(report.longrepr)
            )
    return report
