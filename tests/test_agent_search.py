"""The real-time agent's search: functions, the tool environment, CoT@n and DFSDT, answer files.

No models and no servers: a scripted policy answers each decision (yielding the LLM calls a
real policy would), and the test's own driver loop answers the search's requests, the tool
requests with scripted observations.

Two kinds of evidence that the port keeps ToolBench's semantics:

* replays of real ToolBench and StableToolBench answer files: the decisions and observations
  recorded in each file's tree are fed back in, in the order ToolBench made them, and the
  search must rebuild the same tree, the same LLM call count and the same answer fields;
* a worked example for each branch of the DFS whose expected tree and messages were worked
  out by hand from ToolBench's ``DFS.py`` and ``Tree.py`` (see the comments there).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
from conftest import SHARED, STB_ANSWERS, TOOLBENCH_EXAMPLE, read_json

from inference_utils.agent.answers import answer_json, answer_path, write_answer
from inference_utils.agent.environment import (
    TOOL_INPUT_ERROR,
    ApiRoute,
    QueryEnv,
    api_function,
    load_tool_descriptions,
)
from inference_utils.agent.search import (
    PARALLEL_CALLS,
    Node,
    SearchResult,
    cot,
    dfs,
    parse_method,
    search,
    tree_json,
)
from inference_utils.search_requests import Generate, PlannedCall, ToolPlan, ToolRequest
from inference_utils.tooleval.convert import convert_dir
from process_data.protocol import DIVERSITY_PROMPT, FINISH_FUNCTION, HALLUCINATED_NAME, Observation
from process_data.toolbench.pipeline import Options, from_answer
from process_data.toolbench.stage1 import AnswerFile, to_stage1
from process_data.toolbench.stage2 import to_stage2

STB_QUERIES = SHARED / "stabletoolbench" / "solvable_queries" / "test_instruction"
STB_IDS = ("1073", "588", "608")
TOOLBENCH_DFS = sorted((TOOLBENCH_EXAMPLE / "answer").glob("G*_answer/*.json"))
STB_DFS = [
    STB_ANSWERS / "virtual_chatgpt_dfs" / "G1_instruction" / f"{q}_DFS_woFilter_w2.json"
    for q in STB_IDS
]
STB_COT = [
    STB_ANSWERS / "virtual_chatgpt_cot" / "G1_instruction" / f"{q}_CoT@1.json" for q in STB_IDS
]
TASK_MARK = "Task description: "


# --------------------------------------------------------------------------------------------
# A scripted policy and a driver loop
# --------------------------------------------------------------------------------------------


def call(name: str, arguments: str | dict, thought: str | None = None) -> dict:
    """An assistant message as a policy returns it."""
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments)
    return {
        "role": "assistant",
        "content": thought,
        "function_call": {"name": name, "arguments": arguments},
    }


def finish(answer: str | None = None, thought: str | None = None) -> dict:
    if answer is None:
        return call("Finish", {"return_type": "give_up_and_restart"}, thought)
    return call("Finish", {"return_type": "give_answer", "final_answer": answer}, thought)


@dataclass
class Scripted:
    """Returns its messages in order, after yielding ``calls`` LLM requests per decision
    (one as a single LLM, two as planner and caller); records what each decision saw."""

    messages: list[dict]
    calls: int = 1
    seen: list[list[dict]] = field(default_factory=list)
    on_decide: Callable[[int], None] | None = None

    def decide(self, messages: list[dict], functions: list[dict]) -> Generator[Generate, str, dict]:
        index = len(self.seen)
        self.seen.append(copy.deepcopy(messages))
        for k in range(self.calls):
            reply = yield Generate(
                "backbone" if self.calls == 1 else ("planner", "caller")[k], f"p{index}"
            )
            assert reply == f"out:p{index}"
        if self.on_decide is not None:
            self.on_decide(index)
        if index < len(self.messages):
            return copy.deepcopy(self.messages[index])
        return finish("(past the script)")


def drive(gen, tool: Callable[[ToolRequest], Observation]) -> tuple[object, list]:
    """Run a search generator to its end, answering LLM calls with a fixed text and tool
    requests with ``tool`` (each call of a plan too, as it is written: ``$N`` unreplaced);
    returns its value and the requests in order."""
    requests, reply = [], None
    while True:
        try:
            request = gen.send(reply)
        except StopIteration as stop:
            return stop.value, requests
        requests.append(request)
        if isinstance(request, Generate):
            reply = f"out:{request.prompt}"
        elif isinstance(request, ToolPlan):
            reply = {planned.id: tool(planned.request) for planned in request.calls}
        else:
            assert isinstance(request, ToolRequest)
            reply = tool(request)


def ok(response: object = "fine") -> Callable[[ToolRequest], Observation]:
    return lambda request: Observation("", response, 0)


# --------------------------------------------------------------------------------------------
# Functions of real queries
# --------------------------------------------------------------------------------------------


def stb_query(query_id: str) -> dict:
    for query in read_json(STB_QUERIES / "G1_instruction.json"):
        if str(query["query_id"]) == query_id:
            return query
    raise KeyError(query_id)


def described_tools(system: str) -> dict[str, str]:
    """The tool descriptions a real system message lists (``k.name: description``)."""
    lines = system.split("You have access of the following tools:\n", 1)[1].splitlines()
    return dict(line.split(".", 1)[1].split(": ", 1) for line in lines if line)


@pytest.mark.parametrize("query_id", STB_IDS)
def test_functions_equal_real_answer_files(query_id: str, shared: Path) -> None:
    env = QueryEnv.from_query(stb_query(query_id))
    for path in (STB_DFS[STB_IDS.index(query_id)], STB_COT[STB_IDS.index(query_id)]):
        generation = read_json(path)["answer_generation"]
        assert env.functions == generation["function"]
        assert env.functions[-1] == FINISH_FUNCTION
    # the system message: ToolBench's text, with the tools' descriptions from its tool files
    system = read_json(STB_DFS[STB_IDS.index(query_id)])["answer_generation"]["train_messages"][0][
        0
    ]
    described = QueryEnv.from_query(stb_query(query_id), described_tools(system["content"]))
    assert described.initial_messages()[0] == system
    assert env.initial_messages()[1]["content"] == f"\n{env.query}\nBegin!\n"
    # without tool files each tool is listed with "None", as ToolBench lists an empty one
    assert env.task_description.endswith(": None\n")


def test_function_schema_rules() -> None:
    """ToolBench's api_json_to_openai_json: standardized names, is_ for reserved words, the
    64-character cut, types mapped (others are strings), example values from non-empty
    defaults, descriptions cut to 256, and optional parameters listed only when the API has
    required ones."""
    param = {"name": "id", "type": "NUMBER", "description": "x" * 300, "default": 5}
    optional = {"name": "Page Size", "type": "ENUM", "description": "size", "default": ""}
    api = {
        "category_name": "Data",
        "tool_name": "My Tool",
        "api_name": "Get Item",
        "api_description": "Get Item returns an item.",
        "required_parameters": [param],
        "optional_parameters": [optional],
    }
    function = api_function(api)
    assert function["name"] == "get_item_for_my_tool"
    assert function["description"] == (
        'This is the subfunction for tool "my_tool", you can use this tool.'
        'The description of this function is: "get_item_for_my_tool returns an item."'
    )
    assert function["parameters"] == {
        "type": "object",
        "properties": {
            "is_id": {"type": "integer", "description": "x" * 256, "example_value": 5},
            "page_size": {"type": "string", "description": "size"},
        },
        "required": ["is_id"],
        "optional": ["page_size"],
    }
    no_required = api_function({**api, "required_parameters": [], "api_description": " "})
    assert no_required["parameters"]["properties"] == {}
    assert no_required["parameters"]["optional"] == []
    assert no_required["description"].endswith("you can use this tool.")
    long = api_function({**api, "api_name": "a" * 70})
    assert len(long["name"]) == 64 and long["name"].endswith("_for_my_tool")


def test_tool_descriptions_from_tool_files(tmp_path: Path) -> None:
    folder = tmp_path / "tools" / "Data"
    folder.mkdir(parents=True)
    tool = {"tool_name": "Key Word", "tool_description": "Line one\nline two", "api_list": []}
    (folder / "key_word.json").write_text(json.dumps(tool))
    descriptions = load_tool_descriptions(tmp_path / "tools")
    assert descriptions == {"key_word": "Line one\nline two"}
    query = {
        "query": "q",
        "api_list": [
            {
                "category_name": "Data",
                "tool_name": "Key Word",
                "api_name": "A",
                "api_description": "",
            },
            {"category_name": "Data", "tool_name": "Other", "api_name": "B", "api_description": ""},
            {
                "category_name": "Data",
                "tool_name": "Key Word",
                "api_name": "C",
                "api_description": "",
            },
        ],
    }
    env = QueryEnv.from_query(query, descriptions)
    assert env.task_description.endswith("tools:\n1.key_word: Line oneline two\n2.other: None\n")
    with pytest.raises(FileNotFoundError):
        load_tool_descriptions(tmp_path / "missing")


# --------------------------------------------------------------------------------------------
# env.step
# --------------------------------------------------------------------------------------------


def toy_env(max_observation_length: int = 1024) -> QueryEnv:
    apis = [
        {
            "category_name": "Data",
            "tool_name": "Key Word",
            "api_name": "Search",
            "api_description": "Search.",
            "required_parameters": [
                {"name": "q", "type": "STRING", "description": "", "default": ""}
            ],
            "optional_parameters": [],
        },
        {
            "category_name": "Data",
            "tool_name": "Key Word",
            "api_name": "Similar",
            "api_description": "",
            "required_parameters": [],
            "optional_parameters": [],
        },
    ]
    return QueryEnv.from_query(
        {"query": "find things", "api_list": apis}, max_observation_length=max_observation_length
    )


def step(env: QueryEnv, name: str, arguments: str, answer: Observation | None = None):
    """One step; returns (observation, status, the requests it made)."""
    (observation, status), requests = drive(
        env.step(name, arguments), lambda request: answer or Observation("", "r", 0)
    )
    return observation, status, requests


def test_step_real_call_and_tool_client_errors() -> None:
    env = toy_env()
    observation, status, requests = step(env, "search_for_key_word", '{"q": "caf\u00e9"}')
    assert requests == [ToolRequest("Data", "key_word", "search", {"q": "café"})]
    assert (observation, status) == ('{"error": "", "response": "r"}', 0)
    # the server's answer is written as ToolBench's client writes it (json.dumps' defaults)
    answer = Observation("", {"name": "café"}, 0)
    observation, status, _ = step(env, "search_for_key_word", '{"q": "x"}', answer)
    assert observation == '{"error": "", "response": {"name": "caf\\u00e9"}}'
    for error, code in (("API not working error...", 6), ("Message error...", 11)):
        observation, status, _ = step(
            env, "search_for_key_word", "{}", Observation(error, "", code)
        )
        assert (json.loads(observation), status) == ({"error": error, "response": ""}, code)
    failed = Observation("request failed after 4 attempts: ConnectTimeout", "", 12)
    observation, status, _ = step(env, "search_for_key_word", "{}", failed)
    assert status == 12 and json.loads(observation)["error"] == failed.error
    # empty arguments are an empty object, as the servers read them; strict=False as theirs
    _, _, requests = step(env, "similar_for_key_word", "")
    assert requests[0].tool_input == {}
    _, _, requests = step(env, "search_for_key_word", '{"q": "a\tb"}')
    assert requests[0].tool_input == {"q": "a\tb"}


def test_step_names_and_bad_arguments_without_a_request() -> None:
    env = toy_env()
    for name in ("nope", "Finish_for_x", "nish"):  # "nish" is a suffix of Finish only
        observation, status, requests = step(env, name, "{}")
        assert requests == []
        assert observation == json.dumps(
            {"error": f"No such function name: {name}", "response": ""}
        )
        assert status == 1
    # ToolBench's lookup is by suffix: the first function whose name ends with the name
    _, status, requests = step(env, "for_key_word", '{"q": 1}')
    assert status == 0 and requests[0].api_name == "search"
    _, _, requests = step(env, "similar_for_key_word", "{}")
    assert requests[0].api_name == "similar"
    # arguments that are not a JSON object: the server's parse error, with no call made
    for arguments in ("{oops", "[1, 2]", "3"):
        observation, status, requests = step(env, "search_for_key_word", arguments)
        assert requests == []
        assert json.loads(observation) == {"error": TOOL_INPUT_ERROR, "response": ""}
        assert status == 0


@pytest.mark.parametrize(
    ("arguments", "observation", "status"),
    [
        (
            '{"return_type": "give_answer", "final_answer": "42"}',
            '{"response":"successfully giving the final answer."}',
            3,
        ),
        (
            '{"return_type": "give_up_and_restart"}',
            '{"response":"chose to give up and restart"}',
            4,
        ),
        ('{"return_type": "give_answer"}', '{error:"must have "final_answer""}', 2),
        ('{"final_answer": "42"}', '{error:"must have "return_type""}', 2),
        ('{"return_type": "maybe"}', '{error:""return_type" is not a valid choice"}', 2),
        ('["give_answer"]', '{error:"must have "return_type""}', 2),
        # not JSON: ToolBench searches the text for the two fields
        (
            '{"return_type": "give_answer", "final_answer": "4\n2',
            '{"response":"successfully giving the final answer."}',
            3,
        ),
        (
            '{"return_type": "give_up_and_restart", oops',
            '{"response":"chose to give up and restart"}',
            4,
        ),
        ('{"return_type": "give_answer" oops', '{error:"must have "final_answer""}', 2),
        ('{"return_type": "other", "x": 1', '{error:""return_type" is not a valid choice"}', 2),
        ("give up", '{error:"must have "return_type""}', 2),
    ],
)
def test_step_finish(arguments: str, observation: str, status: int) -> None:
    assert step(toy_env(), "Finish", arguments) == (observation, status, [])


def test_step_cuts_long_observations() -> None:
    env = toy_env(max_observation_length=40)
    observation, _, _ = step(env, "search_for_key_word", "{}", Observation("", "x" * 100, 0))
    assert observation == '{"error": "", "response": "' + "x" * 13 + "..."
    assert len(observation) == 43
    whole = json.dumps({"error": "", "response": "x" * 11})
    assert len(whole) == 40  # exactly the limit: kept whole
    assert step(env, "search_for_key_word", "{}", Observation("", "x" * 11, 0))[0] == whole
    # every observation is cut, those answered here too (ToolBench cuts in step())
    short = toy_env(max_observation_length=10)
    assert step(short, "nope", "{}")[0] == '{"error": ...'
    assert step(short, "Finish", '{"return_type": "give_up_and_restart"}')[0] == '{"response...'
    assert toy_env().max_observation_length == 1024
    with pytest.raises(ValueError):
        toy_env(max_observation_length=0)


# --------------------------------------------------------------------------------------------
# Replays of real answer files
# --------------------------------------------------------------------------------------------


def complete_json(prefix: str) -> object:
    """A JSON value whose ``json.dumps`` text starts with ``prefix``, which is a cut
    ``json.dumps`` text: open strings, numbers, literals and containers are closed."""
    stack, in_string, escaped = [], False, False
    for char in prefix:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append("]" if char == "[" else "}")
        elif char in "]}":
            stack.pop()
    closers = "".join(reversed(stack))
    if in_string:
        middles = [e + q for e in ("", "n", "0", "00", "000", "0000") for q in ('"', '": 0')]
    else:
        middles = [
            "",
            "0",
            " 0",
            ": 0",
            '"": 0',
            "rue",
            "ue",
            "e",
            "ull",
            "ll",
            "l",
            "alse",
            "lse",
            "se",
        ]
    for middle in middles:
        try:
            value = json.loads(prefix + middle + closers)
        except ValueError:
            continue
        if json.dumps(value).startswith(prefix):
            return value
    raise AssertionError(f"cannot complete {prefix[-40:]!r}")


def observation_of(text: str, code: int, limit: int = 1024) -> Observation:
    """The tool client's answer that gives ``text`` (a recorded, maybe cut, observation)."""
    if len(text) == limit + 3 and text.endswith("..."):
        answer = complete_json(text[:limit])
    else:
        answer = json.loads(text)
    assert list(answer) == ["error", "response"]
    return Observation(answer["error"], answer["response"], code)


