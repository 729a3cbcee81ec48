"""The multi-LLM agent protocol: roles, prompt templates, step markers and their parsers.

This module is the single source of truth shared by data processing, training and inference.
The prompt templates, the role prefixes and the ``Next: ...`` markers are part of α-UMi's data
format (X-PLUG/Multi-LLM-Agent, ``GLPFT/utils/prompt_lib.py`` and its ``process_data``
scripts): they appear verbatim in every α-UMi training file, so they are reproduced exactly.

ToolBench's agent prompts (the system, user and diversity messages of its searches) and its
``Finish`` function live here too.

Every parser of a model's output lives here: :func:`parse_decision` (planner and backbone
outputs), :func:`parse_action` and :func:`parse_actions` (caller outputs), :func:`read_finish`
(``Finish`` arguments) and :func:`read_step` (α-UMi's evaluator's reading of a step). Each
formatter of a model's output has its inverse among them, and the pairs are tested as inverses.

The literal ``</s>`` below is α-UMi's *history separator*, a piece of text inside the prompt
string. It is not the tokenizer's end-of-sequence token, which always comes from the tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

#: The four trainable roles. ``backbone`` is the single-LLM agent that does all three jobs.
ROLES: tuple[str, ...] = ("backbone", "planner", "caller", "summarizer")
#: The three roles of the multi-LLM agent, in the order a step asks them.
MULTI_ROLES: tuple[str, ...] = ROLES[1:]
#: The roles that write a step's follow-up after the planner's decision.
FOLLOW_UP_ROLES: tuple[str, ...] = MULTI_ROLES[1:]
#: The roles that call tools: their chat-format requests carry the tool schemas.
TOOL_ROLES: tuple[str, ...] = ("caller", "backbone")

#: Speakers of a stage-2 conversation (the ``from`` field).
USER, ASSISTANT, CALLER, OBSERVATION, CONCLUSION = (
    "user",
    "assistant",
    "caller",
    "observation",
    "conclusion",
)
SPEAKERS: tuple[str, ...] = (USER, ASSISTANT, CALLER, OBSERVATION, CONCLUSION)

#: The planner's routing decisions and the markers that end a planner turn.
DecisionKind = Literal["caller", "conclusion", "give up"]
NEXT_CALLER = "Next: caller."
NEXT_CONCLUSION = "Next: conclusion."
NEXT_GIVE_UP = "Next: give up."
NEXT_MARKERS: dict[str, str] = {
    "caller": NEXT_CALLER,
    "conclusion": NEXT_CONCLUSION,
    "give up": NEXT_GIVE_UP,
}

#: The keys of a caller turn, as α-UMi's evaluator searches for them, and the exact framing
#: its data writes around them (``"Action: name\nAction Input: {...}"``).
ACTION_KEY = "Action:"
ACTION_INPUT_KEY = "Action Input:"
ACTION_PREFIX = ACTION_KEY + " "
ACTION_INPUT_PREFIX = "\n" + ACTION_INPUT_KEY + " "

#: α-UMi's history separator (text inside prompts, not a tokenizer token).
TURN_END = "</s>"

#: The name ToolBench gives its terminal function, and its two return types.
FINISH = "Finish"
GIVE_ANSWER = "give_answer"
GIVE_UP_AND_RESTART = "give_up_and_restart"
#: An answer file's ``finish_type``: ``give_answer``, or ``give_up`` for a search that found
#: no answer and kept a give-up.
GIVE_UP = "give_up"
FINISH_TYPES: tuple[str, ...] = (GIVE_ANSWER, GIVE_UP)
#: The node types of ToolBench's DFS trees (a step with a thought adds all three).
THOUGHT_NODE, ACTION_NODE, ACTION_INPUT_NODE = "Thought", "Action", "Action Input"

#: α-UMi's word for what is missing: an empty model output, a call that names no function
#: (the agent calls it, and the environment rejects it as an unknown name), a ``Finish``
#: without a final answer (no summarizer sample is made of it).
PLACEHOLDER = "none"

#: The text a caller target contains when ToolBench logged a call to a non-existent function.
HALLUCINATED_NAME = "invalid_hallucination_function_name"

#: What α-UMi's trainer puts before every ``input`` when it tokenizes a sample (its
#: ``train.py``); inference must prompt the trained models the same way.
MODEL_INPUT_PREFIX = "system: "

#: A history entry's speaker tag (``"conclusion: "``); the backbone writes its final answer
#: after it on a new line, and ``"give up."`` there when it gives up.
CONCLUSION_TAG = f"{CONCLUSION}: "
BACKBONE_CONCLUSION_PREFIX = "\n" + CONCLUSION_TAG
BACKBONE_GIVE_UP = "give up."

# --------------------------------------------------------------------------------------------
# Prompt templates (α-UMi ``prompt_lib.py``, reproduced exactly)
# --------------------------------------------------------------------------------------------

PROMPT_TEMPLATES: dict[str, str] = {
    "toolbench_backbone": """You have assess to the following apis:
{doc}
The conversation history is:
{history}
You should answer the action of next step in the following format:
The thought to solve the question,
Action: the name of api that should be called in this step, should be exactly in [{tool_names}],
Action Input: the api call request.
Once you think the question is finished, output conclusion: the final answer of the question or give up if you think you cannot answer this question.
""",  # noqa: E501
    "toolbench_planner": """You have assess to the following apis:
{doc}
The conversation history is:
{history}
You are the assistant to plan what to do next and whether is caller's or conclusion's turn to answer.
Answer with a following format:
The thought of the next step, followed by Next: caller or conclusion or give up.""",  # noqa: E501
    "toolbench_caller": """You have assess to the following apis:
{doc}
The conversation history is:
{history}
The thought of this step is:
{thought}
Base on the thought make an api call in the following format:
Action: the name of api that should be called in this step, should be exactly in [{tool_names}],
Action Input: the api call request.""",
    "toolbench_summarizer": """Make a conclusion based on the conversation history:
{history}""",
}

#: Which speaker answers each role's prompt; the prompt ends with ``" <speaker>: "``.
ROLE_SPEAKER: dict[str, str] = {
    "backbone": ASSISTANT,
    "planner": ASSISTANT,
    "caller": CALLER,
    "summarizer": CONCLUSION,
}


def default_prompt_type(role: str) -> str:
    """The prompt template α-UMi uses for ``role``."""
    check_role(role)
    return f"toolbench_{role}"


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


def check_prompt_type(prompt_type: str) -> str:
    if prompt_type not in PROMPT_TEMPLATES:
        known = ", ".join(PROMPT_TEMPLATES)
        raise ValueError(f"unknown prompt type {prompt_type!r}; expected one of {known}")
    return prompt_type


# --------------------------------------------------------------------------------------------
# Tool documents
# --------------------------------------------------------------------------------------------


def render_tool_docs(tools: Sequence[dict]) -> tuple[str, str]:
    """Return ``(doc, tool_names)``: one JSON line per tool, and the comma-joined names."""
    doc = "".join(json.dumps(t) + "\n" for t in tools)
    names = ", ".join(t["Name"] for t in tools)
    return doc, names


# ToolBench's names (``toolbench/utils.py`` ``standardize`` / ``change_name``, its
# ``rapidapi.py`` and StableToolBench's server): clients send them, cache folders and function
# names are built from them, so every tool, API and category name is matched through these.
_NOT_NAME_CHAR = re.compile("[^\u4e00-\u9fa5^a-z^A-Z^0-9^_]")
_RUNS_OF_UNDERSCORES = re.compile(r"(_)\1+")
_RESERVED_API_NAMES = frozenset({"from", "class", "return", "false", "true", "id", "and"})
#: ToolBench cuts a function name to its last 64 characters (OpenAI's limit).
MAX_FUNCTION_NAME = 64


def standardize(name: str) -> str:
    """ToolBench's identifier form of a tool or API name: other characters become ``_``, runs
    of ``_`` collapse, the ends are trimmed, lowercase, and ``get_`` before a leading digit.
    (The ``^`` inside the character class is ToolBench's: ``^`` survives, as it does there.)"""
    name = _RUNS_OF_UNDERSCORES.sub("_", _NOT_NAME_CHAR.sub("_", name)).lower().strip("_")
    return "get_" + name if name[:1].isdigit() else name


def api_name_of(name: str) -> str:
    """An API's name as ToolBench's client sends it: standardized, and prefixed with ``is_``
    where it would be a Python keyword ToolBench avoids (``id`` becomes ``is_id``)."""
    name = standardize(name)
    return "is_" + name if name in _RESERVED_API_NAMES else name


def category_name_of(category: str) -> str:
    """A category's folder name as StableToolBench writes it (``"News, Media"`` →
    ``"News_Media"``): spaces, commas and slashes become ``_``, then each ``__`` becomes ``_``
    once (a single pass, as there)."""
    return re.sub("[ ,/]", "_", category).replace("__", "_")


_NOT_IN_FILE_NAMES = re.compile(r"[/\\\x00-\x1f]")
MAX_FILE_NAME_BYTES = 200


def file_name_part(name: str, what: str) -> str:
    """``name`` if it can be (part of) one file or folder name inside a folder of ours;
    otherwise ValueError saying why. Ids and names read from files (query ids, categories,
    tools, APIs, model names) pass here before they become paths, so ``../x`` or ``/abs``
    never writes outside the folder it was meant for."""
    if not name:
        reason = "it is empty"
    elif name in (".", ".."):
        reason = "it names a folder itself or its parent"
    elif match := _NOT_IN_FILE_NAMES.search(name):
        reason = f"it holds {match.group()!r} (a path separator or a control character)"
    elif len(name.encode("utf-8")) > MAX_FILE_NAME_BYTES:
        reason = f"it is longer than {MAX_FILE_NAME_BYTES} bytes"
    else:
        return name
    raise ValueError(f"{what} {name!r} cannot name a file: {reason}")


def function_name(api_name: str, tool_name: str) -> str:
    """The function a model calls for an API: ``<api>_for_<tool>``, cut to the last 64
    characters as ToolBench cuts it (both names raw; they are standardized here)."""
    return f"{api_name_of(api_name)}_for_{standardize(tool_name)}"[-MAX_FUNCTION_NAME:]


# --------------------------------------------------------------------------------------------
# Prompt filling
# --------------------------------------------------------------------------------------------


def fill_tools(template: str, tools: Sequence[dict], docs: tuple[str, str] | None = None) -> str:
    """Fill ``{doc}`` and ``{tool_names}``; the result is reused for every step of a trajectory.

    ``docs`` is a precomputed :func:`render_tool_docs` result. The replacements are chained
    plain ``str.replace`` calls in α-UMi's order, so that text which happens to contain a
    placeholder is treated exactly as α-UMi treats it.
    """
    doc, names = docs if docs is not None else render_tool_docs(tools)
    return template.replace("{doc}", doc).replace("{tool_names}", names)


def fill_step(tool_prompt: str, history: str, thought: str | None = None) -> str:
    """Fill ``{history}`` (and ``{thought}`` for the caller) into a :func:`fill_tools` result."""
    text = tool_prompt.replace("{history}", history)
    if thought is not None:
        text = text.replace("{thought}", thought)
    return text


def prompt_suffix(role: str) -> str:
    """The text appended to a filled template: the answering speaker's tag."""
    return f" {ROLE_SPEAKER[check_role(role)]}: "


def build_prompt(
    role: str,
    tools: Sequence[dict],
    history: str,
    thought: str | None = None,
    prompt_type: str | None = None,
) -> str:
    """The complete model input for one step of ``role``."""
    template = PROMPT_TEMPLATES[check_prompt_type(prompt_type or default_prompt_type(role))]
    return fill_step(fill_tools(template, tools), history, thought) + prompt_suffix(role)


def clean_output(text: str) -> str:
    """α-UMi's post-processing of a decoded output."""
    if text.startswith(": "):
        text = text[2:]
    return PLACEHOLDER if text.strip() in ("", ".", ",") else text


# --------------------------------------------------------------------------------------------
# Planner turns: "<thought>\n Next: caller."
# --------------------------------------------------------------------------------------------


def format_plan(thought: str | None, decision: str) -> str:
    """A planner turn as α-UMi's stage 2 writes it: the thought, a newline, a space, the marker.

    ``thought=None`` (an assistant message with no content) gives just ``" Next: ..."``.
    """
    span = "" if thought is None else thought + "\n"
    return span + " " + NEXT_MARKERS[decision]


# --------------------------------------------------------------------------------------------
# Caller turns: "Action: name\nAction Input: {...}"
# --------------------------------------------------------------------------------------------


def format_action(name: str, arguments: str) -> str:
    """A caller turn. ``arguments`` is the raw argument string (usually JSON)."""
    return ACTION_PREFIX + name + ACTION_INPUT_PREFIX + arguments


_ACTION_RE = re.compile(
    re.escape(ACTION_KEY)
    + r"\s*(?P<name>[^\n]*?)\s*\n\s*"
    + re.escape(ACTION_INPUT_KEY)
    + r"\s?(?P<args>.*)",
    re.S,
)


def parse_action(text: str) -> tuple[str, str] | None:
    """Split a caller turn into ``(name, arguments)``; inverts :func:`format_action`.

    Returns ``None`` when the text has no ``Action:`` / ``Action Input:`` pair.
    """
    if text.startswith(ACTION_PREFIX):
        head, sep, args = text[len(ACTION_PREFIX) :].partition(ACTION_INPUT_PREFIX)
        if sep and "\n" not in head:
            return head, args
    match = _ACTION_RE.search(text)
    if match is None:
        return None
    return match.group("name"), match.group("args").strip()


#: Where a caller text's next action starts: a line that starts with ``Action:``.
_NEXT_ACTION_LINE = re.compile("\n(?=" + re.escape(ACTION_KEY) + ")")


def parse_actions(text: str) -> list[tuple[str, str]]:
    """Every ``(name, arguments)`` pair of a caller (or backbone follow-up) text, in order;
    inverts :func:`format_action` turns joined by newlines.

    Each action's arguments run up to the next line that starts with ``Action:`` (or the end):
    the text is cut before each such line and every piece is read by :func:`parse_action`. A
    piece without a pair (a preamble, an ``Action:`` line with no ``Action Input:``) is read
    together with the next one, so a text with a single ``Action:`` gives exactly
    ``[parse_action(text)]`` (or ``[]``). :func:`parse_action` alone reads only the first
    action, with the rest of the text as its arguments, as ToolBench and α-UMi read a call.
    """
    actions: list[tuple[str, str]] = []
    pending: str | None = None  # pieces read so far that hold no pair
    for piece in _NEXT_ACTION_LINE.split(text):
        candidate = piece if pending is None else pending + "\n" + piece
        parsed = parse_action(candidate)
        if parsed is None:
            pending = candidate
        else:
            actions.append(parsed)
            pending = None
    return actions


# --------------------------------------------------------------------------------------------
# Histories: "user: ...</s>assistant: ...</s>caller: ...</s>observation: ...assistant: ..."
# --------------------------------------------------------------------------------------------


def render_turn(speaker: str, text: str) -> str:
    """One history entry. Observations carry no separator: that is α-UMi's format."""
    end = "" if speaker == OBSERVATION else TURN_END
    return f"{speaker}: {text}{end}"


# --------------------------------------------------------------------------------------------
# Backbone turns: the planner, caller and conclusion texts of one step in one target
# --------------------------------------------------------------------------------------------


def strip_marker(plan: str, decision: str) -> str:
    """The planner text without its marker, as the backbone target uses it."""
    return plan.replace(NEXT_MARKERS[decision], "").strip()


def format_backbone(plan: str, decision: str, follow_up: str | None) -> str:
    """The backbone's target for one step.

    ``follow_up`` is the caller turn (for ``caller``) or the final answer (for ``conclusion``);
    it is ignored for ``give up``.
    """
    span = strip_marker(plan, decision)
    if decision == "caller":
        return span + "\n" + (follow_up or "")
    if decision == "conclusion":
        return span + BACKBONE_CONCLUSION_PREFIX + (follow_up or "")
    return span + BACKBONE_CONCLUSION_PREFIX + BACKBONE_GIVE_UP


# --------------------------------------------------------------------------------------------
# Decisions: what a planner or backbone output decides (the one parser of both)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What one planner or backbone output decides.

    ``kind`` is the next step: ``caller``, ``conclusion`` or ``give up``. ``thought`` is the
    text before the decision (``None`` when the output has none, as :func:`format_plan`
    writes it). ``turn`` is the text that enters the history as the assistant's turn.
    ``explicit`` is false when the output states no decision and ``kind`` is the default.
    ``follow_up`` is the backbone's own call text or final answer (``None`` for a planner).
    """

    kind: DecisionKind
    thought: str | None
    turn: str
    explicit: bool = True
    follow_up: str | None = None


_BARE_MARKERS = {kind: marker.removesuffix(".") for kind, marker in NEXT_MARKERS.items()}
#: When an output holds several markers, this one wins (α-UMi tests them in this order).
_MARKER_PRIORITY: tuple[DecisionKind, ...] = ("give up", "conclusion", "caller")


def parse_decision(text: str, role: str = "planner") -> Decision:
    """The decision of a planner output (``role="planner"``) or a backbone output
    (``role="backbone"``). Routing, the metrics and the agent all read decisions here.

    Planner outputs, with α-UMi's rules (its inference router and its evaluator):

    * a marker is found without its final period (``Next: caller``): α-UMi's evaluator
      matches it so, and small models often drop the period;
    * when an output holds several markers, ``give up`` beats ``conclusion``, which beats
      ``caller``, wherever they are (α-UMi tests them in that order);
    * the turn is the output up to the end of the first occurrence of that marker, with its
      period; what the model wrote after it is not part of the turn;
    * an output with no marker is a call (α-UMi's router and evaluator both default to it);
      its turn is the output with the caller marker appended as :func:`format_plan` does.

    Backbone outputs (:func:`format_backbone`): the first of ``"\nAction: "`` (a call, the
    follow-up being ``"Action: ...\nAction Input: ..."``) and ``"\nconclusion: "`` (the final
    answer, or a give-up when it is exactly ``give up.``) decides; the thought is the text
    before it. An output with neither is a call with no call text.

    :func:`format_plan` and :func:`format_backbone` invert it, for thoughts that hold no
    marker of their own.
    """
    if role == "backbone":
        return _backbone_decision(text)
    if role != "planner":
        raise ValueError(f"only planner and backbone outputs hold decisions, not {role!r}")
    for kind in _MARKER_PRIORITY:
        start = text.find(_BARE_MARKERS[kind])
        if start != -1:
            break
    else:
        thought = text.strip() or None
        return Decision("caller", thought, format_plan(thought, "caller"), explicit=False)
    end = start + len(_BARE_MARKERS[kind])
    turn = text[:end] + "."
    head = text[:start].removesuffix(" ")
    thought = None if head == "" else head.removesuffix("\n")
    return Decision(kind, thought, turn)


def _backbone_decision(text: str) -> Decision:
    padded = text if text.startswith("\n") else "\n" + text
    offset = len(padded) - len(text)
    call = padded.find("\n" + ACTION_PREFIX)
    conclusion = padded.find(BACKBONE_CONCLUSION_PREFIX)
    if call == -1 and conclusion == -1:
        return Decision("caller", text, text, explicit=False)
    if conclusion == -1 or (call != -1 and call < conclusion):
        thought = padded[offset:call] if call >= offset else ""
        return Decision("caller", thought, text, follow_up=padded[call + 1 :])
    thought = padded[offset:conclusion] if conclusion >= offset else ""
    answer = padded[conclusion + len(BACKBONE_CONCLUSION_PREFIX) :]
    if answer == BACKBONE_GIVE_UP:
        return Decision("give up", thought, text)
    return Decision("conclusion", thought, text, follow_up=answer)


# --------------------------------------------------------------------------------------------
# Step predictions: "assistant: <planner turn></s>caller: <call>" (α-UMi's predictions field)
# --------------------------------------------------------------------------------------------

#: The speaker that answers after each decision of the planner.
FOLLOW_UP_SPEAKER: dict[str, str] = {"caller": CALLER, "conclusion": CONCLUSION}
#: The role that writes the follow-up of each decision of the planner (a give-up has none).
FOLLOW_UP_ROLE: dict[str, str] = dict(zip(FOLLOW_UP_SPEAKER, FOLLOW_UP_ROLES, strict=True))


def format_prediction(turn: str, kind: DecisionKind, follow_up: str | None = None) -> str:
    """A step's prediction as α-UMi's pipeline writes it: the planner turn alone for a
    give-up, else the planner turn as a history entry and the caller's or summarizer's
    output after its speaker tag, with no closing separator."""
    if kind == "give up":
        return turn
    return render_turn(ASSISTANT, turn) + f"{FOLLOW_UP_SPEAKER[kind]}: {follow_up or ''}"


@dataclass(frozen=True)
class StepReading:
    """A step's reference or prediction as α-UMi's evaluator reads it (its ``parse_output``):
    ``plan`` is ``call``, ``finish`` or ``give up``."""

    plan: str
    action: str | None = None
    action_input: str | None = None
    answer: str | None = None


#: α-UMi's evaluator's names for the decisions.
PLAN_OF_DECISION: dict[str, str] = {"caller": "call", "conclusion": "finish", "give up": "give up"}


def read_step(text: str) -> StepReading:
    """A reference or prediction string (:func:`format_prediction`), read exactly as α-UMi's
    evaluator (``evaluate-multi_agent.py``) reads it, so that its numbers are reproduced.

    The decision is :func:`parse_decision`'s, applied to the whole string. This is the one
    place where the metrics read an output differently from the router, which reads the
    planner's output alone: here a marker in the caller's or summarizer's text counts too
    (α-UMi's evaluator sees only the joined string), and the call is read as α-UMi reads it,
    not by :func:`parse_action`: the text after the last ``Action:`` and the last ``Action
    Input:`` of the part after the first separator (the whole text when there is none), with
    ``none`` and ``{}`` when they are missing. The final answer is the text after the last
    ``conclusion: `` (the whole text when there is none), without separators.
    """
    kind = parse_decision(text).kind
    if kind == "give up":
        return StepReading("give up")
    if kind == "conclusion":
        cut = text.rfind(CONCLUSION_TAG)
        answer = text if cut == -1 else text[cut + len(CONCLUSION_TAG) :]
        return StepReading("finish", answer=answer.replace(TURN_END, ""))
    parts = text.split(TURN_END)
    call = parts[1] if len(parts) > 1 else text
    action_input = "{}"
    if ACTION_INPUT_KEY in call:
        action_input = call[call.rindex(ACTION_INPUT_KEY) + len(ACTION_INPUT_KEY) :].strip()
    action = PLACEHOLDER
    if ACTION_KEY in call:
        action = call[call.rindex(ACTION_KEY) + len(ACTION_KEY) :].strip()
        if ACTION_INPUT_KEY in action:
            action = action[: action.index(ACTION_INPUT_KEY)].strip()
    return StepReading("call", action, action_input)


# --------------------------------------------------------------------------------------------
# ToolBench's agent prompts, its Finish function and the reading of Finish arguments
# --------------------------------------------------------------------------------------------
# The real-time agent's answer files carry these texts in their messages, and ToolEval and
# the training data read them back, so they are ToolBench's, byte for byte.

# ToolBench's ReAct_prompts.py FORMAT_INSTRUCTIONS_SYSTEM_FUNCTION / _USER_FUNCTION and the
# task description rapidapi.py writes into it.
SYSTEM_PROMPT = """You are AutoGPT, you can use many tools(functions) to do the following task.
First I will give you the task description, and your task start.
At each step, you need to give your thought to analyze the status now and what to do next, with a function call to actually excute your step.
After the call, you will get the call result, and you are now in a new state.
Then you will analyze your status now, then decide what to do next...
After many (Thought-call) pairs, you finally perform the task, then you can give your finial answer.
Remember: 
1.the state change is irreversible, you can't go back to one of the former state, if you want to restart the task, say "I give up and restart".
2.All the thought is short, at most in 5 sentence.
3.You can do more then one trys, so if your plan is to continusly try some conditions, you can do one of the conditions per try.
Let's Begin!
Task description: {task_description}"""  # noqa: E501, W291
USER_PROMPT = """
{input_description}
Begin!
"""
TASK_DESCRIPTION = """You should use functions to help handle the real time user querys. Remember:
1.ALWAYS call "Finish" function at the end of the task. And the final answer should contain enough information to show to the user,If you can't handle the task, or you find that function calls always fail(the function is not valid now), use function Finish->give_up_and_restart.
2.Do not use origin tool names, use only subfunctions' names.
You have access of the following tools:
"""  # noqa: E501

# ToolBench's Tree_search_prompts.py DIVERSITY_PROMPT.
DIVERSITY_PROMPT = """This is not the first time you try this task, all previous trails failed.
Before you generate my thought for this state, I will first show you your previous actions for this state, and then you must generate actions that is different from all of them. Here are some previous actions candidates:
{previous_candidate}
Remember you are now in the intermediate state of a trail, you will first analyze the now state and previous action candidates, then make actions that is different from all the previous."""  # noqa: E501

FINISH_FUNCTION: dict = {
    "name": FINISH,
    "description": (
        "If you believe that you have obtained a result that can answer the task, please call "
        "this function to provide the final answer. Alternatively, if you recognize that you "
        "are unable to proceed with the task in the current state, call this function to "
        "restart. Remember: you must ALWAYS call this function at the end of your attempt, and "
        "the only part that will be shown to the user is the final answer, so it should contain "
        "sufficient information."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "return_type": {"type": "string", "enum": [GIVE_ANSWER, GIVE_UP_AND_RESTART]},
            "final_answer": {
                "type": "string",
                "description": "The final answer you want to give the user. You should have "
                'this field if "return_type"=="give_answer"',
            },
        },
        "required": ["return_type"],
    },
}


def read_finish(arguments: str) -> object:
    """The fields of a ``Finish`` call's arguments as ToolBench reads them: JSON (control
    characters allowed), else the text searched for ``"return_type": "`` and
    ``"final_answer": "``. The result need not be an object; the caller checks."""
    try:
        return json.loads(arguments, strict=False)
    except ValueError:
        return _finish_fields(arguments)


def _finish_fields(text: str) -> dict:
    """ToolBench's reading of ``Finish`` arguments that are not JSON: the text after
    ``"return_type": "`` and after ``"final_answer": "``."""
    fields: dict = {}
    key = '"return_type": "'
    if key in text:
        if f"{key}{GIVE_ANSWER}" + '"' in text:
            fields["return_type"] = GIVE_ANSWER
        elif f"{key}{GIVE_UP_AND_RESTART}" + '"' in text:
            fields["return_type"] = GIVE_UP_AND_RESTART
        else:
            fields["return_type"] = text[text.find(key) + len(key) : text.find('",')]
    key = '"final_answer": "'
    if key in text:
        fields["final_answer"] = text[text.find(key) + len(key) :]
    return fields


# --------------------------------------------------------------------------------------------
# Tool observations: ToolBench's tool API answers ``{"error": ..., "response": ...}``
# --------------------------------------------------------------------------------------------

#: ToolBench's status codes for an observation (``rapidapi.py``), by the ``error`` text its
#: server answers; any other answer is 0, a request that failed is 12.
ERROR_STATUS = {
    "API not working error...": 6,
    "Unauthorized error...": 7,
    "Unsubscribed error...": 8,
    "Too many requests error...": 9,
    "Rate limit per minute error...": 10,
    "Message error...": 11,
}
REQUEST_FAILED = 12


def observation_json(error: str, response: object) -> str:
    """An answer of the tool API as text, as ToolBench's client writes it into the agent's
    messages (``json.dumps`` with its defaults)."""
    return json.dumps({"error": error, "response": response})


@dataclass(frozen=True)
class Observation:
    """A tool's answer as an agent sees it."""

    error: str
    response: object
    status: int  # ToolBench's code: 0 a normal answer, 6–11 a server-reported error, 12 failed

    @property
    def text(self) -> str:
        """The observation text ToolBench's agents read (:func:`observation_json`)."""
        return observation_json(self.error, self.response)


def error_answer(message: str) -> dict:
    """An answer in the tool API's shape that reports a problem instead of a response."""
    return {"error": message, "response": ""}


def parse_tool_input(value: object) -> dict:
    """ToolBench's ``tool_input``: a JSON object, as text or as an object; ``""`` is ``{}``."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value, strict=False)
        except ValueError as exc:
            raise ValueError(f"tool_input is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"tool_input must be a JSON object, not a {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------
# Chat format: tools as OpenAI function schemas, tool turns as text, JSON from a model's text
# --------------------------------------------------------------------------------------------


def function_tools(functions: Sequence[dict], finish: bool = False) -> list[dict]:
    """ToolBench's functions (an answer's ``answer_generation.function``, a query's
    functions) as OpenAI ``tools``, straight from their schemas: name, description and
    parameters as ToolBench sends them to a function-calling model (its ``chatgpt_function``
    passes the functions unchanged). ``Finish`` is left out unless ``finish``: α-UMi's
    planner markers stand for it."""
    return [
        {
            "type": "function",
            "function": {
                "name": f["name"],
                "description": f.get("description", ""),
                "parameters": f.get("parameters") or {"type": "object", "properties": {}},
            },
        }
        for f in functions
        if finish or f.get("name") != FINISH
    ]


def chat_tools(tools: Sequence[dict]) -> list[dict]:
    """α-UMi tool documents (``{Name, function, input}``) as OpenAI function schemas, for
    data that holds only those (stage-1 and stage-2 files, α-UMi's static test sets); where
    the functions are at hand, :func:`function_tools` builds the schemas from them instead.

    Each argument's ``"<type>, <description>"`` string is split back into its two parts.
    """
    out = []
    for tool in tools:
        properties = {}
        for arg, spec in tool.get("input", {}).items():
            arg_type, _, description = str(spec).partition(", ")
            properties[arg] = {"type": arg_type, "description": description}
        out.append(
            {
                "type": "function",
                "function": {
                    "name": tool["Name"],
                    "description": tool.get("function", ""),
                    "parameters": {"type": "object", "properties": properties},
                },
            }
        )
    return out


def plain_roles(messages: Sequence[dict], calls: bool = True, results: bool = True) -> list[dict]:
    """Messages with tool turns as plain text, for chat templates and servers that drop or
    refuse them: with ``calls``, an assistant message's tool calls become its text (its
    content, then each call as the caller writes it, :func:`format_action`); with
    ``results``, a tool result becomes a ``user`` message ``"observation: <result>"``, as in
    α-UMi's history. Other messages are kept as they are."""
    out = []
    for m in messages:
        if results and m["role"] in ("tool", "function"):
            out.append({"role": "user", "content": f"{OBSERVATION}: {m.get('content') or ''}"})
        elif calls and m.get("tool_calls"):
            out.append({"role": "assistant", "content": assistant_text(m)})
        else:
            out.append(m)
    return out


def assistant_text(message: dict) -> str:
    """An assistant message as text: its content, then each tool call as the caller writes it
    (:func:`format_action`; missing arguments are ``{}``), one per line."""
    calls = [
        format_action(c["function"]["name"], arguments_text(c["function"].get("arguments") or {}))
        for c in message.get("tool_calls") or []
    ]
    return "\n".join(filter(None, [message.get("content") or "", *calls]))


def arguments_text(arguments: str | dict) -> str:
    """A tool call's arguments as text: a string as it is, a JSON object serialised."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


_FENCED = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$")


def ask_for_json(messages: Sequence[dict], function: dict) -> list[dict]:
    """``messages`` with the last one asking for ``function``'s arguments as a JSON object
    (for models that do no tool calling)."""
    schema = json.dumps(function.get("parameters", {}), ensure_ascii=False)
    ask = (
        f"\n\nAnswer with `{function['name']}`: reply with one JSON object of its arguments "
        f"and nothing else, following this JSON schema:\n{schema}"
    )
    *head, last = [dict(m) for m in messages]
    last["content"] = (last.get("content") or "") + ask
    return [*head, last]


def json_object(text: str) -> dict:
    """The JSON object a model wrote (code fences allowed around it)."""
    value = json.loads(_FENCED.sub("", text), strict=False)
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__}, not an object: {text[:200]!r}")
    return value


# --------------------------------------------------------------------------------------------
# LLMCompiler's plan-and-execute grammar (SqueezeAILab/LLMCompiler at a00c9d3,
# src/llm_compiler/planner.py, output_parser.py, llm_compiler.py)
# --------------------------------------------------------------------------------------------

#: The planner says this after ``join()``; it is the planner's stop string.
END_OF_PLAN = "<END_OF_PLAN>"
#: The plan's last action, which hands the results to the joiner.
JOIN = "join"
#: The joiner's two actions (``constants.py``: ``JOINNER_FINISH``, ``JOINNER_REPLAN``).
JOINER_FINISH, JOINER_REPLAN = "Finish", "Replan"
#: A plan's and a joiner's thought lines start with this.
THOUGHT_TAG = "Thought:"
JOINER_ACTION_TAG = "Action:"
#: Their ``JOIN_DESCRIPTION``, word for word.
JOIN_DESCRIPTION = (
    "join():\n"
    " - Collects and combines results from prior actions.\n"
    " - A LLM agent is called upon invoking join to either finalize the user query or wait "
    "until the plans are executed.\n"
    " - join should always be the last action in the plan, and will be called in two "
    "scenarios:\n"
    "   (a) if the answer can be determined by gathering the outputs from tasks to generate "
    "the final response.\n"
    "   (b) if the answer cannot be determined in the planning phase before you execute the "
    "plans. "
)


def llmcompiler_prompt(tool_descriptions: Sequence[str], examples: str, replan: bool) -> str:
    """The planner's system prompt, as their ``generate_llm_compiler_prompt`` writes it: the
    actions numbered (the tools, then ``join``), the guidelines (with the replanning ones
    when ``replan``), then the in-context examples."""
    text = (
        "Given a user query, create a plan to solve it with the utmost parallelizability. "
        f"Each plan should comprise an action from the following {len(tool_descriptions) + 1} "
        "types:\n"
    )
    for i, description in enumerate(tool_descriptions, 1):
        text += f"{i}. {description}\n"
    text += f"{len(tool_descriptions) + 1}. {JOIN_DESCRIPTION}\n\n"
    text += (
        "Guidelines:\n"
        " - Each action described above contains input/output types and description.\n"
        "    - You must strictly adhere to the input and output types for each action.\n"
        "    - The action descriptions contain the guidelines. You MUST strictly follow those "
        "guidelines when you use the actions.\n"
        " - Each action in the plan should strictly be one of the above types. Follow the "
        "Python conventions for each action.\n"
        " - Each action MUST have a unique ID, which is strictly increasing.\n"
        " - Inputs for actions can either be constants or outputs from preceding actions. In "
        "the latter case, use the format $id to denote the ID of the previous action whose "
        "output will be the input.\n"
        f" - Always call join as the last action in the plan. Say '{END_OF_PLAN}' after you "
        "call join\n"
        " - Ensure the plan maximizes parallelizability.\n"
        " - Only use the provided action types. If a query cannot be addressed using these, "
        "invoke the join action for the next steps.\n"
        " - Never explain the plan with comments (e.g. #).\n"
        " - Never introduce new actions other than the ones provided.\n\n"
    )
    if replan:
        text += (
            ' - You are given "Previous Plan" which is the plan that the previous agent '
            "created along with the execution results (given as Observation) of each plan and "
            "a general thought (given as Thought) about the executed results.You MUST use "
            'these information to create the next plan under "Current Plan".\n'
            ' - When starting the Current Plan, you should start with "Thought" that outlines '
            "the strategy for the next plan.\n"
            " - In the Current Plan, you should NEVER repeat the actions that are already "
            "executed in the Previous Plan.\n"
        )
    return text + "Here are some examples:\n\n" + examples


def llmcompiler_question(query: str, contexts: Sequence[str] = ()) -> str:
    """The planner's user message: ``Question: ...``, and when replanning each earlier
    round as ``Previous Plan:`` (their ``_format_contexts``), then ``Current Plan:``."""
    if not contexts:
        return f"Question: {query}"
    previous = "".join(f"Previous Plan:\n\n{c}\n\n" for c in contexts)
    return f"Question: {query}\n{previous}Current Plan:\n\n\n"


def tool_signature(function: dict) -> str:
    """A ToolBench function as an action of the planner's list: its call with the
    parameters in the order they are given by position (required ones first), then its
    description and each parameter's."""
    parameters = function.get("parameters") or {}
    properties = parameters.get("properties") or {}
    required = list(parameters.get("required") or [])
    order = required + [p for p in properties if p not in required]
    shown = [
        f"{p}: {(properties.get(p) or {}).get('type', 'string')}"
        + ("" if p in required else " = None")
        for p in order
    ]
    lines = [f"{function['name']}({', '.join(shown)}) -> dict:"]
    lines.append(f" - {' '.join(str(function.get('description', '')).split())}")
    for p in order:
        about = " ".join(str((properties.get(p) or {}).get("description", "")).split())
        lines.append(f" - {p}{'' if p in required else ' (optional)'}: {about}".rstrip(": "))
    return "\n".join(lines)


def parameter_order(function: dict) -> list[str]:
    """The order in which a plan's positional arguments fill a function's parameters
    (required ones first, as :func:`tool_signature` shows them)."""
    parameters = function.get("parameters") or {}
    required = list(parameters.get("required") or [])
    return required + [p for p in parameters.get("properties") or {} if p not in required]


@dataclass(frozen=True)
class PlanCall:
    """One action line of a plan: ``id. name(args)``, with the thought line before it.
    ``args`` and ``kwargs`` are Python literals (``$N`` references are strings)."""

    id: int
    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    thought: str | None = None
    line: str = ""

    @property
    def is_join(self) -> bool:
        return self.name == JOIN


# ``N. name(args)``: LLMCompiler's ACTION_PATTERN (``(\d+)\. (\w+)\((.*)\)``), with names
# that may hold dots and hyphens, and a line whose closing parenthesis is missing (their
# ParallelQA examples have such lines, which their pattern drops) read as if it were there.
_PLAN_ACTION = re.compile(r"\s*(\d+)\.\s*([A-Za-z_][\w.\-]*)\((.*)$")
_PLAN_REFERENCE = re.compile(r"\$\{?(\d+)\}?")


def _quote_references(text: str) -> str:
    """``text`` with each ``$N`` / ``${N}`` outside string literals quoted (``"$N"``), so a
    plan may write ``search($1)``; one pass over the text."""
    out, i, quote = [], 0, None
    while i < len(text):
        ch = text[i]
        if quote:
            out.append(ch)
            if ch == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
            out.append(ch)
        elif ch == "$" and (m := _PLAN_REFERENCE.match(text, i)):
            out.append(f'"${m[1]}"')
            i = m.end()
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def plan_arguments(text: str) -> tuple[tuple, dict]:
    """A plan call's arguments: Python literals by position and by name (``ast`` reads them;
    nothing is run). Text that is not such a list is one positional string, as LLMCompiler's
    ``_parse_llm_compiler_action_args`` falls back to it."""
    import ast

    if not text.strip():
        return (), {}
    try:
        call = ast.parse(f"f({_quote_references(text)})", mode="eval").body
        assert isinstance(call, ast.Call)
        args = tuple(ast.literal_eval(a) for a in call.args)
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
        if len(kwargs) != len(call.keywords):
            raise ValueError("**kwargs")
        return args, kwargs
    except (SyntaxError, ValueError, TypeError, AssertionError, RecursionError, MemoryError):
        return (text.strip(),), {}


def read_plan_line(line: str, thought: str | None) -> PlanCall | str | None:
    """One line of a plan: a :class:`PlanCall` (with ``thought``), the text of a thought
    line (for the next call), or ``None`` for any other line (skipped, as theirs skips it)."""
    stripped = line.strip()
    if stripped.startswith(THOUGHT_TAG):
        return stripped[len(THOUGHT_TAG) :].strip()
    match = _PLAN_ACTION.match(line)
    if match is None:
        return None
    rest = match[3].rstrip()
    rest = rest[:-1] if rest.endswith(")") else rest
    ident, name = int(match[1]), match[2]
    if name == JOIN:
        return PlanCall(ident, name, thought=thought, line=stripped)
    args, kwargs = plan_arguments(rest)
    return PlanCall(ident, name, args, kwargs, thought, stripped)


class PlanReader:
    """A streamed plan, read line by line whatever the chunking: :meth:`feed` each piece and
    get the calls its complete lines hold, then :meth:`close` for the last line. Text after
    ``join`` is ignored (their parser stops there). Each piece is looked at once, so reading
    is linear in the plan's length (their streaming parser splits a piece at its first
    newline only, and a piece holding two loses the lines between them)."""

    def __init__(self) -> None:
        self._tail: list[str] = []
        self._thought: str | None = None
        self.joined = False

    def feed(self, piece: str) -> list[PlanCall]:
        if self.joined or "\n" not in piece:
            if not self.joined:
                self._tail.append(piece)
            return []
        first, *middle, last = piece.split("\n")
        lines = ["".join([*self._tail, first]), *middle]
        self._tail = [last]
        return self._read(lines)

    def close(self) -> list[PlanCall]:
        tail, self._tail = "".join(self._tail), []
        return [] if self.joined else self._read([tail])

    def _read(self, lines: Sequence[str]) -> list[PlanCall]:
        calls = []
        for line in lines:
            read = read_plan_line(line, self._thought)
            if isinstance(read, str):
                self._thought = read
            elif read is not None:
                self._thought = None
                calls.append(read)
                if read.is_join:
                    self.joined = True
                    break
        return calls


def read_plan(text: str) -> list[PlanCall]:
    """A whole plan's calls (a plan that did not stream)."""
    reader = PlanReader()
    return reader.feed(text) + reader.close()


def plan_references(value: object) -> set[int]:
    """The task ids a call's argument values refer to, LLMCompiler's way: ``$N`` or
    ``${N}`` anywhere in a string (``default_dependency_rule``'s ``ID_PATTERN``)."""
    found: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.update(int(m) for m in _PLAN_REFERENCE.findall(item))
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def format_plan_step(call: PlanCall, observation: str | None, with_id: bool = False) -> str:
    """A run call as the joiner (without its id) and the replanner (``with_id``) read it,
    as their ``get_though_action_observation``: its thought, the call, its observation."""
    text = f"{THOUGHT_TAG} {call.thought}\n" if call.thought else ""
    text += f"{call.line if with_id else call.line.split('.', 1)[1].strip()}\n"
    return text + (f"Observation: {observation}\n" if observation is not None else "")


@dataclass(frozen=True)
class JoinerDecision:
    """The joiner's output: its thought, and either the final answer or a replan."""

    thought: str
    answer: str
    replan: bool


def read_joiner(text: str) -> JoinerDecision:
    """``Thought: ...`` then ``Action: Finish(answer)`` or ``Action: Replan(reason)``.

    The answer runs to the last ``)`` of the output, over several lines if need be: their
    ``_parse_joinner_output`` cuts it at the first ``)``, so ``Finish(5 (rounded))`` gives
    ``5 (rounded``. No ``Action:`` line gives an empty answer."""
    thought, answer, replan = "", "", False
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(THOUGHT_TAG) and not answer:
            thought = line[len(THOUGHT_TAG) :].strip()
        elif line.startswith(JOINER_ACTION_TAG):
            action = "\n".join([line, *lines[i + 1 :]])[len(JOINER_ACTION_TAG) :].strip()
            replan = action.startswith(JOINER_REPLAN)
            opened = action.find("(")
            body = action[opened + 1 :] if opened != -1 else ""
            closed = body.rfind(")")
            answer = (body[:closed] if closed != -1 else body).strip()
            break
    return JoinerDecision(thought, answer, replan)


def brace_references(value: object) -> object:
    """``value`` with every ``$N`` inside longer text written ``${N}`` (a whole ``"$N"`` is
    kept): LLMCompiler reads both as references, the plan runner only the braced form
    inside text."""
    if isinstance(value, str):
        if "$" not in value or _PLAN_REFERENCE.fullmatch(value):
            return value
        return _PLAN_REFERENCE.sub(lambda m: "${" + m[1] + "}", value)
    if isinstance(value, dict):
        return {k: brace_references(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [brace_references(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# ReAct (ToolBench's ToolLLaMA: model_adapter's process_system_message, react_parser) and
# native function calling (ToolBench's chatgpt_function, with OpenAI's tools)
# --------------------------------------------------------------------------------------------

_REACT_ANCHOR = "with a function call to actually excute your step."
REACT_FORMAT = " Your output should follow this format:\nThought:\nAction\nAction Input:\n"
REACT_APIS = "\nSpecifically, you have access to the following APIs: "
#: Speakers of a ReAct text prompt (ToolLLaMA's ``tool-llama-single-round`` template).
REACT_SPEAKERS = {"system": "System", "user": "User", "function": "Function",
                  "tool": "Function", "assistant": "Assistant"}  # fmt: skip
#: A ReAct model stops before it writes an observation itself.
REACT_STOP = ("\nFunction:", "\nObservation:")


def react_system(system: str, functions: Sequence[dict]) -> str:
    """ToolLLaMA's ``process_system_message``: the output format after the anchor sentence,
    then the functions as Python writes them (``str(functions)``)."""
    if _REACT_ANCHOR in system:
        system = system.replace(_REACT_ANCHOR, _REACT_ANCHOR + REACT_FORMAT)
    return system + REACT_APIS + str(list(functions))


def react_turn(message: dict) -> str:
    """An assistant message as ToolBench's ``process_assistant_reply`` writes it for
    ToolLLaMA: ``Thought: ...\\nAction: ...\\nAction Input: ...`` (``None`` for no thought)."""
    call = message.get("function_call")
    if call is None:
        return message.get("content") or ""
    arguments = arguments_text(call.get("arguments") or "")
    return f"Thought: {message.get('content')}\n{format_action(call['name'], arguments)}"


def react_prompt(messages: Sequence[dict], functions: Sequence[dict]) -> str:
    """The text prompt ToolLLaMA's ``parse`` builds: ``Role: content`` lines, the system
    message with :func:`react_system`, then ``Assistant:``."""
    lines = []
    for m in messages:
        content = react_turn(m) if m["role"] == "assistant" else m.get("content") or ""
        if m["role"] == "system":
            content = react_system(content, functions)
        lines.append(f"{REACT_SPEAKERS[m['role']]}: {content}\n")
    return "".join(lines) + "Assistant:\n"


def react_chat(messages: Sequence[dict], functions: Sequence[dict]) -> list[dict]:
    """The same conversation as chat messages for a model without tool calling: assistant
    turns as :func:`react_turn`, results as ``user`` messages ``Observation: ...``."""
    out = []
    for m in messages:
        if m["role"] == "system":
            out.append({"role": "system", "content": react_system(m["content"], functions)})
        elif m["role"] == "assistant":
            out.append({"role": "assistant", "content": react_turn(m)})
        elif m["role"] in ("function", "tool"):
            out.append({"role": "user", "content": f"Observation: {m.get('content') or ''}"})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


def read_react(text: str) -> tuple[str | None, str | None]:
    """A ReAct output's thought and its ``Action: ...`` text (for :func:`parse_action`), or
    ``None`` for each part it lacks (ToolBench's ``react_parser`` reads the same three
    fields by their tags)."""
    at = text.find(ACTION_KEY)
    head, call = (text, None) if at == -1 else (text[:at], text[at:])
    head = head.strip()
    head = head[len(THOUGHT_TAG) :].strip() if head.startswith(THOUGHT_TAG) else head
    return head or None, call


def tool_messages(messages: Sequence[dict]) -> list[dict]:
    """A search's messages (ToolBench's ``function_call`` / ``function`` form) as OpenAI's
    tool-calling messages: each call an assistant message with one ``tool_calls`` entry
    (ids ``call_<n>`` in order), each result a ``tool`` message answering it."""
    out: list[dict] = []
    calls, last_id = 0, None
    for m in messages:
        call = m.get("function_call") if m["role"] == "assistant" else None
        if call is not None:
            calls += 1
            last_id = f"call_{calls}"
            entry = {
                "name": call["name"],
                "arguments": arguments_text(call.get("arguments") or "{}"),
            }
            out.append(
                {
                    "role": "assistant",
                    "content": m.get("content") or "",  # llama.cpp's server refuses null
                    "tool_calls": [{"id": last_id, "type": "function", "function": entry}],
                }
            )
        elif m["role"] in ("function", "tool"):
            out.append({"role": "tool", "tool_call_id": last_id, "content": m.get("content") or ""})
        else:
            out.append({"role": m["role"], "content": m.get("content")})
    return out
