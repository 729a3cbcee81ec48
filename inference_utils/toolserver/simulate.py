"""Answers for calls no cache or upstream server has: an LLM's, or a deterministic offline one.

:class:`LlmSimulator` follows StableToolBench's simulation: the API's documentation, up to 5
cached examples of the same API (each cut to 2,048 characters), the call's arguments, JSON out
(``response_format`` where the endpoint takes it), temperature 0, and up to 3 tries for valid
JSON. The prompt is a YAML file with a ``system`` and a ``user`` text; ``--simulator_prompt``
loads another, so StableToolBench's or MirrorAPI's prompt can be reproduced exactly: besides
``{api_doc}``, ``{examples}`` and ``{arguments}`` (JSON), the placeholders ``{api_doc_py}``,
``{examples_py}`` and ``{arguments_py}`` render them as StableToolBench does (Python ``str()``;
the examples reduced from 5 until they fit 2,048 characters, then cut there).

:func:`offline_answer` builds an answer from the API's ``template_response`` schema and the
arguments, from a random generator seeded by the call, so the same call always gets the same
answer, on any machine. It is what tests and the demo use, and the default when no other
source is configured.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from inference_utils.backends import ModelRequest, RoleBackend
from inference_utils.endpoints import EndpointError
from process_data.protocol import json_object

from .tools import ApiSpec

DEFAULT_PROMPT = Path(__file__).with_name("simulator_prompt.yaml")
EXAMPLES, EXAMPLE_CHARS, TRIES = 5, 2048, 3
_PLACEHOLDER = re.compile(r"\{(api_doc|examples|arguments)(_py)?\}")


class SimulationError(RuntimeError):
    """The simulator gave no usable answer (endpoint down, or no valid JSON in 3 tries)."""


@dataclass(frozen=True)
class SimulatorPrompt:
    system: str
    user: str

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PROMPT) -> SimulatorPrompt:
        try:
            with open(path, encoding="utf-8") as fh:
                data = yaml.safe_load(fh)
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the simulator prompt: {exc}") from exc
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), str) for k in ("system", "user")
        ):
            raise ValueError(f"{path}: expected a mapping with text fields 'system' and 'user'")
        return cls(data["system"], data["user"])

    def messages(
        self, spec: ApiSpec, arguments: dict, examples: Sequence[tuple[dict, dict]]
    ) -> list[dict]:
        values = _render(spec, arguments, examples)

        def fill(text: str) -> str:
            return _PLACEHOLDER.sub(lambda m: values[m.group(0)], text)

        return [
            {"role": "system", "content": fill(self.system)},
            {"role": "user", "content": fill(self.user)},
        ]


def _render(
    spec: ApiSpec, arguments: dict, examples: Sequence[tuple[dict, dict]]
) -> dict[str, str]:
    shown = [
        json.dumps({"arguments": args, "answer": answer}, ensure_ascii=False)[:EXAMPLE_CHARS]
        for args, answer in examples[:EXAMPLES]
    ]
    # StableToolBench: {'tool_description', 'api_info': [{'name', 'description'}]}, and the
    # (str(arguments), answer) pairs, fewer until their str() fits, then cut to fit.
    stb_doc = {
        "tool_description": spec.tool_description,
        "api_info": [{"name": spec.api_name, "description": spec.description}],
    }
    pairs = [(str(args), answer) for args, answer in examples[:EXAMPLES]]
    while len(str(pairs)) > EXAMPLE_CHARS and len(pairs) > 1:
        pairs.pop()
    return {
        "{api_doc}": json.dumps(spec.doc(), ensure_ascii=False),
        "{examples}": "\n".join(shown) if shown else "(none)",
        "{arguments}": json.dumps(arguments, ensure_ascii=False),
        "{api_doc_py}": str(stb_doc),
        "{examples_py}": str(pairs)[:EXAMPLE_CHARS],
        "{arguments_py}": str(arguments),
    }


def parse_simulated(text: str) -> dict:
    """The answer in a simulator's output: a JSON object, fenced or not. An object with a
    ``response`` field is taken as the answer; any other object is the response itself."""
    value = json_object(text)
    if "response" in value:
        error = value.get("error") or ""
        return {
            "error": error if isinstance(error, str) else json.dumps(error),
            "response": value["response"],
        }
    return {"error": "", "response": value}


#: The role a simulator's backend serves.
SIMULATOR = "simulator"


class LlmSimulator:
    """Simulated answers from a model (a role backend serving ``simulator``: an
    OpenAI-compatible chat endpoint, in JSON mode where it takes it)."""

    def __init__(self, backend: RoleBackend, prompt: SimulatorPrompt, tries: int = TRIES):
        self.backend, self.prompt, self.tries = backend, prompt, tries

    def answer(self, spec: ApiSpec, arguments: dict, examples: Sequence[tuple[dict, dict]]) -> dict:
        messages = self.prompt.messages(spec, arguments, examples)
        problem = "no try"
        for _ in range(self.tries):
            try:
                request = ModelRequest(messages=tuple(messages), json_mode=True)
                text = self.backend.generate(SIMULATOR, [request])[0].text
            except EndpointError as exc:
                raise SimulationError(f"simulator endpoint failed: {exc}") from exc
            try:
                return parse_simulated(text)
            except ValueError as exc:
                problem = f"{exc}: {text[:200]!r}"
        raise SimulationError(f"no valid JSON in {self.tries} tries: {problem}")


# -- the offline simulator --------------------------------------------------------------------

_WORDS = (
    "amber atlas beacon cedar delta ember falcon garnet harbor indigo juniper kestrel lumen "
    "maple nova orchid pioneer quartz raven summit tango umber vertex willow xenon yarrow zephyr"
).split()
_LIST_OF = re.compile(r"list of (\w+) with length (\d+)")
_MAX_ITEMS = 3  # list lengths in schemas reach hundreds; observations are cut to ~1k characters


def call_seed(*parts: str) -> random.Random:
    """A generator seeded by the call (the same on every machine and Python version)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def offline_answer(spec: ApiSpec, arguments: dict, seed: str) -> dict:
    """A plausible answer built from ``spec.template_response`` and ``arguments``."""
    rng = call_seed(str(spec.key), seed)
    schema = _schema(spec.template_response)
    filler = _Filler(rng, {k.lower(): v for k, v in arguments.items()})
    if schema is None:
        body: Any = {
            "status": "success",
            "api": spec.api_name,
            "input": arguments,
            "results": [
                filler.fill({"id": "str", "name": "str", "description": "str"}) for _ in range(2)
            ],
        }
    else:
        body = filler.fill(schema)
    return {"error": "", "response": json.dumps(body, ensure_ascii=False)}


