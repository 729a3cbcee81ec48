"""Policies: the next assistant message of a ToolBench search, from the role models.

A search holds ToolBench's OpenAI-style messages (system, user, assistant with a
``function_call``, function). A policy turns them into the next assistant message

    {"role": "assistant", "content": thought or None,
     "function_call": {"name": ..., "arguments": ...}}

as a generator that yields :class:`~inference_utils.search_requests.Generate` requests and
is sent the generated texts, so that one policy serves local models, endpoints and scripted
tests alike.

The prompts are the training inputs of the same history: the messages are converted into an
α-UMi conversation by process_data's own stage-2 conversion (the one that turns an answer
file's ``train_messages`` into training data), the functions by its stage-1 tool conversion,
and the histories are rendered by its role builders. A step of an answer file written by this
agent therefore trains on exactly the prompt the agent saw. Model outputs are read only by
:func:`process_data.protocol.parse_decision`, :func:`~process_data.protocol.parse_action` and
(with ``parallel``) :func:`~process_data.protocol.parse_actions`.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Hashable

from inference_utils.agent.search import PARALLEL_CALLS
from inference_utils.backends import Decoding, ModelResult
from inference_utils.routing import route
from inference_utils.search_requests import Generate
from process_data.protocol import (
    ASSISTANT,
    FINISH,
    GIVE_ANSWER,
    GIVE_UP_AND_RESTART,
    PLACEHOLDER,
    REACT_STOP,
    TOOL_ROLES,
    Decision,
    build_prompt,
    format_plan,
    function_tools,
    parse_action,
    parse_actions,
    parse_decision,
    react_chat,
    react_prompt,
    read_react,
    render_turn,
    tool_messages,
)
from process_data.toolbench.formats import ChatEncoder
from process_data.toolbench.roles import render_backbone_history, render_history
from process_data.toolbench.stage1 import convert_tools
from process_data.toolbench.stage2 import to_stage2

#: The function a caller output names when it holds no ``Action:`` / ``Action Input:`` pair:
#: α-UMi's agent calls ``none`` with ``{}`` then, a name the environment rejects as
#: ToolBench's rejects any unknown function (status 1, a hallucinated name).
UNPARSED_NAME = PLACEHOLDER
UNPARSED_ARGUMENTS = "{}"


def assistant_message(thought: str | None, name: str, arguments: str) -> dict:
    """An assistant message with a function call, as ToolBench's answer files store it."""
    return {
        "role": "assistant",
        "content": thought,
        "function_call": {"name": name, "arguments": arguments},
    }


def finish_message(thought: str | None, final_answer: str | None) -> dict:
    """``Finish`` with the final answer, or ``give_up_and_restart`` when it is ``None``."""
    if final_answer is None:
        arguments = {"return_type": GIVE_UP_AND_RESTART}
    else:
        arguments = {"return_type": GIVE_ANSWER, "final_answer": final_answer}
    return assistant_message(thought, FINISH, json.dumps(arguments, ensure_ascii=False))


def call_message(thought: str | None, call_text: str | None, parallel: bool = False) -> dict:
    """The function call a caller (or backbone) text makes; an unreadable one calls
    :data:`UNPARSED_NAME`, which the environment answers as an unknown function.

    With ``parallel``, a text holding several actions (read by ``parse_actions``), none of
    them ``Finish``, makes the message of its first action with every action (the first
    too) under the key :data:`~inference_utils.agent.search.PARALLEL_CALLS`, for the
    search to run as one plan; any other text is read as without ``parallel``.
    """
    if parallel and call_text is not None:
        actions = parse_actions(call_text)
        if len(actions) >= 2 and all(name != FINISH for name, _ in actions):
            message = assistant_message(thought, *actions[0])
            message[PARALLEL_CALLS] = [{"name": n, "arguments": a} for n, a in actions]
            return message
    parsed = parse_action(call_text) if call_text is not None else None
    name, arguments = parsed if parsed is not None else (UNPARSED_NAME, UNPARSED_ARGUMENTS)
    return assistant_message(thought, name, arguments)


