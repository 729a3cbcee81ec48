"""The arrows between modules point one way: no import cycle anywhere, the layers import only
downwards (process_data ← GLPFT ← inference_utils), the task-graph executor knows no client,
and no module imports a command (a console script's module) but its own ``__main__``.

The graph is read from the sources (``ast``), imports inside functions included, so a cycle
hidden behind a late import is found too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tomllib
from conftest import REPO

from process_data import protocol

PACKAGES = ("process_data", "GLPFT", "inference_utils")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def import_graph() -> dict[str, set[str]]:
    """Each module's imports of the project's own modules."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:  # `from package import module` names a module
                    full = f"{module}.{alias.name}"
                    found.add(full if full in known else module)
        graph[name] = {m for m in found if m in known and m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return path[path.index(child) :] + [child]
            if child not in state and (cycle := visit(child)) is not None:
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_import_only_downwards() -> None:
    """Data processing imports neither training nor inference; training imports no
    inference; the executor imports nothing of inference (its calls come as functions);
    clients of models import no data-format module; the agent no tool-server internals."""
    forbidden = {
        "process_data": ("GLPFT", "inference_utils"),
        "GLPFT": ("inference_utils",),
        "inference_utils.dag": ("inference_utils",),
        "inference_utils.endpoints": ("process_data.toolbench", "inference_utils.toolbench"),
        "inference_utils.generation": ("inference_utils.endpoints", "process_data.toolbench"),
        "inference_utils.agent": ("inference_utils.toolserver",),
        "inference_utils.static": ("inference_utils.toolserver", "inference_utils.agent"),
        "inference_utils.driver": ("inference_utils.agent", "inference_utils.static"),
    }
    wrong = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for layer, banned in forbidden.items()
        if module == layer or module.startswith(layer + ".")
        for target in targets
        if any(target == b or target.startswith(b + ".") for b in banned)
    ]
    assert not wrong, "imports against the layers: " + ", ".join(wrong)


#: The earlier paths of the commands: each imports its command, and nothing else does.
OLD_PATHS = {
    "inference_utils.toolbench.infer_pipeline": "inference_utils.static.infer",
    "inference_utils.toolbench.evaluate": "inference_utils.static.evaluate",
    "inference_utils.toolbench.run_agent": "inference_utils.agent.run",
}


def test_the_earlier_command_paths_run_their_commands() -> None:
    """``python -m inference_utils.toolbench.<command>`` (the paths of earlier releases, in
    users' scripts) runs the command: its help is the command's."""
    for old, new in OLD_PATHS.items():
        helps = [
            subprocess.run(
                [sys.executable, "-m", module, "--help"],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=REPO,
                check=True,
            ).stdout
            for module in (old, new)
        ]
        assert helps[0] == helps[1] and "usage:" in helps[0], old


def test_no_module_imports_a_command() -> None:
    """What two commands share lives in a module of its own (the role flags, ToolEval's
    answer status), not in one of the commands. The earlier command paths in
    ``inference_utils.toolbench`` import only their command."""
    with open(REPO / "pyproject.toml", "rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"].values()
    commands = {target.split(":")[0] for target in scripts}
    wrong = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets & commands
        if module != target.rsplit(".", 1)[0] + ".__main__"
        and module != target + ".__main__"
        and OLD_PATHS.get(module) != target
    ]
    assert not wrong, "modules that import a command: " + ", ".join(wrong)


# -- one source of truth: the protocol's words live in the protocol module ---------------------

#: Exact strings that only the protocol module may spell (each has a constant there).
PROTOCOL_WORDS = {
    protocol.FINISH,
    protocol.GIVE_ANSWER,
    protocol.GIVE_UP,
    protocol.GIVE_UP_AND_RESTART,
    protocol.PLACEHOLDER,
    protocol.HALLUCINATED_NAME,
    protocol.THOUGHT_NODE,
    protocol.ACTION_NODE,
    protocol.ACTION_INPUT_NODE,
    protocol.MODEL_INPUT_PREFIX,
    protocol.BACKBONE_GIVE_UP,
}
#: Markers that no string outside it may even contain.
PROTOCOL_MARKERS = (
    *protocol.NEXT_MARKERS.values(),
    protocol.ACTION_KEY,
    protocol.ACTION_INPUT_KEY,
    protocol.TURN_END,
    f"'name': '{protocol.FINISH}'",
    *(f'"{kind}"' for kind in (protocol.GIVE_ANSWER, protocol.GIVE_UP_AND_RESTART)),
)
#: Spellings that mean something else where they stand.
ALLOWED = {
    ("inference_utils/tooleval/answer_status.py", "none"): "the --compat flag's value",
}


def strings(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module (f-string parts too), docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
    ]


def role_lists(path: Path) -> list[int]:
    """Lines with a tuple, list or set literal of two or more role names: a role list that
    should be the protocol's ``ROLES`` or ``MULTI_ROLES``."""
    roles = set(protocol.ROLES)
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Tuple | ast.List | ast.Set)
        and sum(isinstance(e, ast.Constant) and e.value in roles for e in node.elts) >= 2
    ]


def test_the_protocol_words_are_spelled_only_in_the_protocol_module() -> None:
    leaks = []
    for path in modules().values():
        rel = path.relative_to(REPO).as_posix()
        if rel == "process_data/protocol.py":
            continue
        for line, text in strings(path):
            if text in PROTOCOL_WORDS and (rel, text) not in ALLOWED:
                leaks.append(f"{rel}:{line}: {text!r}")
            leaks += [f"{rel}:{line}: {m!r} in a string" for m in PROTOCOL_MARKERS if m in text]
        leaks += [f"{rel}:{line}: a list of roles" for line in role_lists(path)]
    assert not leaks, "spell these with process_data.protocol's constants:\n" + "\n".join(leaks)