@dataclass
class Decision:
    message: dict
    observation: str | None = None  # what the call's tool request is answered with
    code: int | None = None


def recorded_decisions(root: dict) -> list[Decision]:
    """The model messages of a recorded DFS tree in the order ToolBench asked for them.

    ToolBench visits a node (giving it the next ``expand_num``), then asks for its children
    one message at a time, each followed by a visit of the message's last node. A message
    makes a Thought (its content), an Action (the function name) and an Action Input (the
    arguments). A Thought is the last node of its message exactly when it was visited, so
    a Thought that was never visited (``expand_num`` 0) continues into its Action child."""
    decisions: list[Decision] = []

    def visit(node: dict) -> None:
        for child in node["children"]:
            thought, now = None, child
            if now["node_type"] == "Thought":
                thought = now["description"]
                if now["expand_num"] == 0 and now["children"]:
                    now = now["children"][0]
            if now["node_type"] == "Action":
                action_input = now["children"][0]
                decision = Decision(
                    call(now["description"], action_input["description"], thought),
                    action_input.get("observation", ""),
                    action_input.get("observation_code"),
                )
                now = action_input
            else:
                decision = Decision({"role": "assistant", "content": thought})
            decisions.append(decision)
            visit(now)

    visit(root)
    return decisions


def replay(env: QueryEnv, decisions: list[Decision], run) -> tuple[SearchResult, Scripted, list]:
    current: list[Decision] = []
    policy = Scripted([d.message for d in decisions])
    policy.on_decide = lambda index: current.append(decisions[min(index, len(decisions) - 1)])

    def tool(request: ToolRequest) -> Observation:
        decision = current[-1]
        return observation_of(decision.observation, decision.code)

    result, requests = drive(run(policy, env), tool)
    return result, policy, requests