def _schema(template: Any) -> Any:
    if isinstance(template, str):  # some queries carry the schema as JSON text
        try:
            template = json.loads(template)
        except ValueError:
            return None
    return template if isinstance(template, dict | list) and template else None


class _Filler:
    def __init__(self, rng: random.Random, arguments: dict[str, Any]):
        self.rng, self.arguments = rng, arguments

    def fill(self, node: Any, name: str = "") -> Any:
        if isinstance(node, dict):
            return {k: self.fill(v, k) for k, v in node.items() if k != "_list_length"}
        if isinstance(node, list):
            if not node:
                return []
            item = node[0]
            if isinstance(item, str) and (m := _LIST_OF.fullmatch(item)):
                return self._items(m.group(1), int(m.group(2)), name)
            length = item.get("_list_length", 1) if isinstance(item, dict) else len(node)
            return [self.fill(item, name) for _ in range(max(1, min(int(length), _MAX_ITEMS)))]
        if isinstance(node, str):
            return self._value(node, name)
        return node

    def _items(self, kind: str, length: int, name: str) -> list:
        return [self._value(kind, name) for _ in range(min(length, _MAX_ITEMS))]

    def _value(self, kind: str, name: str) -> Any:
        rng, key = self.rng, name.lower()
        given = self.arguments.get(key)
        if kind == "str":
            if isinstance(given, str | int | float) and not isinstance(given, bool):
                return str(given)
            return self._string(key)
        if kind == "int":
            return (
                given
                if isinstance(given, int) and not isinstance(given, bool)
                else rng.randint(1, 5000)
            )
        if kind == "float":
            return round(rng.uniform(0, 1000), 2)
        if kind == "bool":
            return rng.random() < 0.5
        if kind == "NoneType":
            return None
        if kind == "empty list":
            return []
        if m := _LIST_OF.fullmatch(kind):
            return self._items(m.group(1), int(m.group(2)), name)
        if kind == "list":
            return []
        return kind  # a literal value in the schema

    def _string(self, key: str) -> str:
        rng = self.rng
        word = rng.choice(_WORDS)
        if any(h in key for h in ("url", "link", "image", "thumbnail", "website", "href", "logo")):
            return f"https://example.com/{key or 'item'}/{word}-{rng.randrange(16**6):06x}"
        if "email" in key:
            return f"{word}.{rng.randint(1, 99)}@example.com"
        if any(h in key for h in ("date", "time", "created", "updated", "published")):
            day = rng.randrange(365 * 5)
            return f"{2020 + day // 365}-{day % 365 // 31 + 1:02d}-{day % 31 % 28 + 1:02d}"
        if key == "id" or key.endswith(("id", "_id", "uuid", "code", "key")):
            return f"{rng.randrange(16**8):08x}"
        if "phone" in key:
            return f"+1 555 01{rng.randint(0, 99):02d}"
        if any(h in key for h in ("name", "title", "label")):
            return f"{word.title()} {rng.choice(_WORDS).title()}"
        return " ".join([key.replace("_", " ") or "value", word, rng.choice(_WORDS)])
