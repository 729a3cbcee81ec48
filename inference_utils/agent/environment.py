"""A query's tool environment, as ToolBench's ``rapidapi.py`` builds and steps it.

From a query (``query``, ``api_list``) it builds the OpenAI functions the agent sees
(``<api>_for_<tool>``, ToolBench's descriptions and parameters, plus ``Finish``) and the system
and user messages that start every search. :meth:`QueryEnv.step` runs one function call the
way ToolBench's ``step`` does, as a generator: a real API call yields one
:class:`~inference_utils.search_requests.ToolRequest` and is sent the
:class:`~inference_utils.toolclient.Observation`; ``Finish``, unknown names and arguments that
are not JSON are answered here, with ToolBench's texts and status codes.
:meth:`QueryEnv.step_plan` runs several calls of one model output as one
:class:`~inference_utils.search_requests.ToolPlan` (``--parallel_calls``, an extension
beyond ToolBench), each answered as ``step`` answers it. The answer files,
ToolEval and the training data all read these texts, so they are reproduced exactly.

Where ToolBench crashes, this module answers instead (and says so where it does):

* a name that is a suffix of ``Finish`` only (ToolBench looks it up among the APIs and raises
  ``KeyError``) is an unknown name, status 1;
* ``Finish`` arguments that are JSON but not an object are read as an object without
  ``return_type`` (status 2);
* an API parameter without ``default`` or ``description`` reads as an empty one.

ToolBench does not check arguments against the function's schema (missing required
parameters go to the server, which answers as the API would), and neither does this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from inference_utils.search_requests import PlannedCall, ToolPlan, ToolRequest
from process_data.protocol import (
    FINISH,
    FINISH_FUNCTION,
    GIVE_ANSWER,
    GIVE_UP_AND_RESTART,
    SYSTEM_PROMPT,
    TASK_DESCRIPTION,
    USER_PROMPT,
    Observation,
    PlanCall,
    api_name_of,
    function_name,
    observation_json,
    parameter_order,
    parse_tool_input,
    read_finish,
    standardize,
)

#: ToolBench's ``--max_observation_length`` default: longer observations are cut to it.
MAX_OBSERVATION_LENGTH = 1024
#: ToolBench cuts API and parameter descriptions to this many characters.
DESCRIPTION_MAX_LENGTH = 256
#: ToolBench cuts a tool's description in the system message to this many characters.
TOOL_DESCRIPTION_MAX_LENGTH = 512

# Status codes of a step (ToolBench's ``rapidapi.py``; 6–12 come from the tool client).
OK, NO_SUCH_FUNCTION, BAD_INPUT, FINAL_ANSWER, GIVE_UP = 0, 1, 2, 3, 4

_PARAM_TYPES = {"NUMBER": "integer", "STRING": "string", "BOOLEAN": "boolean"}

# Observation texts of the steps answered here (ToolBench's, byte for byte).
_MUST_HAVE_RETURN_TYPE = '{error:"must have "return_type""}'
_MUST_HAVE_FINAL_ANSWER = '{error:"must have "final_answer""}'
_INVALID_RETURN_TYPE = '{error:""return_type" is not a valid choice"}'
_GAVE_UP = '{"response":"chose to give up and restart"}'
_ANSWERED = '{"response":"successfully giving the final answer."}'
#: What StableToolBench's server answers for a ``tool_input`` it cannot read as JSON.
TOOL_INPUT_ERROR = "Tool input parse error...\n"


@dataclass(frozen=True)
class ApiRoute:
    """Where a function's calls go: the names ToolBench's client sends for it."""

    category: str  # the query's category_name, as written there
    tool_name: str  # the standardized tool name
    api_name: str  # the API's name as ToolBench sends it (api_name_of)


def api_function(api: Mapping, tool_name: str | None = None) -> dict:
    """One ``api_list`` entry as ToolBench's OpenAI function (``api_json_to_openai_json``).

    ``tool_name`` is the standardized tool name (ToolBench takes it from the tool file's name,
    which is the standardized name). As in ToolBench, the parameters are listed only when the
    API has required parameters: optional ones alone are not shown.
    """
    tool = tool_name if tool_name is not None else standardize(api["tool_name"])
    raw_api_name = api["api_name"]
    name = function_name(raw_api_name, tool)
    description = f'This is the subfunction for tool "{tool}", you can use this tool.'
    api_description = (api.get("api_description") or "").strip()
    if api_description != "":
        cut = api_description.replace(raw_api_name, name)[:DESCRIPTION_MAX_LENGTH]
        description += f'The description of this function is: "{cut}"'
    properties: dict = {}
    required: list = []
    optional: list = []
    if api.get("required_parameters"):
        for params, names in (
            (api["required_parameters"], required),
            (api.get("optional_parameters") or [], optional),
        ):
            for param in params:
                param_name = api_name_of(param["name"])
                properties[param_name] = _parameter(param)
                names.append(param_name)
    return {
        "name": name,
        "description": description,
        "parameters": {
            "type": "object",
            "properties": properties,
            "required": required,
            "optional": optional,
        },
    }


def _parameter(param: Mapping) -> dict:
    spec = {
        "type": _PARAM_TYPES.get(param.get("type"), "string"),
        "description": (param.get("description") or "")[:DESCRIPTION_MAX_LENGTH],
    }
    default = param.get("default", "")
    if len(str(default)) != 0:
        spec["example_value"] = default
    return spec


def task_description(tools: Iterable[tuple[str, str]]) -> str:
    """ToolBench's task description: its rules, then one line per tool (first occurrence
    order, duplicates once), the description cut to 512 characters, ``None`` when empty."""
    unique: dict[str, str] = {}
    for name, description in tools:
        unique[name] = description
    text = TASK_DESCRIPTION
    for k, (name, description) in enumerate(unique.items()):
        stripped = (description or "")[:TOOL_DESCRIPTION_MAX_LENGTH].replace("\n", "").strip()
        text += f"{k + 1}.{name}: {stripped or 'None'}\n"
    return text


def load_tool_descriptions(tools_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Tool descriptions by standardized tool name, from ToolBench's
    ``toolenv/tools/<category>/<tool>.json`` files (its ``get_white_list``).

    Test-instruction query files do not carry them; without them each tool's line in the
    system message reads ``None``."""
    root = Path(tools_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder (expected toolenv/tools)")
    descriptions: dict[str, str] = {}
    for path in sorted(root.glob("*/*.json")):
        with open(path, encoding="utf-8") as fh:
            tool = json.load(fh)
        if isinstance(tool, dict) and "tool_name" in tool:
            descriptions[standardize(tool["tool_name"])] = tool.get("tool_description") or ""
    return descriptions


class QueryEnv:
    """One query's functions and ToolBench's ``step`` for them.

    Stateless between steps (ToolBench's environment only remembers whether ``Finish`` gave
    an answer, which the search reads from the status code), so one instance serves every
    branch of a search.
    """

    def __init__(
        self,
        query: str,
        functions: list[dict],
        routes: Mapping[str, ApiRoute],
        task_description: str,
        max_observation_length: int = MAX_OBSERVATION_LENGTH,
    ):
        if max_observation_length < 1:
            raise ValueError("max_observation_length must be at least 1")
        self.query = query
        self.functions = functions
        self.routes = dict(routes)
        self.task_description = task_description
        self.max_observation_length = max_observation_length

    @classmethod
    def from_query(
        cls,
        query: Mapping,
        tool_descriptions: Mapping[str, str] | None = None,
        max_observation_length: int = MAX_OBSERVATION_LENGTH,
    ) -> QueryEnv:
        """The environment of a test-instruction query (``query`` and ``api_list``)."""
        if not isinstance(query.get("query"), str):
            raise ValueError("a query needs a 'query' text")
        apis = query.get("api_list")
        if not isinstance(apis, list):
            raise ValueError("a query needs an 'api_list'")
        described = tool_descriptions or {}
        functions, routes, tools = [], {}, []
        for api in apis:
            tool = standardize(api["tool_name"])
            function = api_function(api, tool)
            functions.append(function)
            routes.setdefault(
                function["name"],
                ApiRoute(api["category_name"], tool, api_name_of(api["api_name"])),
            )
            tools.append((tool, described.get(tool, "")))
        functions.append(json.loads(json.dumps(FINISH_FUNCTION)))
        return cls(
            query["query"], functions, routes, task_description(tools), max_observation_length
        )

    def initial_messages(self) -> list[dict]:
        """The system and user messages every chain starts from."""
        system = SYSTEM_PROMPT.replace("{task_description}", self.task_description)
        user = USER_PROMPT.replace("{input_description}", self.query)
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    def step(
        self, name: str, arguments: str
    ) -> Generator[ToolRequest, Observation, tuple[str, int]]:
        """Run one call: ``observation, status = yield from env.step(name, arguments)``.

        The observation is cut to ``max_observation_length`` characters plus ``...``.
        """
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        answer = self._request(name, arguments)
        if isinstance(answer, ToolRequest):
            answer = observed((yield answer))
        return self._cut(*answer)

    def step_plan(
        self, calls: Sequence[tuple[str, str]]
    ) -> Generator[ToolPlan, Mapping[int, Observation], list[tuple[str, int]]]:
        """Run several calls of one model output as one plan:
        ``results = yield from env.step_plan([(name, arguments), ...])`` gives
        ``(observation, status)`` for each call, in order, each as :meth:`step` gives it.

        The calls' ids are their positions from 1, so ``$1`` in a call's arguments is the
        first call's response. A call that :meth:`step` answers itself (``Finish``, an
        unknown name, arguments that are not a JSON object) gets that answer and makes no
        request; the others are yielded together as one :class:`ToolPlan`, which is sent
        back an observation for each id. A call that refers to one that makes no request
        (or to itself, or to a later one) makes the plan invalid: the plan runner then runs
        none of it and every planned call's observation is an error naming the problem.
        """
        answers: list[tuple[str, int] | None] = []
        planned: list[PlannedCall] = []
        for position, (name, arguments) in enumerate(calls, 1):
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            answer = self._request(name, arguments)
            if isinstance(answer, ToolRequest):
                planned.append(PlannedCall(position, name, answer))
                answers.append(None)
            else:
                answers.append(answer)
        if planned:
            observations = yield ToolPlan(tuple(planned))
            for call in planned:
                observation = observations.get(call.id) if observations else None
                if not isinstance(observation, Observation):
                    raise ValueError(f"the plan's answer has no observation for call {call.id}")
                answers[call.id - 1] = observed(observation)
        return [self._cut(*answer) for answer in answers if answer is not None]

    def plan_request(self, call: PlanCall) -> ToolRequest | Observation:
        """An LLMCompiler plan call's request: positional arguments fill the function's
        parameters in :func:`~process_data.protocol.parameter_order`, named ones by name.
        A call that makes none (``Finish``, an unknown name, more arguments than parameters)
        gets the observation :meth:`step` would give, at once."""
        function = next((f for f in self.functions if f["name"] == call.name), None)
        if call.name == FINISH or function is None or call.name not in self.routes:
            text = f"No such function name: {call.name}"
            return Observation(text, "", NO_SUCH_FUNCTION)
        order = parameter_order(function)
        if len(call.args) > len(order):
            text = f"{call.name} takes {len(order)} arguments by position, not {len(call.args)}"
            return Observation(text, "", BAD_INPUT)
        arguments = dict(zip(order, call.args, strict=False)) | dict(call.kwargs)
        try:  # Python literals as JSON: tuples become lists; sets, bytes and the like fail
            tool_input = json.loads(json.dumps(arguments, ensure_ascii=False))
        except (TypeError, ValueError) as exc:
            return Observation(f"{call.name}: arguments that are not JSON: {exc}", "", BAD_INPUT)
        route = self.routes[call.name]
        return ToolRequest(route.category, route.tool_name, route.api_name, tool_input)

    def observe(self, observation: Observation) -> tuple[str, int]:
        """A call's observation as :meth:`step` gives it: ToolBench's text, cut, and the
        status."""
        return self._cut(*observed(observation))

    def _request(self, name: str, arguments: str) -> ToolRequest | tuple[str, int]:
        """The request a call makes, or the answer of a call that makes none."""
        if name == FINISH:
            return finish_observation(arguments)
        route = self._route(name)
        if route is None:
            text = observation_json(f"No such function name: {name}", "")
            return text, NO_SUCH_FUNCTION
        try:
            tool_input = parse_tool_input(arguments)
        except ValueError:
            return observation_json(TOOL_INPUT_ERROR, ""), OK
        return ToolRequest(route.category, route.tool_name, route.api_name, tool_input)

    def _cut(self, observation: str, status: int) -> tuple[str, int]:
        if len(observation) > self.max_observation_length:
            observation = observation[: self.max_observation_length] + "..."
        return observation, status

    def _route(self, name: str) -> ApiRoute | None:
        """ToolBench's lookup: the first function whose name ends with ``name``."""
        for function in self.functions:
            if function["name"].endswith(name) and function["name"] in self.routes:
                return self.routes[function["name"]]
        return None


def observed(observation: Observation) -> tuple[str, int]:
    """A tool's observation as ToolBench's step writes it: its client's ``json.dumps`` (with
    the defaults) of the error and the response, and the status code."""
    return observation.text, observation.status


def finish_observation(arguments: str) -> tuple[str, int]:
    """ToolBench's ``Finish``: the observation and status of its arguments. Arguments that
    are read by :func:`process_data.protocol.read_finish`, as there."""
    data = read_finish(arguments)
    if not isinstance(data, dict) or "return_type" not in data:
        return _MUST_HAVE_RETURN_TYPE, BAD_INPUT
    if data["return_type"] == GIVE_UP_AND_RESTART:
        return _GAVE_UP, GIVE_UP
    if data["return_type"] == GIVE_ANSWER:
        if "final_answer" not in data:
            return _MUST_HAVE_FINAL_ANSWER, BAD_INPUT
        return _ANSWERED, FINAL_ANSWER
    return _INVALID_RETURN_TYPE, BAD_INPUT