def recorded_env(answer: dict) -> QueryEnv:
    """The environment of a recorded answer: its functions, its system message's task."""
    generation = answer["answer_generation"]
    functions = generation["function"]
    routes = {}
    for function in functions[:-1]:
        api, _, tool = function["name"].rpartition("_for_")
        routes[function["name"]] = ApiRoute("?", tool, api)
    system = generation["train_messages"][0][0]["content"]
    task = system.split(TASK_MARK, 1)[1]
    return QueryEnv(generation["query"], functions, routes, task)


def without_empty_content(messages: list[list[dict]]) -> list[list[dict]]:
    """ChatGPT's messages leave out a null content; a policy's messages may carry it."""
    return [
        [{k: v for k, v in m.items() if not (k == "content" and v is None)} for m in chain]
        for chain in messages
    ]


def give_up_messages(root: Node) -> list:
    found, stack = [], [root]
    while stack:
        node = stack.pop()
        if node.observation_code == 4:
            found.append(without_empty_content(node.train_messages()))
        stack.extend(node.children)
    return found


def without_variant_fields(node: dict) -> dict:
    """A recorded node without the fields some ToolBench versions add to every node (an
    ``Elo`` of 0.0 and a ``matching_time``); this port writes the published code's."""
    plain = {k: v for k, v in node.items() if k not in ("matching_time", "Elo", "children")}
    if "children" in node:
        plain["children"] = [without_variant_fields(child) for child in node["children"]]
    return plain


def check_dfs_replay(path: Path, env: QueryEnv | None = None) -> None:
    real = read_json(path)
    env = env or recorded_env(real)
    decisions = recorded_decisions(real["tree"]["tree"])
    result, policy, _ = replay(env, decisions, dfs)
    ours = answer_json(result, seed=path.name)
    mine_tree, their_tree = ours["tree"], real["tree"]
    mine_candidates, their_candidates = ours["compare_candidates"], real["compare_candidates"]
    if "matching_time" in real["tree"]["tree"]:
        mine_tree, their_tree = (
            t | {"tree": without_variant_fields(t["tree"])} for t in (mine_tree, their_tree)
        )
        mine_candidates, their_candidates = (
            [[without_variant_fields(node) for node in chain] for chain in candidates]
            for candidates in (mine_candidates, their_candidates)
        )
    assert mine_tree == their_tree
    assert mine_candidates == their_candidates
    assert (ours["win"], ours["forward_args"]) == (real["win"], real["forward_args"])
    mine, theirs = ours["answer_generation"], real["answer_generation"]
    assert mine["query_count"] == theirs["query_count"] == len(policy.seen)
    for key in ("valid_data", "final_answer", "finish_type", "function", "chain", "query"):
        assert mine[key] == theirs[key], key
    assert sorted(mine) == sorted(theirs)
    if "train_messages" in theirs:
        ours_messages = without_empty_content(mine["train_messages"])
        theirs_messages = without_empty_content(theirs["train_messages"])
        if theirs["finish_type"] == "give_answer":
            assert ours_messages == theirs_messages
        else:  # a give-up chosen at random: theirs and ours are both give-up chains
            chains = give_up_messages(result.root)
            assert theirs_messages in chains and ours_messages in chains


# Three of ToolBench's example answers (G1 57 and 69, G3 8) come from an earlier version of its
# DFS: their trees show the search going back two levels after a node pruned at the depth cap
# (the node's parent never gets a second child), where the published DFS.py, StableToolBench's
# and this port go back one. The other twelve and StableToolBench's three are replayed.
EARLIER_DFS = {"G1_answer/57", "G1_answer/69", "G3_answer/8"}
REPLAYED_DFS = [
    p for p in TOOLBENCH_DFS if f"{p.parent.name}/{p.name.split('_')[0]}" not in EARLIER_DFS
]