class _RolePrompts:
    """What every policy shares: the query, the prompt types, and the conversion of a search's
    messages into α-UMi turns and role requests."""

    def __init__(
        self,
        instruction: str,
        query_id: Hashable = None,
        prompt_types: dict[str, str] | None = None,
        chat: bool = False,
        parallel: bool = False,
    ):
        self.instruction = instruction
        self.query_id = query_id
        self.prompt_types = dict(prompt_types or {})
        self.chat = chat
        self.parallel = parallel
        self._functions: list[dict] | None = None
        self._tools: tuple[list[dict], tuple[dict, ...]] = ([], ())

    def tools_of(self, functions: list[dict]) -> tuple[list[dict], tuple[dict, ...]]:
        """α-UMi's tool documents (the text prompts') and the OpenAI tool schemas (the chat
        requests', built from the functions themselves), converted once per query: every step
        of a search shows the same functions."""
        if functions is not self._functions:
            self._tools = convert_tools(functions), tuple(function_tools(functions))
            self._functions = functions
        return self._tools

    def conversation(self, messages: list[dict], tools: list[dict]) -> list[dict]:
        """The α-UMi turns of the messages, converted as process_data converts an answer
        file's chain (the system prompt and ToolBench's wrapping of the query are not part of
        them: the query is the instruction, as the answer file's ``query`` field is)."""
        record = {"instruction": self.instruction, "chains": messages, "tools": tools}
        return to_stage2(record, compat=False)["conversations"]

    def request(
        self,
        role: str,
        functions: list[dict],
        turns: list[dict],
        history: str,
        thought: str | None = None,
    ) -> Generate:
        """A role's request after ``turns`` (whose rendered history is ``history``)."""
        tools, schemas = self.tools_of(functions)
        prompt = build_prompt(role, tools, history, thought, self.prompt_types.get(role))
        messages = chat = None
        if self.chat:
            messages = tuple(ChatEncoder("", schemas, turns).prompt(role, len(turns)))
            chat = schemas if role in TOOL_ROLES else None
        return Generate(role, prompt, messages, chat, (self.query_id, role))


class MultiLLMPolicy(_RolePrompts):
    """α-UMi's planner → caller, or planner → summarizer, or planner give-up.

    The planner's thought (its output without the marker) is the message's ``content``. The
    caller and the summarizer see the planner's turn as the training data writes it
    (:func:`~process_data.protocol.format_plan` of that thought), so that their prompts are
    the training prompts of the answer file this agent writes.
    """

    def decide(self, messages: list[dict], functions: list[dict]) -> Generator[Generate, str, dict]:
        turns = self.conversation(messages, self.tools_of(functions)[0])
        history = render_history(turns)

        def ask(role: str, decision: Decision | None) -> Generate:
            if decision is None:
                return self.request(role, functions, turns, history)
            turn = format_plan(decision.thought, decision.kind)
            return self.request(
                role,
                functions,
                [*turns, {"from": ASSISTANT, "value": turn}],
                history + render_turn(ASSISTANT, turn),
                thought=turn if role in TOOL_ROLES else None,
            )

        routed = yield from route(ask)
        thought = routed.decision.thought
        if routed.role is None:
            return finish_message(thought, None)
        if routed.role in TOOL_ROLES:
            return call_message(thought, routed.follow_up, self.parallel)
        return finish_message(thought, routed.follow_up)


class BackbonePolicy(_RolePrompts):
    """The single LLM: its thought, then its call, its final answer, or its give-up, in one
    output (:func:`~process_data.protocol.parse_decision` with ``role="backbone"``)."""

    def decide(self, messages: list[dict], functions: list[dict]) -> Generator[Generate, str, dict]:
        turns = self.conversation(messages, self.tools_of(functions)[0])
        output = yield self.request("backbone", functions, turns, render_backbone_history(turns))
        decision = parse_decision(output, "backbone")
        thought = decision.thought or None
        if decision.kind == "give up":
            return finish_message(thought, None)
        if decision.kind == "conclusion":
            return finish_message(thought, decision.follow_up)
        return call_message(thought, decision.follow_up, self.parallel)


