"""Stage 1: a ToolBench answer file → ``{tools, instruction, chains}``.

The tool conversion follows α-UMi's ``prepro_raw_stage_1.py``: names keep their last 64
characters, descriptions their first 256, argument descriptions their last 256, and each
argument becomes ``"<type>, <description>"``. The chain is the last (complete) list of
``answer_generation.train_messages``. DFS files and CoT files (``trys``) store it the same way.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from process_data.protocol import FINISH
from process_data.toolbench.records import RecordError, require, require_str

_GROUP_RE = re.compile(r"^(G\d+)(?:_|$)")


@dataclass(frozen=True, slots=True)
class AnswerFile:
    """An answer file and what its path says: the group (``G1``...) and the query id."""

    path: str
    group: str | None
    query_id: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def _natural_key(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _group_of(folder: Path, root: Path) -> str | None:
    """The group named by the nearest folder such as ``G1_answer`` or ``G1_instruction``."""
    for part in reversed(folder.relative_to(root).parts):
        match = _GROUP_RE.match(part)
        if match:
            return sys.intern(match.group(1))
    return None


def find_answer_files(
    data_dir: str | None = None, answer_dir: str | None = None
) -> list[AnswerFile]:
    """List answer files in a deterministic order (group, then query id, then name).

    ``data_dir`` is ToolBench's data folder (``answer/G*_answer/*.json``); ``answer_dir`` is any
    folder of answer files, searched recursively (for example StableToolBench's
    ``answer/<model>/<group>/``).
    """
    if (data_dir is None) == (answer_dir is None):
        raise ValueError("give exactly one of data_dir and answer_dir")
    if data_dir is not None:
        root = Path(data_dir) / "answer"
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no answer folder (expected answer/G*_answer/)")
        folders = [str(d) for d in sorted(root.glob("G*_answer")) if d.is_dir()]
        recursive = False
    else:
        root = Path(answer_dir)  # type: ignore[arg-type]
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: not a folder")
        folders, recursive = [str(root)], True
    files = list(_scan(folders, str(root), recursive))
    files.sort(
        key=lambda f: (_natural_key(f.group or ""), _natural_key(f.query_id), _natural_key(f.path))
    )
    return files


def _scan(folders: list[str], root: str, recursive: bool) -> Iterable[AnswerFile]:
    """Answer files under ``folders``, with few objects per file (lists can be long)."""
    while folders:
        folder = folders.pop()
        group = _group_of(Path(folder), Path(root)) if recursive else _group_of_folder(folder)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir() and recursive:
                    folders.append(entry.path)
                elif entry.name.endswith(".json") and entry.is_file():
                    yield AnswerFile(entry.path, group, entry.name.split("_")[0])


def _group_of_folder(folder: str) -> str | None:
    match = _GROUP_RE.match(os.path.basename(folder))
    return sys.intern(match.group(1)) if match else None


def load_test_ids(test_ids_dir: str | os.PathLike[str]) -> dict[str, set[str]]:
    """Test query ids per group, from ``<group>_<set>.json`` files (ToolBench's layout)."""
    ids: dict[str, set[str]] = {}
    folder = Path(test_ids_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: test id folder not found")
    for path in sorted(folder.glob("*.json")):
        match = _GROUP_RE.match(path.stem)
        if not match:
            continue
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if isinstance(data, dict):
            values: Iterable = data.keys()
        elif isinstance(data, list):
            values = data
        else:
            raise ValueError(f"{path}: expected a JSON object or list of query ids")
        ids.setdefault(match.group(1), set()).update(str(v) for v in values)
    return ids


def excluded_by(answer: AnswerFile, test_ids: dict[str, set[str]], per_group: bool) -> bool:
    """Whether the answer's query id is a test id.

    α-UMi checks every group's ids against every group's answers, so G2 query 10 is dropped
    because G1 has a test query 10. ``per_group=True`` compares ids within the group only.
    """
    if per_group and answer.group is not None:
        return answer.query_id in test_ids.get(answer.group, ())
    return any(answer.query_id in ids for ids in test_ids.values())


def read_answer(path: str) -> dict:
    """Read one answer file; any problem becomes a :class:`RecordError` with the reason."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RecordError(f"cannot read file ({exc.strerror})") from exc
    try:
        data = orjson.loads(raw)  # 2-3x faster than json; same objects for valid JSON
    except orjson.JSONDecodeError:
        data = _loads_or_explain(raw)  # json's own rules (NaN, huge ints) and error messages
    require(isinstance(data, dict), f"top level is {type(data).__name__}, expected an object")
    return data


def _loads_or_explain(raw: bytes) -> object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(f"not UTF-8 (byte {exc.start})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"invalid JSON: {exc.msg} at line {exc.lineno} col {exc.colno}") from exc
    return data


def convert_tool(tool: dict) -> dict:
    """One ToolBench function schema in α-UMi's ``{Name, function, input}`` form."""
    require(isinstance(tool, dict), "a function entry is not an object")
    name = require_str(tool.get("name"), "function name")
    description = require_str(tool.get("description"), f"description of {name}")
    params = tool.get("parameters")
    require(isinstance(params, dict), f"parameters of {name} is not an object")
    properties = params.get("properties")
    require(isinstance(properties, dict), f"parameters.properties of {name} is not an object")
    inputs = {}
    for arg, spec in properties.items():
        require(isinstance(spec, dict), f"argument {arg} of {name} is not an object")
        arg_type = require_str(spec.get("type"), f"type of argument {arg} of {name}")
        if "description" in spec:
            desc = require_str(spec["description"], f"description of argument {arg} of {name}")
            inputs[arg] = arg_type + ", " + desc[-256:]
        else:
            inputs[arg] = arg_type
    return {"Name": name[-64:], "function": description[:256], "input": inputs}


def to_stage1(answer: dict, compat: bool) -> dict:
    """Convert a parsed answer file. Raises :class:`RecordError` for invalid answers.

    α-UMi keeps answers with ``train_messages`` whatever their ``valid_data``; by default,
    answers marked ``valid_data: false`` are rejected as well.
    """
    generation = answer.get("answer_generation")
    require(isinstance(generation, dict), "no answer_generation")
    if not compat and generation.get("valid_data") is False:
        raise RecordError("invalid answer (valid_data: false)")
    messages = generation.get("train_messages")
    require(
        messages is not None,
        "invalid answer: no train_messages "
        f"(valid_data: {json.dumps(generation.get('valid_data'))})",
    )
    require(isinstance(messages, list), "train_messages is not a list")
    require(len(messages) > 0, "invalid answer: train_messages is empty")
    chain = messages[-1]
    require(isinstance(chain, list), "the last train_messages entry is not a list")
    query = require_str(generation.get("query"), "answer_generation.query")
    functions = generation.get("function")
    require(isinstance(functions, list), "answer_generation.function is not a list")
    return {"tools": convert_tools(functions), "instruction": query, "chains": chain}


def convert_tools(functions: list) -> list[dict]:
    """A ToolBench function list in α-UMi's form, without ``Finish`` (the planner's markers
    stand for it); the agent converts the functions it is given the same way."""
    return [
        convert_tool(t) for t in functions if not (isinstance(t, dict) and t.get("name") == FINISH)
    ]
