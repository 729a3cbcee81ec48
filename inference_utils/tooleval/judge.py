"""ToolEval's judge: questions asked of an LLM as forced function calls, with cached verdicts.

A :class:`Rubric` holds the questions (``check_answer_status``, ``parse_answer_status``,
``check_task_solvable``, ``select_better_answer``): for each, a prompt filled with
``str.format`` and the function whose arguments are the verdict. Ours is
``judge_prompts.yaml``; :meth:`Rubric.load_tooleval` reads a ToolEval evaluator folder
(``config.yaml`` and the ``<function>`` blocks of its ``template.txt``), so ToolBench's judge is
reproduced exactly: one user message, the function forced, a ``reason`` argument added when a
reason is asked for.

A :class:`Judge` asks role backends (:mod:`inference_utils.backends`, the role ``judge``):
OpenAI-compatible endpoints (several keys or servers of a pool in turn), by tool calling where
the endpoint does it and by strict JSON in text where it does not
(:meth:`inference_utils.endpoints.EndpointClient.call_function`), or a local model through its
chat template (JSON in text). Transport faults are
retried by the endpoint client (429, 5xx and timeouts, with backoff and jitter). A verdict that
is not what the function asks for is asked again once, then recorded as ``Unsure`` with the
reason. Every verdict is stored in a :class:`VerdictCache` (SQLite, WAL) under the judge's
model, a hash of the exact request and the round, before it is used, so a re-run or a resumed
run asks nothing twice and a killed run loses no verdict it had received.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from inference_utils.backends import Decoding, ModelRequest, RoleBackend
from inference_utils.sqlite_store import SQLiteStore

DEFAULT_RUBRIC = Path(__file__).with_name("judge_prompts.yaml")
QUESTIONS = (
    "check_answer_status",
    "parse_answer_status",
    "check_task_solvable",
    "select_better_answer",
)
REASON = {"type": "string", "description": "explain your answer."}  # ToolEval's reason field
_FUNCTION = re.compile(r"<function>(.*?)</function>", re.S)
_NAME = re.compile(r"<name>(.*?)</name>", re.S)
_DESCRIPTION = re.compile(r"<description>(.*?)</description>", re.S)


class RubricError(ValueError):
    """A prompt file or evaluator folder that cannot be used; the message names it."""


#: ToolEval's sampling of the judge (its evaluator configs' ``completions_kwargs``).
TOOLEVAL_TEMPERATURE, TOOLEVAL_MAX_TOKENS = 0.2, 1000


@dataclass(frozen=True)
class Question:
    name: str
    prompt: str  # filled with str.format(**arguments)
    function: dict  # OpenAI function schema: name, description, parameters


@dataclass(frozen=True)
class Rubric:
    questions: dict[str, Question]
    settings: dict  # completion settings (model, temperature, max_tokens) the file gives
    source: str

    def decoding(self) -> Decoding:
        """How the judge samples: the file's ``temperature`` and ``max_tokens``, else
        ToolEval's (``completions_kwargs`` of its evaluator configs: 0.2 and 1,000)."""
        try:
            return Decoding(
                max_new_tokens=int(self.settings.get("max_tokens", TOOLEVAL_MAX_TOKENS)),
                temperature=float(self.settings.get("temperature", TOOLEVAL_TEMPERATURE)),
            )
        except (TypeError, ValueError) as exc:
            raise RubricError(f"{self.source}: bad temperature or max_tokens: {exc}") from exc

    @classmethod
    def load(cls, path: str | Path = DEFAULT_RUBRIC) -> Rubric:
        """Our YAML format: ``settings``, and ``questions`` by name, each with its
        ``description``, ``parameters`` and ``prompt``."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
            questions = {
                name: Question(
                    name,
                    q["prompt"],
                    {
                        "name": name,
                        "description": q.get("description", ""),
                        "parameters": q["parameters"],
                    },
                )
                for name, q in data["questions"].items()
            }
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
            raise RubricError(
                f"{path}: not a judge prompt file: {type(exc).__name__}: {exc}"
            ) from exc
        return cls._checked(questions, dict(data.get("settings") or {}), str(path))

    @classmethod
    def load_tooleval(cls, folder: str | Path) -> Rubric:
        """A ToolEval evaluator folder: ``config.yaml`` (``prompt_template``,
        ``completions_kwargs`` with the ``functions``) and the template it names."""
        folder = Path(folder)
        try:
            config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
            settings = dict(config["completions_kwargs"])
            functions = {f["name"]: f for f in settings.pop("functions")}
            template = (folder / config.get("prompt_template", "template.txt")).read_text(
                encoding="utf-8"
            )
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise RubricError(
                f"{folder}: not a ToolEval evaluator folder: {type(exc).__name__}: {exc}"
            ) from exc
        prompts = {}
        for block in _FUNCTION.findall(template):
            name, description = _NAME.search(block), _DESCRIPTION.search(block)
            if name and description:
                prompts[name.group(1)] = description.group(1)
        questions = {
            name: Question(name, prompts[name], functions[name])
            for name in QUESTIONS
            if name in prompts and name in functions
        }
        settings.pop("function_call", None)
        return cls._checked(questions, settings, str(folder))

    @classmethod
    def _checked(cls, questions: dict[str, Question], settings: dict, source: str) -> Rubric:
        missing = [q for q in QUESTIONS if q not in questions]
        if missing:
            raise RubricError(f"{source}: no prompt or function for {', '.join(missing)}")
        return cls(questions, settings, source)

    def request(self, question: str, arguments: dict, reason: bool) -> tuple[list[dict], dict]:
        """The messages and the function of one question, as ToolEval builds them."""
        q = self.questions[question]
        function = copy.deepcopy(q.function)
        if reason:
            params = function.setdefault("parameters", {"type": "object", "properties": {}})
            params.setdefault("properties", {})["reason"] = REASON
            params["required"] = [*params.get("required", []), "reason"]
        return [{"role": "user", "content": q.prompt.format(**arguments)}], function


VERDICTS = (
    "CREATE TABLE IF NOT EXISTS verdicts (model TEXT NOT NULL, request TEXT NOT NULL, "
    "round INTEGER NOT NULL, verdict TEXT NOT NULL, PRIMARY KEY (model, request, round))"
)


class VerdictCache(SQLiteStore):
    """Verdicts by (judge model, request hash, round), in SQLite (WAL); thread-safe."""

    def __init__(self, path: str | Path):
        super().__init__(path, VERDICTS)

    def get(self, model: str, request: str, round_: int) -> dict | None:
        with self._lock:
            row = self._db.execute(
                "SELECT verdict FROM verdicts WHERE model=? AND request=? AND round=?",
                (model, request, round_),
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, model: str, request: str, round_: int, verdict: dict) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)",
                (model, request, round_, json.dumps(verdict)),
            )


def request_hash(messages: Sequence[dict], function: dict) -> str:
    text = json.dumps([list(messages), function], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def problem(function: dict, verdict: dict) -> str | None:
    """What is wrong with a verdict for ``function`` (its required fields, their enums and
    types), or None."""
    params = function.get("parameters", {})
    props = params.get("properties", {})
    for key in params.get("required", []):
        if key not in verdict:
            return f"no {key!r}"
    for key, spec in props.items():
        if key not in verdict:
            continue
        value = verdict[key]
        if "enum" in spec and value not in spec["enum"]:
            return f"{key}={value!r} is not one of {spec['enum']}"
        if spec.get("type") == "number" and not (
            isinstance(value, int | float)
            or (isinstance(value, str) and value.strip().lstrip("-").isdigit())
        ):
            return f"{key}={value!r} is not a number"
    return None


#: The role a judge's backends serve.
JUDGE = "judge"


class Judge:
    """Asks :class:`Rubric` questions; ``clients`` are used in turn (a key pool).

    ``decoding`` is how the judge samples (ToolEval's ``completions_kwargs``: temperature
    0.2, at most 1,000 tokens). Each round of a question is sampled with a seed of its own,
    so rounds differ and a re-run repeats them; at temperature 0 every round would get the
    same verdict, so the judge asks once and gives that verdict to every round
    (:attr:`greedy`)."""

    def __init__(
        self,
        rubric: Rubric,
        clients: Sequence[RoleBackend],
        model: str,
        cache: VerdictCache | None = None,
        tries: int = 2,
        decoding: Decoding | None = None,
    ):
        if not clients:
            raise ValueError("a judge needs at least one endpoint")
        self.rubric, self.model, self.cache, self.tries = rubric, model, cache, tries
        self.decoding = decoding if decoding is not None else rubric.decoding()
        self._clients = itertools.cycle(clients)
        self._lock = threading.Lock()
        self.calls = 0  # requests sent (not answered from the cache)

    def ask(self, question: str, arguments: dict, round_: int = 0, reason: bool = True) -> dict:
        """The verdict (the function's arguments) for one question in one round. A verdict
        that stays malformed comes back with its status fields ``"Unsure"`` and the reason."""
        messages, function = self.rubric.request(question, arguments, reason)
        key = request_hash(messages, function)
        if self.greedy:
            round_ = 0  # every round would get this verdict: ask once
        if (
            self.cache is not None
            and (cached := self.cache.get(self.model, key, round_)) is not None
        ):
            return cached
        why = ""
        for _ in range(self.tries):
            with self._lock:
                client = next(self._clients)
                self.calls += 1
            try:
                decoding = replace(self.decoding, seed=round_)
                request = ModelRequest(
                    messages=tuple(messages), function=function, decoding=decoding
                )
                verdict = client.generate(JUDGE, [request])[0].arguments()
            except ValueError as exc:  # not JSON: ask again
                why = f"unparseable verdict: {exc}"
                continue
            why = problem(function, verdict)
            if why is None:
                break
            why = f"malformed verdict: {why}"
        else:
            verdict = _unsure(function, why)
        if self.cache is not None:
            self.cache.put(self.model, key, round_, verdict)
        return verdict

    @property
    def greedy(self) -> bool:
        """Whether the judge decodes greedily, so that rounds cannot differ."""
        return not self.decoding.temperature


def _unsure(function: dict, why: str) -> dict:
    props = function.get("parameters", {}).get("properties", {})
    verdict = {key: "Unsure" for key, spec in props.items() if "Unsure" in spec.get("enum", [])}
    return verdict | {"reason": why, "unparsed": True}