def make_policy(
    backbone: bool,
    instruction: str,
    query_id: Hashable = None,
    prompt_types: dict[str, str] | None = None,
    chat: bool = False,
    parallel: bool = False,
) -> MultiLLMPolicy | BackbonePolicy:
    """The policy of one query: the single LLM, or α-UMi's three roles. With ``parallel``, a
    call text holding several actions is run as one plan (see :func:`call_message`)."""
    cls = BackbonePolicy if backbone else MultiLLMPolicy
    return cls(instruction, query_id, prompt_types, chat, parallel)


class ReActPolicy:
    """One model prompted as ToolBench prompts ToolLLaMA (ReAct): the system message with
    the output format and the functions (:func:`~process_data.protocol.react_system`), the
    history as ``Thought`` / ``Action`` / ``Action Input`` turns and ``Function`` results, one
    call per step. A text prompt for completions and local models, chat messages for chat
    endpoints; the output ends before the model writes an observation of its own."""

    def __init__(self, query_id: Hashable = None, chat: bool = False):
        self.session = (query_id, "backbone")
        self.chat = chat

    def decide(self, messages: list[dict], functions: list[dict]) -> Generator[Generate, str, dict]:
        chat = tuple(react_chat(messages, functions)) if self.chat else None
        output = yield Generate(
            "backbone",
            react_prompt(messages, functions),
            chat,
            session=self.session,
            decoding=Decoding(stop=REACT_STOP),
        )
        thought, call_text = read_react(output)
        if call_text is None:  # a thought alone: ToolBench goes on from it
            return {"role": "assistant", "content": thought or output}
        return call_message(thought, call_text)


class FunctionCallingPolicy:
    """ToolBench's ``chatgpt_function`` way with OpenAI's ``tools``: the conversation as
    tool-calling messages (:func:`~process_data.protocol.tool_messages`), the query's
    functions with ``Finish`` as the tools, and every tool call of a turn run at once, on the
    task graph, as one plan. A server that refuses tool roles is sent the turns as text by the
    endpoint client, and calls it writes as text (``Action:`` / ``Action Input:``) are read
    as calls. ``Finish`` beside other calls waits: those run, and the model answers after."""

    def __init__(self, query_id: Hashable = None):
        self.query_id = query_id

    def decide(
        self, messages: list[dict], functions: list[dict]
    ) -> Generator[Generate, ModelResult, dict]:
        result = yield Generate(
            "backbone",
            None,
            tuple(tool_messages(messages)),
            tuple(function_tools(functions, finish=True)),
            full=True,
        )
        calls = [dict(c) for c in result.tool_calls]
        thought = result.content or None
        if not calls:
            calls = [{"name": n, "arguments": a} for n, a in parse_actions(result.text)]
            thought = read_react(result.text)[0] if calls else thought
        if not calls:
            return {"role": "assistant", "content": result.text}
        if len(calls) > 1:
            calls = [c for c in calls if c["name"] != FINISH] or calls[:1]
        message = assistant_message(thought, calls[0]["name"], calls[0]["arguments"])
        if len(calls) > 1:
            message[PARALLEL_CALLS] = calls
        return message


def agent_policy(
    agent: str, query_id: Hashable = None, chat: bool = False
) -> ReActPolicy | FunctionCallingPolicy:
    """The policy of one of the single-model baselines: ``react`` or ``function_calling``."""
    if agent == "react":
        return ReActPolicy(query_id, chat)
    if agent == "function_calling":
        return FunctionCallingPolicy(query_id)
    raise ValueError(f"no policy for the agent {agent!r}")
