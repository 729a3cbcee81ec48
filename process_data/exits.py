"""How a child process ended, in words: its exit status, or the signal that killed it and
what that signal most often means. Setup's llama.cpp check, the bf16 probe of training and the
servers that tests and the demo start all report deaths this way."""

from __future__ import annotations

import signal

# What a signal most often means for a process on a CPU machine.
LIKELY_CAUSE = {
    signal.SIGILL: (
        "the native code uses an instruction this CPU or VM does not run (a build made for "
        "another machine, or AMX kernels on a VM that does not enable AMX): rebuild portably"
    ),
    signal.SIGKILL: "killed from outside: the out-of-memory killer, or another process",
    signal.SIGSEGV: "a crash in native code",
    signal.SIGBUS: "a crash in native code (a bad memory access, or a truncated mapped file)",
    signal.SIGABRT: "aborted by the program itself (an assertion or an uncaught C++ exception)",
}


def describe_exit(returncode: int) -> str:
    """``"exited with status 1"`` or ``"was killed by SIGILL (Illegal instruction; likely
    cause: ...)"`` for a ``subprocess`` return code (negative: the signal that ended it)."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    sig = signal.Signals(-returncode)
    cause = LIKELY_CAUSE.get(sig)
    detail = signal.strsignal(sig) + (f"; likely cause: {cause}" if cause else "")
    return f"was killed by {sig.name} ({detail})"
