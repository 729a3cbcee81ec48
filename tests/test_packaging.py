"""The package installs as it is used: its declared dependencies cover the pinned environment,
and every command exists as a console script that runs.

The installed distribution's metadata is what ``pip install .`` acts on; a wheel built from the
current sources shows that the installed metadata is not stale.
"""

from __future__ import annotations

import configparser
import importlib.util
import inspect
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib.metadata import distribution
from pathlib import Path

import pytest
from conftest import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

DIST = distribution("umikit")
SCRIPTS = {ep.name: ep for ep in DIST.entry_points if ep.group == "console_scripts"}
PACKAGES = {"process_data", "GLPFT", "inference_utils"}


def declared(requires: list[str], extra: str | None) -> dict[str, Requirement]:
    """The requirements of ``extra`` (``None``: the runtime ones) by canonical name."""
    reqs = [Requirement(r) for r in requires]
    if extra is None:
        chosen = [r for r in reqs if r.marker is None]
    else:
        chosen = [r for r in reqs if r.marker is not None and r.marker.evaluate({"extra": extra})]
    return {canonicalize_name(r.name): r for r in chosen}


def pins(path: Path) -> list[Requirement]:
    """The ``name==version`` lines of a requirements file (``-r`` includes are skipped)."""
    lines = (line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


@pytest.mark.parametrize(
    ("requirements", "extra"),
    [("requirements.txt", None), ("requirements-dev.txt+requirements-llama.txt", "dev")],
)
def test_declared_dependencies_admit_the_pins(requirements: str, extra: str | None) -> None:
    """``pip install .`` asks for what setup.sh pins, in ranges that hold the pinned versions
    (the dev pins include llama-cpp-python's, which setup builds portably from its own file)."""
    wanted = declared(DIST.requires or [], extra)
    pinned = [pin for name in requirements.split("+") for pin in pins(REPO / name)]
    assert pinned, f"{requirements} lists no pins"
    for pin in pinned:
        name = canonicalize_name(pin.name)
        assert name in wanted, f"{requirements}: {pin} is not declared in pyproject.toml"
        (version,) = (s.version for s in pin.specifier if s.operator == "==")
        assert wanted[name].specifier.contains(version), (
            f"pyproject.toml asks for {wanted[name]}, which excludes the pin {pin}"
        )
        assert wanted[name].extras == pin.extras, f"{pin}: extras differ from {wanted[name]}"
    unpinned = set(wanted) - {canonicalize_name(p.name) for p in pinned}
    assert not unpinned, f"declared in pyproject.toml but not pinned in {requirements}: {unpinned}"


def test_console_scripts_resolve() -> None:
    """Each command's ``main`` takes ``argv`` (``None``: the command line) and returns the exit
    code; ``python -m`` runs the same module."""
    assert {"umi-process-data", "umi-train", "umi-infer", "umi-evaluate"} <= set(SCRIPTS)
    for name, ep in SCRIPTS.items():
        assert name.startswith("umi-"), f"{name}: commands are named umi-<what it does>"
        main = ep.load()
        signature = inspect.signature(main)
        assert list(signature.parameters) == ["argv"], f"{name}: {ep.value}{signature}"
        assert signature.parameters["argv"].default is None, f"{name}: argv must default to None"
        assert signature.return_annotation in (int, "int"), f"{name}: main must return an int"
        module = ep.module.removesuffix(".cli")
        if module != ep.module:  # a package whose cli runs as its __main__
            module += ".__main__"
        source = Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8")
        assert "sys.exit(main())" in source, f"python -m {module} drops {name}'s exit code"


def test_console_scripts_run_help() -> None:
    """Each command in the environment's bin folder starts, parses ``--help`` and exits 0."""
    bin_dir = Path(sys.executable).parent
    procs = {}
    for name in SCRIPTS:
        exe = bin_dir / name
        assert exe.is_file(), f"{exe} is missing: run scripts/setup.sh"
        procs[name] = subprocess.Popen(
            [str(exe), "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            pytest.fail(f"{name} --help did not finish in 120 s")
        assert proc.returncode == 0, f"{name} --help exited {proc.returncode}:\n{out}"
        assert "usage:" in out, f"{name} --help printed no usage:\n{out}"


def test_wheel_metadata(tmp_path: Path) -> None:
    """A wheel built from the sources holds the three packages and the installed metadata's
    dependencies and commands (else the environment is stale: run scripts/setup.sh)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in PACKAGES:
        shutil.copytree(REPO / package, src / package, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    cmd += ["--no-index", "--disable-pip-version-check", "-q", "-w", str(tmp_path), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("umikit-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        info = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(zf.read(info).decode())
        entry_points = zf.read(info.replace("METADATA", "entry_points.txt")).decode()
        top = {n.split("/")[0] for n in zf.namelist() if n.endswith(".py")}
        data = {n for n in zf.namelist() if not n.endswith(".py") and ".dist-info/" not in n}
    assert top == PACKAGES
    prompts = {"toolserver/simulator_prompt.yaml", "tooleval/judge_prompts.yaml"}
    configs = "agent/llmcompiler_configs"
    prompts |= {f"{configs}/README.md", f"{configs}/custom/queries.json"}
    prompts |= {f"{configs}/{name}/config.yaml" for name in ("toolbench", "custom")}
    assert data == {f"inference_utils/{p}" for p in prompts}, "package data"
    requires = metadata.get_all("Requires-Dist")
    assert sorted(map(str, map(Requirement, requires))) == sorted(
        map(str, map(Requirement, DIST.requires or []))
    ), "the installed package is stale: run scripts/setup.sh"
    assert declared(requires, None), "the wheel declares no runtime dependencies"
    assert metadata.get_all("Provides-Extra") == DIST.metadata.get_all("Provides-Extra")
    parser = configparser.ConfigParser()
    parser.optionxform = str  # command names keep their case
    parser.read_string(entry_points)
    assert dict(parser["console_scripts"]) == {n: ep.value for n, ep in SCRIPTS.items()}
