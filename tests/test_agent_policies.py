"""The real-time agent's policies: their prompts are the training inputs of the same history.

Each real answer file (ToolBench's and StableToolBench's examples) is replayed step by step:
the policy is given the chain's messages before a step and sent the gold outputs of that step
(the planner turn, the call or the answer, or the backbone's merged turn, as process_data
writes the targets). Every prompt it asks must equal the input of the training sample that
process_data makes of that step, in α-UMi's format and in the chat format, and the messages it
returns must convert back into the same training conversation.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path

import pytest
from conftest import STB_ANSWERS, TOOLBENCH_EXAMPLE, read_json

from inference_utils.agent.policies import (
    UNPARSED_ARGUMENTS,
    UNPARSED_NAME,
    BackbonePolicy,
    MultiLLMPolicy,
    make_policy,
)
from inference_utils.agent.search import PARALLEL_CALLS
from inference_utils.search_requests import Generate
from process_data.protocol import (
    ACTION_PREFIX,
    ASSISTANT,
    BACKBONE_CONCLUSION_PREFIX,
    CALLER,
    CONCLUSION,
    FINISH,
    GIVE_ANSWER,
    GIVE_UP_AND_RESTART,
    HALLUCINATED_NAME,
    build_prompt,
    format_action,
    format_backbone,
    format_plan,
    parse_action,
    parse_decision,
    render_turn,
)
from process_data.toolbench.pipeline import Options, from_answer
from process_data.toolbench.roles import build_role_steps
from process_data.toolbench.stage1 import AnswerFile, convert_tools
from process_data.toolbench.stage2 import to_stage2


def answer_files() -> list[Path]:
    files = sorted(TOOLBENCH_EXAMPLE.glob("answer/G*_answer/*.json"))
    files += sorted(STB_ANSWERS.glob("*/G1_instruction/*.json"))
    return [f for f in files if read_json(f)["answer_generation"].get("train_messages")]


def run(gen: Generator, outputs: list[str]) -> tuple[list[Generate], dict]:
    """Drive a policy's generator, sending ``outputs`` in turn; its requests and its message."""
    requests = [next(gen)]
    for k, text in enumerate(outputs):
        try:
            requests.append(gen.send(text))
        except StopIteration as stop:
            assert k == len(outputs) - 1, "the policy stopped before all outputs were sent"
            return requests, stop.value
    raise AssertionError("the policy asked for more than the script holds")


def samples(path: Path, fmt: str) -> dict[str, list[dict]]:
    """process_data's training samples of one answer file, per role."""
    group = path.parent.name.split("_")[0]
    result = from_answer(AnswerFile(str(path), group, path.name.split("_")[0]), Options(fmt=fmt))
    assert not result.problems, result.problems
    return {role: [json.loads(s) for s in encoded] for role, encoded in result.roles.items()}


class Replay:
    """The steps of an answer file's chain: for each assistant message with a function call,
    the messages before it (thought-only messages just before it belong to its step, as stage
    2 merges them into its planner turn), its planner turn and the turn that follows it."""

    def __init__(self, path: Path):
        generation = read_json(path)["answer_generation"]
        self.query = generation["query"]
        self.functions = generation["function"]
        self.chain = generation["train_messages"][-1]
        self.tools = convert_tools(self.functions)
        self.conv = self.conversation(self.chain)
        plans = [i for i, t in enumerate(self.conv) if t["from"] == ASSISTANT]
        calls = [j for j, m in enumerate(self.chain) if "function_call" in m]
        assert len(plans) == len(calls)
        self.steps = []  # (first message of the step, its call message, planner turn, next)
        for i, j in zip(plans, calls, strict=True):
            start = j
            while self.chain[start - 1]["role"] == "assistant" and (
                "function_call" not in self.chain[start - 1]
            ):
                start -= 1
            nxt = self.conv[i + 1] if i + 1 < len(self.conv) else None
            follow = nxt if nxt is not None and nxt["from"] in (CALLER, CONCLUSION) else None
            self.steps.append((start, j, self.conv[i]["value"], follow))

    def conversation(self, chain: list[dict]) -> list[dict]:
        record = {"instruction": self.query, "chains": chain, "tools": self.tools}
        return to_stage2(record, compat=False)["conversations"]

    def with_messages(self, replayed: list[dict]) -> list[dict]:
        """The chain with each step's messages replaced by the agent's message."""
        out, done = [], 0
        for (start, call, _, _), message in zip(self.steps, replayed, strict=True):
            out += [*self.chain[done:start], message]
            done = call + 1
        return out + self.chain[done:]


