"""The tools a server knows: each API's documentation and response schema, found by the names
ToolBench's and StableToolBench's clients send.

APIs come from test-instruction query files (each query's ``api_list``, with its
``template_response``) and from ToolBench tool folders (``toolenv/tools/<category>/<tool>.json``;
response schemas from the sibling ``response_examples`` folder where it exists). They are keyed
on the standardized category, tool and API names (:mod:`process_data.protocol`), so ``"TheClique"``,
``"theclique"`` and StableToolBench's ``"theclique_for_Data"`` find the same tool.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from process_data.protocol import api_name_of, category_name_of, standardize

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ApiKey:
    """Standardized names: the cache key's first three parts and the STB cache's folders."""

    category: str
    tool: str
    api: str

    def __str__(self) -> str:
        return f"{self.category}/{self.tool}/{self.api}"


@dataclass
class ApiSpec:
    """One API as its documentation describes it (names as written there)."""

    category: str
    tool_name: str
    api_name: str
    description: str = ""
    tool_description: str = ""
    required_parameters: list = field(default_factory=list)
    optional_parameters: list = field(default_factory=list)
    method: str = ""
    template_response: Any = (
        None  # ToolBench's schema: {"key": "str", "list": [{..., "_list_length": 2}]}
    )

    @property
    def key(self) -> ApiKey:
        return ApiKey(
            category_name_of(self.category), standardize(self.tool_name), api_name_of(self.api_name)
        )

    def doc(self) -> dict:
        """The documentation a simulator reads."""
        return {
            "tool_name": self.tool_name,
            "tool_description": self.tool_description,
            "api_name": self.api_name,
            "api_description": self.description,
            "method": self.method,
            "required_parameters": self.required_parameters,
            "optional_parameters": self.optional_parameters,
            "template_response": self.template_response,
        }


class ToolSourceError(ValueError):
    """A query file or tool file that cannot be read; the message names the file and record."""


@dataclass
class LoadReport:
    """What loading read: every API entry is either an API, a duplicate or a reject."""

    files: int = 0
    entries: int = 0
    apis: int = 0
    duplicates: int = 0
    rejects: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.files} files, {self.entries} API entries: {self.apis} APIs, "
            f"{self.duplicates} duplicates, {len(self.rejects)} rejected"
        )


class ToolRegistry:
    """APIs by standardized names; :meth:`find` resolves the names a client sends."""

    def __init__(self) -> None:
        self._apis: dict[ApiKey, ApiSpec] = {}
        self._tools: dict[tuple[str, str], list[ApiKey]] = {}  # (category, tool) → APIs
        self._by_tool: dict[str, set[str]] = {}  # tool → categories
        self.report = LoadReport()

    def __len__(self) -> int:
        return len(self._apis)

    @property
    def tools(self) -> int:
        return len(self._tools)

    def add(self, spec: ApiSpec) -> bool:
        """Add ``spec``; False if an API of the same names is already there (the first stays)."""
        key = spec.key
        if key in self._apis:
            return False
        self._apis[key] = spec
        self._tools.setdefault((key.category, key.tool), []).append(key)
        self._by_tool.setdefault(key.tool, set()).add(key.category)
        return True

    def get(self, key: ApiKey) -> ApiSpec | None:
        return self._apis.get(key)

    def resolve(self, category: str, tool_name: str, api_name: str) -> ApiKey | str:
        """The key of the API a client names, or the reason there is none (an error text).

        Clients send ToolBench's standardized tool name, its raw name, or StableToolBench's
        ``<tool>_for_<category>``; the API's raw or standardized name, or ``<api>_for_<tool>``.
        A category that does not hold the tool is looked past when the tool is in one only.
        """
        cat = category_name_of(category)
        tool = standardize(tool_name)
        suffix = f"_for_{standardize(cat)}"
        if tool not in self._by_tool and tool.endswith(suffix):
            tool = tool.removesuffix(suffix)
        categories = self._by_tool.get(tool)
        if not categories:
            return f"No such tool: {tool_name!r} (category {category!r})"
        if cat not in categories:
            if len(categories) > 1:
                return f"Tool {tool_name!r} is not in category {category!r}"
            cat = next(iter(categories))
        api = api_name_of(api_name).split(f"_for_{tool}")[0]
        key = ApiKey(cat, tool, api)
        if key not in self._apis:
            return f"No such API: {api_name!r} of tool {tool_name!r}"
        return key

    # -- loading --------------------------------------------------------------------------

    def load_queries(self, path: str | Path) -> LoadReport:
        """Add the APIs of every query in a test-instruction file, or in every ``*.json`` of
        a folder."""
        for file in _json_files(path):
            queries = _read_json(file)
            if not isinstance(queries, list):
                raise ToolSourceError(f"{file}: expected a JSON array of queries")
            self.report.files += 1
            for i, query in enumerate(queries):
                apis = query.get("api_list") if isinstance(query, dict) else None
                if not isinstance(apis, list):
                    self.report.rejects.append(f"{file}: query {i}: no api_list")
                    continue
                for j, entry in enumerate(apis):
                    self._add_entry(f"{file}: query {i}: api_list[{j}]", _query_api(entry))
        return self.report

    def load_tools_dir(self, path: str | Path) -> LoadReport:
        """Add every API of ToolBench's ``toolenv/tools/<category>/<tool>.json`` files; a
        ``response_examples`` folder beside ``path`` gives their response schemas."""
        root = Path(path)
        if not root.is_dir():
            raise ToolSourceError(f"{root}: not a folder (expected toolenv/tools)")
        schemas_root = root.parent / "response_examples"
        for file in sorted(root.glob("*/*.json")):
            tool = _read_json(file)
            if not isinstance(tool, dict) or not isinstance(tool.get("api_list"), list):
                self.report.rejects.append(f"{file}: not a tool file (no api_list)")
                continue
            self.report.files += 1
            schemas = _schemas(schemas_root / file.parent.name / file.name)
            for j, api in enumerate(tool["api_list"]):
                where = f"{file}: api_list[{j}]"
                self._add_entry(where, _tool_api(file.parent.name, tool, api, schemas))
        return self.report

    def _add_entry(self, where: str, spec: ApiSpec | str) -> None:
        self.report.entries += 1
        if isinstance(spec, str):
            self.report.rejects.append(f"{where}: {spec}")
        elif self.add(spec):
            self.report.apis += 1
        else:
            self.report.duplicates += 1


def _json_files(path: str | Path) -> Iterator[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise ToolSourceError(f"{path}: no .json query files in this folder")
        yield from files
    elif path.is_file():
        yield path
    else:
        raise ToolSourceError(f"{path}: no such file or folder")


def _read_json(file: Path) -> Any:
    try:
        with open(file, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ToolSourceError(f"{file}: cannot read JSON: {exc}") from exc


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _params(value: Any) -> list:
    return value if isinstance(value, list) else []


def _query_api(entry: Any) -> ApiSpec | str:
    if not isinstance(entry, dict):
        return "not an object"
    missing = [k for k in ("category_name", "tool_name", "api_name") if not _text(entry.get(k))]
    if missing:
        return f"missing {', '.join(missing)}"
    return ApiSpec(
        category=entry["category_name"],
        tool_name=entry["tool_name"],
        api_name=entry["api_name"],
        description=_text(entry.get("api_description")),
        required_parameters=_params(entry.get("required_parameters")),
        optional_parameters=_params(entry.get("optional_parameters")),
        method=_text(entry.get("method")),
        template_response=entry.get("template_response"),
    )


def _schemas(file: Path) -> dict[str, Any]:
    """API name → response schema, from a ``response_examples`` tool file (if any)."""
    if not file.is_file():
        return {}
    try:
        listed = _read_json(file).get("api_list") or []
    except (ToolSourceError, AttributeError) as exc:
        log.warning("ignoring response schemas of %s: %s", file, exc)
        return {}
    return {
        api_name_of(item["name"]): item.get("schema")
        for item in listed
        if isinstance(item, dict) and _text(item.get("name"))
    }


def _tool_api(category: str, tool: dict, api: Any, schemas: dict[str, Any]) -> ApiSpec | str:
    if not isinstance(api, dict) or not _text(api.get("name")):
        return "an API without a name"
    tool_name = _text(tool.get("tool_name")) or _text(tool.get("standardized_name"))
    if not tool_name:
        return "the tool file has no tool_name"
    return ApiSpec(
        category=category,
        tool_name=tool_name,
        api_name=api["name"],
        description=_text(api.get("description")),
        tool_description=_text(tool.get("tool_description")),
        required_parameters=_params(api.get("required_parameters")),
        optional_parameters=_params(api.get("optional_parameters")),
        method=_text(api.get("method")),
        template_response=api.get("template_response", schemas.get(api_name_of(api["name"]))),
    )


def load_registry(
    queries: Iterable[str | Path] = (), tools_dirs: Iterable[str | Path] = ()
) -> ToolRegistry:
    """A registry of the APIs of these query files or folders and tool folders."""
    registry = ToolRegistry()
    for path in queries:
        registry.load_queries(path)
    for path in tools_dirs:
        registry.load_tools_dir(path)
    return registry