@pytest.mark.parametrize("path", REPLAYED_DFS, ids=lambda p: f"{p.parent.name}/{p.name[:3]}")
def test_dfs_replays_toolbench_answers(path: Path, shared: Path) -> None:
    check_dfs_replay(path)


@pytest.mark.parametrize("query_id", STB_IDS)
def test_dfs_replays_stabletoolbench_answers(query_id: str, shared: Path) -> None:
    path = STB_DFS[STB_IDS.index(query_id)]
    system = read_json(path)["answer_generation"]["train_messages"][0][0]["content"]
    check_dfs_replay(path, QueryEnv.from_query(stb_query(query_id), described_tools(system)))


def chain_decisions(nodes: list[dict], messages: list[dict] | None) -> list[Decision]:
    """The model messages of one recorded CoT chain. Its nodes do not show where a thought
    with no call ends a message, so a chain that gave an answer is read from its
    ``train_messages`` (each assistant message, the call's observation from its node);
    otherwise every Thought is taken to continue into the next Action."""
    inputs = [node for node in nodes if node["node_type"] == "Action Input"]
    actions = [node for node in nodes if node["node_type"] == "Action"]
    if messages is None:
        messages, thought = [], None
        for node in nodes:
            if node["node_type"] == "Thought":
                thought = node["description"]
            elif node["node_type"] == "Action":
                messages.append({"role": "assistant", "content": thought, "function_call": {}})
                thought = None
    decisions = []
    for message in (m for m in messages if m["role"] == "assistant"):
        if "function_call" not in message:
            decisions.append(Decision({"role": "assistant", "content": message["content"]}))
            continue
        action, action_input = actions.pop(0), inputs.pop(0)
        decisions.append(
            Decision(
                call(action["description"], action_input["description"], message.get("content")),
                action_input["observation"],
                action_input["observation_code"],
            )
        )
    assert not inputs
    return decisions


@pytest.mark.parametrize("query_id", STB_IDS)
def test_cot_replays_stabletoolbench_answers(query_id: str, shared: Path) -> None:
    path = STB_COT[STB_IDS.index(query_id)]
    real = read_json(path)
    mine_dfs = read_json(STB_DFS[STB_IDS.index(query_id)])
    system = mine_dfs["answer_generation"]["train_messages"][0][0]["content"]
    env = QueryEnv.from_query(stb_query(query_id), described_tools(system))
    trained = real["answer_generation"]["train_messages"]
    decisions = chain_decisions(real["trys"][0]["chain"], trained[-1] if trained else None)
    result, policy, _ = replay(env, decisions, lambda p, e: search("CoT@1", p, e))
    ours = answer_json(result)
    assert list(ours) == list(real)
    for key in ("win", "try_count", "trys", "compare_candidates", "forward_args"):
        assert ours[key] == real[key], key
    mine, theirs = ours["answer_generation"], real["answer_generation"]
    assert list(mine) == list(theirs)
    assert mine["query_count"] == theirs["query_count"] == len(policy.seen)
    for key in ("valid_data", "final_answer", "function", "chain", "query"):
        assert mine[key] == theirs[key], key
    assert without_empty_content(mine["train_messages"]) == without_empty_content(trained)


# --------------------------------------------------------------------------------------------
# DFS: every branch, worked out by hand from ToolBench's DFS.py and Tree.py
# --------------------------------------------------------------------------------------------

WORKED = [
    call("search_for_key_word", {"q": "a"}, "t1"),  # 1: an API call
    finish(None, "t2"),  # 2: a give-up below it
    call("nope", {}, "t3"),  # 3: the root's second child (diversity prompt), a hallucination
    call("search_for_key_word", "{oops", "t4"),  # 4: arguments that are not JSON
    call("similar_for_key_word", {}, "t5"),  # 5
    call("search_for_key_word", {"q": "b"}, "t6"),  # 6: reaches depth 12, pruned there
    finish("the answer", "t7"),  # 7: the second child (diversity prompt again): the answer
]


def echo(request: ToolRequest) -> Observation:
    return Observation("", f"{request.api_name}:{json.dumps(request.tool_input)}", 0)


def observation(response: str) -> str:
    return json.dumps({"error": "", "response": response})


def worked_search(calls: int = 2) -> tuple[SearchResult, Scripted, list]:
    policy = Scripted(WORKED, calls=calls)
    result, requests = drive(dfs(policy, toy_env()), echo)
    return result, policy, requests


def preorder(node: Node) -> list[Node]:
    nodes, stack = [], [node]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(reversed(node.children))
    return nodes


def test_dfs_worked_example_tree() -> None:
    """The decisions of WORKED, through ToolBench's DFS (width 2, depth cap 12).

    Each message has a thought, so a step adds Thought, Action and Action Input, three levels.
    DFS(root) asks 1 → AI1 (depth 3), visited (expand 1); DFS(AI1) asks 2, a give-up: AI2
    (depth 6, code 4) is visited (expand 2), pruned, kept as a give-up and returns 2; AI1 gets
    2 > 1 and returns 1 without a second child; the root gets 1 and asks its second child,
    with the diversity prompt listing AI1's call (the root has no observation). 3 names no
    function: status 1, and the assistant message's name becomes
    invalid_hallucination_function_name. AI3 (expand 3) asks 4: arguments that are not JSON
    get the server's parse error, code 0, with no call made. AI4 (expand 4) asks 5, AI5
    (depth 9, expand 5) asks 6: AI6 is 12 deep, so its visit (expand 6) prunes it and returns
    1; AI5 asks its second child with the diversity prompt (AI6's call, then "again, your
    former observation" with AI5's). 7 answers: AI7 is terminal, make_finish(2) marks AI7,
    A7, T7, AI5 (one Action Input up), A5, T5 and AI4 (two up, where it stops); its visit
    (expand 7) returns 2 and, with one answer found, every level returns 10000."""
    result, policy, requests = worked_search()
    rows = [
        (
            n.node_type,
            n.depth,
            n.expand_num,
            n.pruned,
            n.finished,
            n.observation_code,
            len(n.children),
        )
        for n in preorder(result.root)
    ]
    T, A, AI = "Thought", "Action", "Action Input"
    assert rows == [
        (AI, 0, 0, False, False, None, 2),
        (T, 1, 0, False, False, None, 1),
        (A, 2, 0, False, False, None, 1),
        (AI, 3, 1, False, False, 0, 1),
        (T, 4, 0, False, False, None, 1),
        (A, 5, 0, False, False, None, 1),
        (AI, 6, 2, True, False, 4, 0),
        (T, 1, 0, False, False, None, 1),
        (A, 2, 0, False, False, None, 1),
        (AI, 3, 3, False, False, 1, 1),
        (T, 4, 0, False, False, None, 1),
        (A, 5, 0, False, False, None, 1),
        (AI, 6, 4, False, True, 0, 1),
        (T, 7, 0, False, True, None, 1),
        (A, 8, 0, False, True, None, 1),
        (AI, 9, 5, False, True, 0, 2),
        (T, 10, 0, False, False, None, 1),
        (A, 11, 0, False, False, None, 1),
        (AI, 12, 6, True, False, 0, 0),
        (T, 10, 0, False, True, None, 1),
        (A, 11, 0, False, True, None, 1),
        (AI, 12, 7, False, True, 3, 0),
    ]
    descriptions = [n.description for n in preorder(result.root) if n.node_type == A]
    assert descriptions == [
        "search_for_key_word",
        "Finish",
        "nope",
        "search_for_key_word",
        "similar_for_key_word",
        "search_for_key_word",
        "Finish",
    ]
    assert result.win and len(result.terminal_nodes) == 1 and len(result.give_up_nodes) == 1
    # a step counts once however many role calls it makes (ToolBench: ``self.query_count +=
    # 1`` after each ``llm.parse`` in DFS.py); the seven steps made fourteen role calls
    assert result.query_count == 7 and sum(isinstance(r, Generate) for r in requests) == 14
    assert [r for r in requests if isinstance(r, ToolRequest)] == [
        ToolRequest("Data", "key_word", "search", {"q": "a"}),
        ToolRequest("Data", "key_word", "similar", {}),
        ToolRequest("Data", "key_word", "search", {"q": "b"}),
    ]
    tree = tree_json(result.root)
    assert (tree["size"], tree["max_length"]) == (22, 13)
    assert not any(node["is_terminal"] for node in [tree["tree"]])  # ToolBench writes false


