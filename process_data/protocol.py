"""The multi-LLM agent protocol: roles, prompt templates, step markers and their parsers.

This module is the single source of truth shared by data processing, training and inference.
The prompt templates, the role prefixes and the ``Next: ...`` markers are part of α-UMi's data
format (X-PLUG/Multi-LLM-Agent, ``GLPFT/utils/prompt_lib.py`` and its ``process_data``
scripts): they appear verbatim in every α-UMi training file, so they are reproduced exactly.

Every formatter here has a parser that inverts it; the pairs are tested as inverses.

The literal ``</s>`` below is α-UMi's *history separator*, a piece of text inside the prompt
string. It is not the tokenizer's end-of-sequence token, which always comes from the tokenizer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

#: The four trainable roles. ``backbone`` is the single-LLM agent that does all three jobs.
ROLES: tuple[str, ...] = ("backbone", "planner", "caller", "summarizer")

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
Decision = Literal["caller", "conclusion", "give up"]
NEXT_CALLER = "Next: caller."
NEXT_CONCLUSION = "Next: conclusion."
NEXT_GIVE_UP = "Next: give up."
NEXT_MARKERS: dict[str, str] = {
    "caller": NEXT_CALLER,
    "conclusion": NEXT_CONCLUSION,
    "give up": NEXT_GIVE_UP,
}

ACTION_PREFIX = "Action: "
ACTION_INPUT_PREFIX = "\nAction Input: "

#: α-UMi's history separator (text inside prompts, not a tokenizer token).
TURN_END = "</s>"

#: The name ToolBench gives its terminal function, and its two return types.
FINISH = "Finish"
GIVE_ANSWER = "give_answer"
GIVE_UP_AND_RESTART = "give_up_and_restart"

#: The text a caller target contains when ToolBench logged a call to a non-existent function.
HALLUCINATED_NAME = "invalid_hallucination_function_name"

#: What α-UMi's trainer puts before every ``input`` when it tokenizes a sample (its
#: ``train.py``); inference must prompt the trained models the same way.
MODEL_INPUT_PREFIX = "system: "

#: The backbone's target text for a give-up step, and the prefix of its conclusions.
BACKBONE_CONCLUSION_PREFIX = "\nconclusion: "
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


def parse_tool_docs(doc: str) -> list[dict]:
    """Invert :func:`render_tool_docs` (the ``doc`` half)."""
    return [json.loads(line) for line in doc.split("\n") if line]


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


# --------------------------------------------------------------------------------------------
# Planner turns: "<thought>\n Next: caller."
# --------------------------------------------------------------------------------------------


def format_plan(thought: str | None, decision: str) -> str:
    """A planner turn as α-UMi's stage 2 writes it: the thought, a newline, a space, the marker.

    ``thought=None`` (an assistant message with no content) gives just ``" Next: ..."``.
    """
    span = "" if thought is None else thought + "\n"
    return span + " " + NEXT_MARKERS[decision]


def parse_plan(text: str) -> tuple[str | None, Decision | None]:
    """Split a planner turn into ``(thought, decision)``; inverts :func:`format_plan`.

    Model outputs are parsed leniently: the last marker wins, the final period is optional,
    and text after the marker is ignored. ``decision`` is ``None`` when no marker is found.
    """
    best: tuple[int, int, Decision] | None = None
    for decision, marker in NEXT_MARKERS.items():
        start = text.rfind(marker[:-1])  # "Next: caller" with or without the period
        if start != -1 and (best is None or start > best[0]):
            best = (start, start + len(marker[:-1]), decision)  # type: ignore[assignment]
    if best is None:
        return (text.strip() or None), None
    start, _, decision = best
    head = text[:start]
    if head.endswith(" "):
        head = head[:-1]
    if head == "":
        return None, decision
    if head.endswith("\n"):
        head = head[:-1]
    return head, decision


# --------------------------------------------------------------------------------------------
# Caller turns: "Action: name\nAction Input: {...}"
# --------------------------------------------------------------------------------------------


def format_action(name: str, arguments: str) -> str:
    """A caller turn. ``arguments`` is the raw argument string (usually JSON)."""
    return ACTION_PREFIX + name + ACTION_INPUT_PREFIX + arguments


_ACTION_RE = re.compile(r"Action:\s*(?P<name>[^\n]*?)\s*\n\s*Action Input:\s?(?P<args>.*)", re.S)


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


def parse_arguments(arguments: str) -> dict | None:
    """The caller's argument string as a dict, or ``None`` when it is not a JSON object."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------------------------