FILES = answer_files()
BACKBONE_MARKERS = ("\n" + ACTION_PREFIX, BACKBONE_CONCLUSION_PREFIX)


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_multi_llm_prompts_equal_the_training_inputs(path: Path) -> None:
    replay = Replay(path)
    trained = {fmt: samples(path, fmt) for fmt in ("alpha_umi", "chat")}
    asked: dict[str, list[Generate]] = {"planner": [], "caller": [], "summarizer": []}
    replayed = []
    for start, _, plan, follow in replay.steps:
        policy = MultiLLMPolicy(replay.query, ("q", 7), chat=True)
        outputs = [plan] + ([follow["value"]] if follow is not None else [])
        requests, message = run(policy.decide(replay.chain[:start], replay.functions), outputs)
        follower = {CALLER: "caller", CONCLUSION: "summarizer"}.get(follow and follow["from"])
        assert [r.role for r in requests] == ["planner", *([follower] if follower else [])]
        hallucinated = follower == "caller" and HALLUCINATED_NAME in follow["value"]
        for request in requests:
            assert request.session == (("q", 7), request.role)
            if hallucinated or (request.role == "summarizer" and follow["value"] == "none"):
                continue  # process_data trains no such step
            asked[request.role].append(request)
        replayed.append(message)
    assert asked["planner"] and (asked["caller"] or asked["summarizer"])
    for role, requests in asked.items():
        inputs = [s["input"] for s in trained["alpha_umi"].get(role, [])]
        assert [r.prompt for r in requests] == inputs, role
        chats = trained["chat"].get(role, [])
        assert [list(r.messages) for r in requests] == [c["messages"][:-1] for c in chats], role
        assert [r.tools for r in requests] == [
            tuple(c["tools"]) if role == "caller" else None for c in chats
        ]
    # the messages the agent returned make the same training conversation
    assert replay.conversation(replay.with_messages(replayed)) == replay.conv


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_backbone_prompts_equal_the_training_inputs(path: Path) -> None:
    replay = Replay(path)
    trained = samples(path, "alpha_umi")["backbone"]
    chats = samples(path, "chat")["backbone"]
    requests, replayed = [], []
    for start, call, plan, follow in replay.steps:
        decision = parse_decision(plan).kind
        output = format_backbone(plan, decision, follow["value"] if follow else None)
        policy = BackbonePolicy(replay.query, "q", chat=True)
        asked, message = run(policy.decide(replay.chain[:start], replay.functions), [output])
        requests += asked
        replayed.append(message)
        if decision == "caller":
            assert message["function_call"] == replay.chain[call]["function_call"]
    assert [r.prompt for r in requests] == [s["input"] for s in trained]
    assert [list(r.messages) for r in requests] == [c["messages"][:-1] for c in chats]
    assert all(r.tools == tuple(chats[0]["tools"]) for r in requests)
    assert all(r.session == ("q", "backbone") for r in requests)
    # the backbone's own training data, made from its messages, is the same, where the
    # format can say it: a thought holding "\nAction: " or "\nconclusion: " reads as the call
    # or the answer (α-UMi's backbone format has no escape for them)
    thoughts = [parse_decision(plan).thought or "" for _, _, plan, _ in replay.steps]
    if not any(marker in t for t in thoughts for marker in BACKBONE_MARKERS):
        rebuilt = replay.conversation(replay.with_messages(replayed))
        assert _backbone_view(replay, rebuilt) == _backbone_view(replay, replay.conv)


def _backbone_view(replay: Replay, conv: list[dict]) -> list[tuple[str | None, str]]:
    """The backbone's training samples of a conversation: (input, target) pairs."""
    record = {"tools": replay.tools, "conversations": conv}
    return [(s.input, s.target) for s in build_role_steps("backbone", record, False).steps]


# -- each decision path, with scripted outputs --------------------------------------------------

FUNCTIONS = [
    {
        "name": "weather_for_meteo",
        "description": "The weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "a city name"}},
            "required": ["city"],
        },
    },
    {
        "name": FINISH,
        "description": "Finish the task.",
        "parameters": {"type": "object", "properties": {}},
    },
]
QUERY = "What is the weather in Oslo?"
START = [
    {"role": "system", "content": "You are AutoGPT..."},
    {"role": "user", "content": f"\n{QUERY}\nBegin!\n"},
]
TOOLS = convert_tools(FUNCTIONS)
USER_TURN = render_turn("user", QUERY)
SUNNY = json.dumps({"error": "", "response": "sunny"})