def test_dfs_worked_example_messages() -> None:
    """What each LLM call saw, and the train_messages of the answer: the diversity prompt is
    seen by the call it was made for only (then kept, marked invalid, in the history), and
    a chain's train_messages keep only the last invalid message."""
    result, policy, _ = worked_search()
    env = toy_env()
    system, user = env.initial_messages()
    m = [copy.deepcopy(message) for message in WORKED]
    m[2]["function_call"]["name"] = "invalid_hallucination_function_name"

    def fn(name: str, content: str) -> dict:
        return {"role": "function", "name": name, "content": content}

    f1 = fn("search_for_key_word", observation('search:{"q": "a"}'))
    f3 = fn(
        "invalid_hallucination_function_name",
        json.dumps({"error": "No such function name: nope", "response": ""}),
    )
    f4 = fn("search_for_key_word", json.dumps({"error": TOOL_INPUT_ERROR, "response": ""}))
    f5 = fn("similar_for_key_word", observation("similar:{}"))
    candidate1 = [
        {
            "name": "search_for_key_word",
            "arguments": '{"q": "a"}',
            "function_output": f1["content"],
            "mento-carlo-action-value": 0.0,
        }
    ]
    candidate2 = [
        {
            "name": "search_for_key_word",
            "arguments": '{"q": "b"}',
            "function_output": observation('search:{"q": "b"}'),
            "mento-carlo-action-value": 0.0,
        }
    ]
    d1 = {
        "role": "user",
        "content": DIVERSITY_PROMPT.replace(
            "{previous_candidate}", json.dumps(candidate1, indent=2) + "\n"
        ),
    }
    d2 = {
        "role": "user",
        "content": DIVERSITY_PROMPT.replace(
            "{previous_candidate}",
            json.dumps(candidate2, indent=2)
            + "\n"
            + f"again, your former observation: {f5['content']}\n",
        ),
    }
    assert policy.seen == [
        [system, user],
        [system, user, m[0], f1],
        [system, user, d1],
        [system, user, m[2], f3],
        [system, user, m[2], f3, m[3], f4],
        [system, user, m[2], f3, m[3], f4, m[4], f5],
        [system, user, m[2], f3, m[3], f4, m[4], f5, d2],
    ]
    d1x, d2x = d1 | {"valid": False}, d2 | {"valid": False}
    answer = answer_json(result, seed="worked")
    generation = answer["answer_generation"]
    assert generation["train_messages"] == [
        [system, user, d1x, m[2]],
        [system, user, d1x, m[2], f3, m[3]],
        [system, user, d1x, m[2], f3, m[3], f4, m[4]],
        [system, user, m[2], f3, m[3], f4, m[4], f5, d2x, m[6]],
    ]
    assert generation["final_answer"] == WORKED[6]["function_call"]["arguments"]
    assert (generation["valid_data"], generation["finish_type"], generation["query_count"]) == (
        True,
        "give_answer",
        7,  # steps
    )
    assert answer["win"] is True
    assert answer["compare_candidates"] == [result.terminal_nodes[0].chain_result()]
    assert [n["node_type"] for n in answer["compare_candidates"][0]] == [
        "Thought",
        "Action",
        "Action Input",
    ] * 4


def test_dfs_give_up_at_the_first_step_ends_the_search() -> None:
    """A give-up returns 2: the root's loop gets 2 > 1 and returns, so a give-up right below
    the root ends the search (ToolBench's semantics) with a give_up answer."""
    policy = Scripted([finish(None, "no tools work")])
    result, requests = drive(dfs(policy, toy_env()), echo)
    assert result.query_count == 1 and len(policy.seen) == 1
    generation = answer_json(result, seed=1)["answer_generation"]
    assert (generation["valid_data"], generation["finish_type"]) == (True, "give_up")
    assert generation["final_answer"] == json.dumps({"return_type": "give_up_and_restart"})
    assert generation["train_messages"] == [
        toy_env().initial_messages() + [finish(None, "no tools work")]
    ]


def test_dfs_call_cap() -> None:
    """With ``count_role_calls``, two LLM calls per step, no thoughts (a step adds two
    levels), every call an API call: a full width-2 tree to depth 12 would take 126 steps; at
    200 calls the 100th step's output is dropped (ToolBench returns before building its nodes)
    and the search ends. By default a step counts once, as ToolBench counts one per
    ``llm.parse``."""
    forever = [call("search_for_key_word", {"q": str(i)}) for i in range(200)]
    policy = Scripted(forever, calls=2)
    result, requests = drive(dfs(policy, toy_env(), count_role_calls=True), echo)
    assert result.query_count == 200 == sum(isinstance(r, Generate) for r in requests)
    assert len(policy.seen) == 100 and result.hit_query_cap
    assert sum(isinstance(r, ToolRequest) for r in requests) == 99  # the dropped step: no call
    assert result.root.size() == 1 + 99 * 2
    assert sorted(
        n.expand_num for n in preorder(result.root) if n.node_type == "Action Input"
    ) == list(range(100))
    generation = answer_json(result)["answer_generation"]
    assert (generation["valid_data"], generation["final_answer"], generation["query_count"]) == (
        False,
        "",
        200,
    )
    assert "train_messages" not in generation
    # a cap between a step's two calls: the policy is stopped before the call past it
    policy = Scripted(forever, calls=2)
    capped = dfs(policy, toy_env(), max_query_count=7, count_role_calls=True)
    result, requests = drive(capped, echo)
    assert sum(isinstance(r, Generate) for r in requests) == 7 == result.query_count
    assert len(policy.seen) == 4 and result.root.size() == 1 + 3 * 2
    # one count per step (the default), whatever the calls: the fifth step's output is
    # dropped at a cap of 5
    for calls in (1, 2):
        policy = Scripted(forever, calls=calls)
        result, requests = drive(dfs(policy, toy_env(), max_query_count=5), echo)
        assert result.query_count == 5 and result.root.size() == 1 + 4 * 2
        assert sum(isinstance(r, Generate) for r in requests) == 5 * calls
    # with the default cap, 126 steps fill the tree and the cap of 200 steps never binds
    result, _ = drive(dfs(Scripted(forever, calls=2), toy_env()), echo)
    assert result.query_count == 126 and not result.hit_query_cap