# Histories: "user: ...</s>assistant: ...</s>caller: ...</s>observation: ...assistant: ..."
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    """One turn of a stage-2 conversation."""

    speaker: str
    text: str

    def to_record(self) -> dict[str, str]:
        return {"from": self.speaker, "value": self.text}


def render_turn(speaker: str, text: str) -> str:
    """One history entry. Observations carry no separator: that is α-UMi's format."""
    end = "" if speaker == OBSERVATION else TURN_END
    return f"{speaker}: {text}{end}"


def render_history(turns: Iterable[Turn]) -> str:
    """Render turns as α-UMi's history string."""
    return "".join(render_turn(t.speaker, t.text) for t in turns)


_SPEAKER_PREFIXES = tuple(f"{s}: " for s in SPEAKERS)
_OBSERVATION_PREFIX = f"{OBSERVATION}: "


def parse_history(history: str) -> list[Turn]:
    """Invert :func:`render_history`.

    Observations carry no separator, so an observation ends at the next ``"observation: "`` or
    else where the last speaker prefix before the next separator begins. This is unambiguous
    unless an observation's own text contains a speaker prefix such as ``"assistant: "``.
    """
    turns: list[Turn] = []
    pos = 0
    while pos < len(history):
        end = history.find(TURN_END, pos)
        end = len(history) if end == -1 else end
        if history.startswith(_OBSERVATION_PREFIX, pos):
            body = pos + len(_OBSERVATION_PREFIX)
            cut = max(
                history.rfind(p, body, end) for p in _SPEAKER_PREFIXES if p != _OBSERVATION_PREFIX
            )
            again = history.find(_OBSERVATION_PREFIX, body, end)
            if again != -1 and (cut == -1 or again < cut):
                cut = again  # observations in a row
            if cut == -1 and end < len(history):
                raise ValueError(f"observation followed by a separator at {pos}")
            stop = len(history) if cut == -1 else cut
            turns.append(Turn(OBSERVATION, history[body:stop]))
            pos = stop
            continue
        speaker, sep, _ = history[pos:end].partition(": ")
        if not sep or speaker not in SPEAKERS:
            raise ValueError(f"not a history turn at {pos}: {history[pos : pos + 40]!r}")
        if end == len(history):
            raise ValueError(f"unterminated {speaker} turn at {pos}")
        turns.append(Turn(speaker, history[pos + len(speaker) + 2 : end]))
        pos = end + len(TURN_END)
    return turns


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


def parse_backbone(text: str) -> tuple[str | None, Decision | None, str | None]:
    """Split a backbone output into ``(thought, decision, follow_up)``.

    Inverts :func:`format_backbone` when the thought itself contains neither ``"\nAction: "``
    nor ``"\nconclusion: "``. ``decision`` is ``None`` when the output has neither.
    """
    padded = text if text.startswith("\n") else "\n" + text
    offset = len(padded) - len(text)
    call = padded.find("\n" + ACTION_PREFIX)
    conclusion = padded.find(BACKBONE_CONCLUSION_PREFIX)
    if call == -1 and conclusion == -1:
        return text, None, None
    if conclusion == -1 or (call != -1 and call < conclusion):
        return padded[offset:call] if call >= offset else "", "caller", padded[call + 1 :]
    thought = padded[offset:conclusion] if conclusion >= offset else ""
    answer = padded[conclusion + len(BACKBONE_CONCLUSION_PREFIX) :]
    if answer == BACKBONE_GIVE_UP:
        return thought, "give up", None
    return thought, "conclusion", answer