def test_caller_path() -> None:
    plan = "I should look up the weather in Oslo.\n Next: caller."
    call = format_action("weather_for_meteo", '{"city": "Oslo"}')
    requests, message = run(MultiLLMPolicy(QUERY, 1).decide(START, FUNCTIONS), [plan, call])
    assert [r.role for r in requests] == ["planner", "caller"]
    assert requests[0].prompt == build_prompt("planner", TOOLS, USER_TURN)
    assert requests[1].prompt == build_prompt(
        "caller", TOOLS, USER_TURN + render_turn(ASSISTANT, plan), thought=plan
    )
    assert requests[0].messages is None and requests[0].tools is None
    assert message == {
        "role": "assistant",
        "content": "I should look up the weather in Oslo.",
        "function_call": {"name": "weather_for_meteo", "arguments": '{"city": "Oslo"}'},
    }


def test_a_planner_output_without_marker_is_a_call_and_is_written_as_one() -> None:
    requests, message = run(
        MultiLLMPolicy(QUERY, 1).decide(START, FUNCTIONS),
        ["look it up", format_action("weather_for_meteo", "{}")],
    )
    turn = format_plan("look it up", "caller")
    assert requests[1].prompt == build_prompt(
        "caller", TOOLS, USER_TURN + render_turn(ASSISTANT, turn), thought=turn
    )
    assert message["content"] == "look it up"
    assert message["function_call"]["name"] == "weather_for_meteo"


def test_the_caller_and_summarizer_see_the_planner_turn_as_training_writes_it() -> None:
    """A planner that writes its marker on the thought's line: the caller's prompt holds the
    turn as the answer file will give it to training (thought, newline, marker)."""
    requests, message = run(
        MultiLLMPolicy(QUERY, 1).decide(START, FUNCTIONS),
        ["Call it. Next: caller. and then more", format_action("weather_for_meteo", "{}")],
    )
    turn = format_plan("Call it.", "caller")
    assert requests[1].prompt == build_prompt(
        "caller", TOOLS, USER_TURN + render_turn(ASSISTANT, turn), thought=turn
    )
    assert message["content"] == "Call it."


def test_conclusion_path() -> None:
    history = START + [
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "weather_for_meteo", "arguments": '{"city": "Oslo"}'},
        },
        {"role": "function", "name": "weather_for_meteo", "content": SUNNY},
    ]
    plan = "I know the answer.\n Next: conclusion."
    requests, message = run(
        MultiLLMPolicy(QUERY, 1).decide(history, FUNCTIONS), [plan, "It is sunny in Oslo."]
    )
    assert [r.role for r in requests] == ["planner", "summarizer"]
    seen = (
        USER_TURN
        + render_turn(ASSISTANT, format_plan(None, "caller"))
        + render_turn(CALLER, format_action("weather_for_meteo", '{"city": "Oslo"}'))
        + render_turn("observation", "sunny")
    )
    assert requests[0].prompt == build_prompt("planner", TOOLS, seen)
    assert requests[1].prompt == build_prompt(
        "summarizer", TOOLS, seen + render_turn(ASSISTANT, plan)
    )
    assert message["content"] == "I know the answer."
    assert message["function_call"]["name"] == FINISH
    assert json.loads(message["function_call"]["arguments"]) == {
        "return_type": GIVE_ANSWER,
        "final_answer": "It is sunny in Oslo.",
    }


def test_give_up_path_asks_nothing_else() -> None:
    requests, message = run(
        MultiLLMPolicy(QUERY, 1).decide(START, FUNCTIONS), ["No tool helps.\n Next: give up."]
    )
    assert [r.role for r in requests] == ["planner"]
    assert message["content"] == "No tool helps."
    assert json.loads(message["function_call"]["arguments"]) == {"return_type": GIVE_UP_AND_RESTART}


@pytest.mark.parametrize(
    "output",
    ["I do not know", "Action: weather_for_meteo", "Action Input: {}", "none"],
)
def test_an_unreadable_call_names_a_function_the_environment_rejects(output: str) -> None:
    _, message = run(MultiLLMPolicy(QUERY, 1).decide(START, FUNCTIONS), ["Next: caller.", output])
    assert message["function_call"] == {"name": UNPARSED_NAME, "arguments": UNPARSED_ARGUMENTS}
    assert UNPARSED_NAME not in {f["name"] for f in FUNCTIONS}