def test_depth_cap_counts_nodes_not_steps() -> None:
    """ToolBench's single_chain_max_step bounds the depth of nodes: six steps without
    thoughts, four with them."""
    plain = Scripted([call("similar_for_key_word", {})] * 10)
    result, _ = drive(cot(plain, toy_env(), n=1), echo)
    assert len(plain.seen) == 6 and result.terminal_nodes[0].depth == 12
    thinking = Scripted([call("similar_for_key_word", {}, "hm")] * 10)
    result, _ = drive(cot(thinking, toy_env(), n=1), echo)
    assert len(thinking.seen) == 4 and result.terminal_nodes[0].pruned


def test_a_failed_model_call_is_thrown_into_the_policy() -> None:
    """The driver throws a failed role call into the search; the policy may handle it."""

    class Fallback:
        def decide(self, messages, functions):
            try:
                yield Generate("planner", "p")
            except RuntimeError:
                return finish(None, "the model failed")
            return call("similar_for_key_word", {})

    gen = dfs(Fallback(), toy_env())
    assert isinstance(next(gen), Generate)
    with pytest.raises(StopIteration) as stop:
        gen.throw(RuntimeError("endpoint down"))
    result = stop.value.value
    assert result.query_count == 1 and result.give_up_nodes[0].observation_code == 4

    class Unhandled:
        def decide(self, messages, functions):
            yield Generate("planner", "p")
            return call("similar_for_key_word", {})

    gen = dfs(Unhandled(), toy_env())
    next(gen)
    with pytest.raises(RuntimeError, match="endpoint down"):
        gen.throw(RuntimeError("endpoint down"))


@pytest.mark.parametrize("search_of", [partial(dfs, width=1), partial(cot, n=1)])
def test_continue_on_model_error_goes_on_from_the_error_text(search_of) -> None:
    """ToolBench's ChatGPT client, its tries spent, answers
    ``return {"role": "assistant", "content": str(json_data)}, -1, 0``
    (toolbench/inference/LLM/chatgpt_function_model.py), and DFS and CoT add that message
    and go on. ``continue_on_model_error`` does the same: the next step sees the error."""

    class Recording:
        def __init__(self):
            self.seen = []

        def decide(self, messages, functions):
            self.seen.append(messages)
            yield Generate("planner", "p")
            return finish("done", "the answer")

    policy = Recording()
    gen = search_of(policy, toy_env(), continue_on_model_error=True)
    assert isinstance(next(gen), Generate)
    second = gen.throw(RuntimeError("endpoint down after 3 tries"))
    assert isinstance(second, Generate)  # the search went on to the next step
    with pytest.raises(StopIteration) as stop:
        gen.send("ok")
    result = stop.value.value
    assert policy.seen[1][-1] == {"role": "assistant", "content": "endpoint down after 3 tries"}
    assert result.query_count == 2 and result.model_errors == 1
    assert [n.is_terminal for n in result.terminal_nodes] == [True]


def test_policy_gets_copies_and_must_return_an_assistant_message() -> None:
    class Vandal:
        def decide(self, messages, functions):
            messages[0]["content"] = "changed"
            messages.append({"role": "user", "content": "x"})
            return finish("done")
            yield

    result, _ = drive(dfs(Vandal(), toy_env()), echo)
    assert result.root.messages == toy_env().initial_messages()

    class Wrong:
        def decide(self, messages, functions):
            return {"role": "user", "content": "hi"}
            yield

    with pytest.raises(ValueError, match="assistant message"):
        drive(dfs(Wrong(), toy_env()), echo)
    with pytest.raises(ValueError, match="a thought or a function call"):
        drive(dfs(Scripted([{"role": "assistant", "content": None}]), toy_env()), echo)


# --------------------------------------------------------------------------------------------
# CoT@n
# --------------------------------------------------------------------------------------------


def test_cot_stops_at_the_first_answer() -> None:
    """CoT@3: a give-up ends the first chain (pruned), the second answers, the third never
    starts. ToolBench records each chain's "win" before counting the chain itself."""
    script = [
        call("search_for_key_word", {"q": "a"}),
        finish(None),
        call("similar_for_key_word", {}, "again"),
        finish("found it"),
        call("search_for_key_word", {"q": "never"}),
    ]
    policy = Scripted(script, calls=2)
    result, _ = drive(search("CoT@3", policy, toy_env()), echo)
    assert len(policy.seen) == 4 and result.query_count == 4  # steps, not role calls
    assert policy.seen[2] == toy_env().initial_messages()  # each chain starts afresh
    answer = answer_json(result)
    real = read_json(STB_COT[0])
    assert list(answer) == list(real)
    assert list(answer["answer_generation"]) == list(real["answer_generation"])
    assert answer["win"] is True and answer["try_count"] == 2
    assert [t["win"] for t in answer["trys"]] == [False, False]
    assert [[n["node_type"] for n in t["chain"]] for t in answer["trys"]] == [
        ["Action", "Action Input"] * 2,
        ["Thought", "Action", "Action Input", "Action", "Action Input"],
    ]
    assert (
        answer["trys"][0]["chain"][-1]["pruned"]
        and answer["trys"][0]["chain"][-1]["observation_code"] == 4
    )
    assert not any(n["finished"] or n["expand_num"] for t in answer["trys"] for n in t["chain"])
    assert answer["forward_args"] == {"single_chain_max_step": 12, "pass_at": 3, "answer": 1}
    generation = answer["answer_generation"]
    assert (
        generation["valid_data"]
        and generation["final_answer"] == script[3]["function_call"]["arguments"]
    )
    assert len(generation["train_messages"]) == 2
    assert answer["compare_candidates"] == [answer["trys"][1]["chain"]]


def test_cot_without_an_answer() -> None:
    script = [call("similar_for_key_word", {}, "t")] * 4 + [finish(None)]
    result, _ = drive(cot(Scripted(script), toy_env(), n=2), echo)
    answer = answer_json(result)
    assert answer["win"] is False and answer["try_count"] == 2
    assert [t["chain"][-1]["depth"] for t in answer["trys"]] == [12, 2]
    generation = answer["answer_generation"]
    assert (generation["valid_data"], generation["final_answer"], generation["train_messages"]) == (
        False,
        "",
        [],
    )
    assert answer["compare_candidates"] == []


def test_parse_method() -> None:
    assert (parse_method("CoT@1").kind, parse_method("CoT@1").n) == ("CoT", 1)
    assert parse_method("CoT@12").n == 12
    assert (parse_method("DFS_woFilter_w2").kind, parse_method("DFS_woFilter_w2").n) == ("DFS", 2)
    assert parse_method("DFS_woFilter_w3").n == 3
    with pytest.raises(ValueError, match="not supported"):
        parse_method("DFS_w2")
    for bad in ("CoT@0", "CoT@", "cot@1", "BFS", "DFS_woFilter_w0", "DFS_woFilter_w2 ", ""):
        with pytest.raises(ValueError, match="CoT@n or DFS_woFilter_wN"):
            parse_method(bad)
    result, _ = drive(search("DFS_woFilter_w3", Scripted([finish("x")]), toy_env()), echo)
    assert result.method == "DFS_woFilter_w3" and result.forward_args["tree_beam_size"] == 3


# --------------------------------------------------------------------------------------------
# Answer files: ToolEval's converter and the training data read them
# --------------------------------------------------------------------------------------------


def written_answers(folder: Path) -> dict[str, Path]:
    """Answer files of every kind, written as the agent writes them."""
    searches = {
        "1": ("DFS_woFilter_w2", lambda: dfs(Scripted(WORKED, calls=2), toy_env())),
        "2": ("DFS_woFilter_w2", lambda: dfs(Scripted([finish(None, "stuck")]), toy_env())),
        "3": (
            "DFS_woFilter_w2",
            lambda: dfs(
                Scripted([call("similar_for_key_word", {})] * 9), toy_env(), max_query_count=5
            ),
        ),
        "4": (
            "CoT@2",
            lambda: cot(
                Scripted([call("search_for_key_word", {"q": "é"}, "t"), finish("done")]),
                toy_env(),
                n=2,
            ),
        ),
        "5": ("CoT@2", lambda: cot(Scripted([finish(None)] * 2), toy_env(), n=2)),
    }
    paths = {}
    for query_id, (method, make) in searches.items():
        result, _ = drive(make(), echo)
        paths[query_id] = answer_path(folder, query_id, method)
        write_answer(paths[query_id], answer_json(result, seed=query_id))
    return paths


def test_answer_files_pass_through_tooleval_and_process_data(tmp_path: Path) -> None:
    folder = tmp_path / "answers" / "G1_instruction"
    folder.mkdir(parents=True)
    paths = written_answers(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "1_DFS_woFilter_w2.json",
        "2_DFS_woFilter_w2.json",
        "3_DFS_woFilter_w2.json",
        "4_CoT@2.json",
        "5_CoT@2.json",
    ]
    dfs_converted = convert_dir(folder, "DFS_woFilter_w2")
    cot_converted = convert_dir(folder, "CoT@2")
    assert sorted(dfs_converted) == ["1", "2", "3"] and sorted(cot_converted) == ["4", "5"]
    worked = dfs_converted["1"]["answer"]
    assert worked["final_answer"] == WORKED[6]["function_call"]["arguments"]
    tools = [
        d["message"]["name"] for d in _flatten(worked["answer_details"]) if d["role"] == "tool"
    ]
    assert tools == [
        "invalid_hallucination_function_name",
        "search_for_key_word",
        "similar_for_key_word",
        "Finish",
    ]
    assert dfs_converted["3"]["answer"]["final_answer"] == ""  # no answer: a walk of the tree
    valid = {"1": "conclusion", "2": "give up", "4": "conclusion"}
    for query_id, path in paths.items():
        answer = read_json(path)
        if query_id not in valid:
            with pytest.raises(ValueError, match="valid_data: false"):
                to_stage1(answer, compat=False)
            continue
        stage1 = to_stage1(answer, compat=False)
        assert stage1["instruction"] == "find things"
        assert [t["Name"] for t in stage1["tools"]] == [
            "search_for_key_word",
            "similar_for_key_word",
        ]
        conversation = to_stage2(stage1, compat=False)["conversations"]
        assert conversation[0] == {"from": "user", "value": "find things"}
        last = conversation[-1] if valid[query_id] == "give up" else conversation[-2]
        assert last["value"].endswith(f"Next: {valid[query_id]}.")
        result = from_answer(AnswerFile(str(path), "G1", query_id), Options())
        assert result.problems == [], result.problems
        calls = 0 if query_id == "2" else 1  # the give-up is the only step of 2
        assert result.samples["backbone"] > 0 and result.samples["planner"] > 0
        assert (result.samples["caller"] > 0) == bool(calls)
        assert result.samples["summarizer"] == (1 if valid[query_id] == "conclusion" else 0)


def _flatten(steps: list[dict]) -> list[dict]:
    found = []
    while steps:
        step = steps[0]
        found.append(step)
        steps = step["next"]
    return found


def test_replayed_answers_convert_as_stabletoolbench_converted_them(
    tmp_path: Path, shared: Path
) -> None:
    """StableToolBench's three DFS answers, rebuilt by replaying their decisions and written
    by write_answer, convert to exactly what StableToolBench shipped for the originals."""
    folder = tmp_path / "G1_instruction"
    folder.mkdir()
    for query_id, path in zip(STB_IDS, STB_DFS, strict=True):
        system = read_json(path)["answer_generation"]["train_messages"][0][0]["content"]
        env = QueryEnv.from_query(stb_query(query_id), described_tools(system))
        result, _, _ = replay(env, recorded_decisions(read_json(path)["tree"]["tree"]), dfs)
        write_answer(
            answer_path(folder, query_id, "DFS_woFilter_w2"), answer_json(result, seed=query_id)
        )
    shipped = (
        STB_ANSWERS.parent
        / "model_predictions_converted"
        / "virtual_chatgpt_dfs"
        / "G1_instruction.json"
    )
    assert convert_dir(folder, "DFS_woFilter_w2") == read_json(shipped)


def test_write_answer_is_atomic(tmp_path: Path) -> None:
    path = answer_path(tmp_path, 7, "CoT@1")
    answer = {"answer_generation": {"final_answer": "café"}, "win": True}
    write_answer(path, answer)
    assert path.read_text() == json.dumps(answer, indent=2)  # as ToolBench writes: ASCII, indent 2
    assert read_json(path) == answer
    # a value that cannot be written: the old file stays whole and nothing else is left
    with pytest.raises(TypeError):
        write_answer(path, {"answer_generation": {"final_answer": object()}})
    assert read_json(path) == answer
    assert os.listdir(tmp_path) == [path.name]
    # and where there was no file, there is none
    fresh = answer_path(tmp_path, 8, "CoT@1")
    with pytest.raises(TypeError):
        write_answer(fresh, {"bad": {1, 2}})
    assert not fresh.exists() and os.listdir(tmp_path) == [path.name]
    # a folder that cannot be written: the error surfaces, nothing is left behind
    with pytest.raises(FileNotFoundError):
        write_answer(tmp_path / "missing" / "1_CoT@1.json", answer)


def test_give_up_choice_is_seeded() -> None:
    """With several give-ups and no answer, ToolBench picks one at random; here the query's
    seed picks it, so a re-run writes the same file."""
    script = [
        call("similar_for_key_word", {}),
        finish(None),
        call("similar_for_key_word", {}),
        finish(None),
    ]
    picks = set()
    for seed in range(12):
        result, _ = drive(dfs(Scripted(script), toy_env()), echo)
        assert len(result.give_up_nodes) == 2
        first = answer_json(result, seed=seed)
        assert first == answer_json(result, seed=seed)
        picks.add(json.dumps(first["answer_generation"]["train_messages"]))
    assert len(picks) == 2


# --------------------------------------------------------------------------------------------
# Several calls of one model output, run as one plan (--parallel_calls)
# --------------------------------------------------------------------------------------------


def parallel(thought: str | None, *calls: tuple[str, str | dict]) -> dict:
    """A message holding several calls, as a policy with ``parallel=True`` returns it."""
    listed = [
        {"name": name, "arguments": a if isinstance(a, str) else json.dumps(a)} for name, a in calls
    ]
    message = call(listed[0]["name"], listed[0]["arguments"], thought)
    message[PARALLEL_CALLS] = listed
    return message


def key_word(api: str, tool_input: dict) -> ToolRequest:
    """A request of the toy environment's tool."""
    return ToolRequest("Data", "key_word", api, tool_input)


def function(name: str, content: str) -> dict:
    return {"role": "function", "name": name, "content": content}