@pytest.mark.parametrize(
    ("output", "content", "call"),
    [
        (
            "Check it.\nAction: weather_for_meteo\nAction Input: {}",
            "Check it.",
            ("weather_for_meteo", "{}"),
        ),
        (
            "Done.\nconclusion: Sunny.",
            "Done.",
            (FINISH, {"return_type": GIVE_ANSWER, "final_answer": "Sunny."}),
        ),
        (
            "Nothing works.\nconclusion: give up.",
            "Nothing works.",
            (FINISH, {"return_type": GIVE_UP_AND_RESTART}),
        ),
        ("I am thinking", "I am thinking", (UNPARSED_NAME, UNPARSED_ARGUMENTS)),
        ("Action: weather_for_meteo\nAction Input: {}", None, ("weather_for_meteo", "{}")),
    ],
)
def test_backbone_paths(output: str, content: str | None, call: tuple) -> None:
    requests, message = run(BackbonePolicy(QUERY, 3).decide(START, FUNCTIONS), [output])
    assert [r.role for r in requests] == ["backbone"]
    assert requests[0].prompt == build_prompt("backbone", TOOLS, USER_TURN)
    assert message["content"] == content
    name, arguments = call
    assert message["function_call"]["name"] == name
    got = message["function_call"]["arguments"]
    assert (json.loads(got) if isinstance(arguments, dict) else got) == arguments


def test_chat_requests_carry_messages_and_tools_of_the_roles_that_call() -> None:
    policy = make_policy(False, QUERY, 5, chat=True)
    requests, _ = run(
        policy.decide(START, FUNCTIONS),
        ["Next: caller.", format_action("weather_for_meteo", "{}")],
    )
    planner, caller = requests
    assert planner.messages[0]["role"] == "system" and planner.messages[-1] == {
        "role": "user",
        "content": QUERY,
    }
    assert planner.tools is None
    assert caller.messages[-1] == {"role": "assistant", "content": format_plan(None, "caller")}
    assert [t["function"]["name"] for t in caller.tools] == ["weather_for_meteo"]
    backbone = make_policy(True, QUERY, 5, chat=True)
    (request,), _ = run(backbone.decide(START, FUNCTIONS), ["conclusion: x"])
    assert request.tools == caller.tools


def test_prompt_types_choose_the_templates() -> None:
    policy = MultiLLMPolicy(QUERY, 1, prompt_types={"planner": "toolbench_backbone"})
    (request, *_), _ = run(policy.decide(START, FUNCTIONS), ["Next: give up."])
    assert request.prompt == build_prompt(
        "planner", TOOLS, USER_TURN, prompt_type="toolbench_backbone"
    )


OSLO = {"name": "weather_for_meteo", "arguments": '{"city": "Oslo"}'}
BERGEN = {"name": "weather_for_meteo", "arguments": '{"city": "${1} and Bergen"}'}
TWO_CALLS = "\n".join(format_action(c["name"], c["arguments"]) for c in (OSLO, BERGEN))


def test_parallel_calls_keep_every_action_of_a_caller_output() -> None:
    plan = "Look up both.\n Next: caller."
    policy = make_policy(False, QUERY, 1, parallel=True)
    _, message = run(policy.decide(START, FUNCTIONS), [plan, TWO_CALLS])
    assert message == {
        "role": "assistant",
        "content": "Look up both.",
        "function_call": OSLO,
        PARALLEL_CALLS: [OSLO, BERGEN],
    }
    backbone = make_policy(True, QUERY, 1, parallel=True)
    _, message = run(backbone.decide(START, FUNCTIONS), ["Look up both.\n" + TWO_CALLS])
    assert message["content"] == "Look up both." and message[PARALLEL_CALLS] == [OSLO, BERGEN]


@pytest.mark.parametrize(
    ("parallel", "output"),
    [
        (False, TWO_CALLS),  # off: ToolBench's reading, the rest of the text is the input
        (True, format_action(OSLO["name"], OSLO["arguments"])),  # one action
        (True, TWO_CALLS + "\n" + format_action(FINISH, '{"return_type": "give_answer"}')),
        (True, "no call at all"),
    ],
)
def test_otherwise_a_caller_output_is_one_call_as_before(parallel: bool, output: str) -> None:
    policy = make_policy(False, QUERY, 1, parallel=parallel)
    _, message = run(policy.decide(START, FUNCTIONS), ["Next: caller.", output])
    name, arguments = parse_action(output) or (UNPARSED_NAME, UNPARSED_ARGUMENTS)
    assert message == {
        "role": "assistant",
        "content": None,
        "function_call": {"name": name, "arguments": arguments},
    }