def test_step_plan_answers_each_call_as_step_does() -> None:
    env = toy_env(max_observation_length=40)
    calls = [
        ("nope", "{}"),
        ("search_for_key_word", "{oops"),
        ("search_for_key_word", '{"q": "a"}'),
        ("similar_for_key_word", {"like": "$3"}),
    ]
    results, requests = drive(env.step_plan(calls), echo)
    # the calls that make a request go together, with their positions as ids, $N as written
    assert requests == [
        ToolPlan(
            (
                PlannedCall(3, "search_for_key_word", key_word("search", {"q": "a"})),
                PlannedCall(4, "similar_for_key_word", key_word("similar", {"like": "$3"})),
            )
        )
    ]
    assert results == [drive(env.step(name, arguments), echo)[0] for name, arguments in calls]
    assert results[0][1] == 1 and results[0][0].endswith("...")  # cut, as step cuts
    # no call that makes a request: nothing is asked
    calls = [("nope", "{}"), ("Finish", '{"return_type": "give_up_and_restart"}')]
    results, requests = drive(env.step_plan(calls), echo)
    assert requests == [] and [status for _, status in results] == [1, 4]
    # an answer without an observation for every call is a driver's bug, said as such
    gen = env.step_plan([("similar_for_key_word", "{}"), ("similar_for_key_word", "{}")])
    assert isinstance(next(gen), ToolPlan)
    with pytest.raises(ValueError, match="no observation for call 2"):
        gen.send({1: Observation("", "x", 0)})


PLANNED = [
    parallel("t1", ("search_for_key_word", {"q": "a"}), ("similar_for_key_word", {"like": "$1"})),
    finish("the answer", "t2"),
]


def planned_search() -> tuple[SearchResult, Scripted, list]:
    policy = Scripted(copy.deepcopy(PLANNED), calls=2)
    result, requests = drive(dfs(policy, toy_env()), echo)
    return result, policy, requests


def test_a_message_with_several_calls_runs_them_as_one_plan() -> None:
    """One ToolPlan for both calls; then an Action and an Action Input node per call, and the
    messages of two consecutive calls (the second without a thought)."""
    result, policy, requests = planned_search()
    assert [r for r in requests if not isinstance(r, Generate)] == [
        ToolPlan(
            (
                PlannedCall(1, "search_for_key_word", key_word("search", {"q": "a"})),
                PlannedCall(2, "similar_for_key_word", key_word("similar", {"like": "$1"})),
            )
        )
    ]
    T, A, AI = "Thought", "Action", "Action Input"
    final = PLANNED[1]["function_call"]["arguments"]
    nodes = preorder(result.root)
    assert [(n.node_type, n.depth, n.description, n.observation_code) for n in nodes] == [
        (AI, 0, "", None),
        (T, 1, "t1", None),
        (A, 2, "search_for_key_word", None),
        (AI, 3, '{"q": "a"}', 0),
        (A, 4, "similar_for_key_word", None),
        (AI, 5, '{"like": "$1"}', 0),
        (T, 6, "t2", None),
        (A, 7, "Finish", None),
        (AI, 8, final, 3),
    ]
    assert result.win and result.query_count == 2  # two steps
    first, second = PLANNED[0][PARALLEL_CALLS]
    start = toy_env().initial_messages()
    chain = [
        {"role": "assistant", "content": "t1", "function_call": first},
        function("search_for_key_word", observation('search:{"q": "a"}')),
        {"role": "assistant", "content": None, "function_call": second},
        function("similar_for_key_word", observation('similar:{"like": "$1"}')),
    ]
    assert policy.seen == [start, start + chain]
    answer = answer_json(result, seed=1)
    assert PARALLEL_CALLS not in json.dumps(answer)
    finished = start + chain + [PLANNED[1]]
    assert answer["answer_generation"]["train_messages"][-1] == finished


def test_an_answer_with_a_plan_passes_through_tooleval_and_process_data(tmp_path: Path) -> None:
    folder = tmp_path / "G1_instruction"
    folder.mkdir()
    result, _, _ = planned_search()
    path = answer_path(folder, "1", "DFS_woFilter_w2")
    write_answer(path, answer_json(result, seed="1"))
    assert PARALLEL_CALLS not in path.read_text()
    converted = convert_dir(folder, "DFS_woFilter_w2")["1"]["answer"]
    assert converted["final_answer"] == PLANNED[1]["function_call"]["arguments"]
    details = _flatten(converted["answer_details"])
    tools = [d["message"]["name"] for d in details if d["role"] == "tool"]
    assert tools == ["search_for_key_word", "similar_for_key_word", "Finish"]
    processed = from_answer(AnswerFile(str(path), "G1", "1"), Options())
    assert processed.problems == [], processed.problems
    assert processed.samples["caller"] == 2 and processed.samples["summarizer"] == 1


def test_a_plan_with_calls_that_make_no_request() -> None:
    """An unknown name and arguments that are not JSON get step's answers among the planned
    calls; the unknown name is renamed in the messages, as a single call's is."""
    message = parallel(
        None, ("nope", {}), ("search_for_key_word", "{oops"), ("similar_for_key_word", {})
    )
    policy = Scripted([message, finish("done")])
    result, requests = drive(cot(policy, toy_env()), echo)
    assert [r for r in requests if not isinstance(r, Generate)] == [
        ToolPlan((PlannedCall(3, "similar_for_key_word", key_word("similar", {})),))
    ]
    A, AI = "Action", "Action Input"
    path = result.terminal_nodes[0].path()
    assert [(n.node_type, n.description, n.observation_code) for n in path[:6]] == [
        (A, "nope", None),
        (AI, "{}", 1),
        (A, "search_for_key_word", None),
        (AI, "{oops", 0),
        (A, "similar_for_key_word", None),
        (AI, "{}", 0),
    ]
    seen = policy.seen[1][2:]
    assert seen[0]["function_call"] == {"name": HALLUCINATED_NAME, "arguments": "{}"}
    assert seen[1]["name"] == HALLUCINATED_NAME and "No such function name" in seen[1]["content"]
    assert seen[2]["function_call"] == {"name": "search_for_key_word", "arguments": "{oops"}
    assert json.loads(seen[3]["content"]) == {"error": TOOL_INPUT_ERROR, "response": ""}
    assert seen[5] == function("similar_for_key_word", observation("similar:{}"))
    assert len(seen) == 6 and PARALLEL_CALLS not in json.dumps(seen)


def test_parallel_calls_of_one_call_or_that_a_search_refuses() -> None:
    # one call: the ordinary step, and the key is gone
    policy = Scripted([parallel("t", ("similar_for_key_word", {})), finish("done")])
    _, requests = drive(cot(policy, toy_env()), echo)
    assert [r for r in requests if not isinstance(r, Generate)] == [
        ToolRequest("Data", "key_word", "similar", {})
    ]
    assert PARALLEL_CALLS not in json.dumps(policy.seen)
    # Finish among them, or a first call that is not the message's own: a policy's bug
    bad_finish = parallel("t", ("similar_for_key_word", {}), ("Finish", "{}"))
    other_first = parallel("t", ("similar_for_key_word", {}), ("search_for_key_word", {}))
    other_first["function_call"] = {"name": "search_for_key_word", "arguments": "{}"}
    for message, why in ((bad_finish, "Finish cannot"), (other_first, "must be the function")):
        with pytest.raises(ValueError, match=why):
            drive(cot(Scripted([message]), toy_env()), echo)
