"""Role datasets: a stage-2 conversation → the training steps of one role.

A step is one model call: the history before turn ``index`` rendered into the role's prompt,
and the text the role must produce. The rules follow α-UMi's ``prepro_{backbone,planner,caller,
summarizer}.py``:

* planner: every planner turn that leads to a call, a conclusion or a give-up; calls whose
  caller turn names a hallucinated function are left out (and listed);
* caller: every caller turn except hallucinated ones, which are also kept out of the caller's
  history; the prompt carries the planner's thought;
* summarizer: every conclusion except ``"none"`` (a ``Finish`` without a final answer);
* backbone: one step per planner turn, with the caller's call or the conclusion appended.

α-UMi's backbone script fills a give-up step's prompt from a variable left over from the last
call or conclusion step, possibly of an earlier trajectory (or crashes with a ``TypeError``
when there was none). By default the prompt is built from the step's own history; with
``compat=True`` the step's ``input`` is ``None`` and :func:`resolve_stale` fills it in the order
the records are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from process_data.protocol import (
    ASSISTANT,
    CALLER,
    CONCLUSION,
    HALLUCINATED_NAME,
    NEXT_GIVE_UP,
    OBSERVATION,
    PROMPT_TEMPLATES,
    USER,
    check_prompt_type,
    check_role,
    default_prompt_type,
    fill_step,
    fill_tools,
    format_backbone,
    prompt_suffix,
    render_turn,
)
from process_data.toolbench.records import RecordError, require


@dataclass
class Step:
    """One training sample: ``conversations[:index]`` is the history, ``target`` the answer.

    ``input`` is ``None`` only for compat backbone give-ups; ``fresh_input`` is the prompt built
    from the step's own history.
    """

    index: int
    input: str | None
    target: str
    fresh_input: str


@dataclass
class RoleSteps:
    """The steps of one role for one trajectory, and the steps left out with the reason."""

    role: str
    steps: list[Step] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    #: compat backbone only: the prompt of this trajectory's last call or conclusion step.
    last_input: str | None = None


def validate_stage2(record: object) -> tuple[list[dict], list[dict]]:
    """Check the shape the role builders rely on; return ``(tools, conversations)``."""
    require(isinstance(record, dict), "record is not an object")
    tools = record.get("tools")  # type: ignore[union-attr]
    conv = record.get("conversations")  # type: ignore[union-attr]
    require(isinstance(tools, list), "tools is not a list")
    require(isinstance(conv, list), "conversations is not a list")
    for k, tool in enumerate(tools):
        require(isinstance(tool, dict), f"tool {k} is not an object")
        require(isinstance(tool.get("Name"), str), f"tool {k} has no string Name")
    for k, turn in enumerate(conv):
        require(isinstance(turn, dict), f"turn {k} is not an object")
        speaker, value = turn.get("from"), turn.get("value")
        require(isinstance(speaker, str), f"turn {k} has no string 'from'")
        if not isinstance(value, str):
            raise RecordError(
                f"turn {k} ({speaker}) value is {type(value).__name__}, expected a string"
            )
    return tools, conv


def _next_speaker(conv: list[dict], i: int) -> str | None:
    return conv[i + 1]["from"] if i + 1 < len(conv) else None


def _plain_history(speaker: str, value: str) -> str:
    """The history entry every role writes for user and observation turns."""
    return render_turn(speaker, value) if speaker in (USER, OBSERVATION) else ""


def _planner(conv: list[dict], prompt: str, out: RoleSteps) -> None:
    history = ""
    for i, turn in enumerate(conv):
        speaker, value = turn["from"], turn["value"]
        if speaker == ASSISTANT:
            nxt = _next_speaker(conv, i)
            if NEXT_GIVE_UP in value or nxt in (CONCLUSION, CALLER):
                text = fill_step(prompt, history)
                if nxt == CALLER and HALLUCINATED_NAME in conv[i + 1]["value"]:
                    out.skipped.append((i, "the call names a hallucinated function"))
                else:
                    out.steps.append(Step(i, text, value, text))
        if speaker in (ASSISTANT, CALLER, CONCLUSION):
            history += render_turn(speaker, value)
        else:
            history += _plain_history(speaker, value)


def _caller(conv: list[dict], prompt: str, out: RoleSteps) -> None:
    history = ""
    for i, turn in enumerate(conv):
        speaker, value = turn["from"], turn["value"]
        if speaker == CALLER:
            if HALLUCINATED_NAME in value:
                out.skipped.append((i, "the call names a hallucinated function"))
                continue
            text = fill_step(prompt, history, thought=conv[i - 1]["value"])
            out.steps.append(Step(i, text, value, text))
        if speaker in (ASSISTANT, CALLER, CONCLUSION):
            history += render_turn(speaker, value)
        else:
            history += _plain_history(speaker, value)


def _summarizer(conv: list[dict], prompt: str, out: RoleSteps) -> None:
    history = ""
    for i, turn in enumerate(conv):
        speaker, value = turn["from"], turn["value"]
        if speaker == CONCLUSION:
            if value == "none":
                out.skipped.append((i, "Finish gave no final answer ('none')"))
                continue
            text = fill_step(prompt, history)
            out.steps.append(Step(i, text, value, text))
        if speaker in (ASSISTANT, CALLER, CONCLUSION):
            history += render_turn(speaker, value)
        else:
            history += _plain_history(speaker, value)


def backbone_decision(conv: list[dict], i: int) -> str | None:
    """What the backbone does at planner turn ``i``, decided as α-UMi's script does: a give-up
    marker anywhere in the turn, else the speaker of the next turn."""
    if NEXT_GIVE_UP in conv[i]["value"]:
        return "give up"
    nxt = _next_speaker(conv, i)
    return nxt if nxt in (CALLER, CONCLUSION) else None


def _backbone(conv: list[dict], prompt: str, out: RoleSteps, compat: bool) -> None:
    history = ""
    for i, turn in enumerate(conv):
        speaker, value = turn["from"], turn["value"]
        if speaker == ASSISTANT:
            decision = backbone_decision(conv, i)
            span = value
            if decision is not None:
                follow = conv[i + 1]["value"] if decision != "give up" else None
                span = format_backbone(value, decision, follow)
                text = fill_step(prompt, history)
                if decision == "give up" and compat:
                    out.steps.append(Step(i, out.last_input, span, text))
                else:
                    out.steps.append(Step(i, text, span, text))
                    out.last_input = text
            history += render_turn(ASSISTANT, span)
        else:
            history += _plain_history(speaker, value)


def build_role_steps(
    role: str,
    record: dict,
    compat: bool,
    prompt_type: str | None = None,
    tool_prompt: str | None = None,
) -> RoleSteps:
    """The steps of ``role`` for one stage-2 record. Raises :class:`RecordError` if malformed.

    ``tool_prompt`` is the template with the tools filled in (see :func:`fill_tools`); pass it
    to avoid rendering the tool documents again for each role.
    """
    check_role(role)
    tools, conv = validate_stage2(record)
    if tool_prompt is None:
        template = PROMPT_TEMPLATES[check_prompt_type(prompt_type or default_prompt_type(role))]
        tool_prompt = fill_tools(template, tools)
    out = RoleSteps(role)
    if role == "backbone":
        _backbone(conv, tool_prompt, out, compat)
    else:
        {"planner": _planner, "caller": _caller, "summarizer": _summarizer}[role](
            conv, tool_prompt, out
        )
    suffix = prompt_suffix(role)
    for step in out.steps:
        step.fresh_input += suffix
        if step.input is not None:
            step.input += suffix
    if out.last_input is not None:
        out.last_input += suffix
    return out


class StaleInput:
    """α-UMi's backbone prompt variable, carried across trajectories in output order."""

    def __init__(self) -> None:
        self.value: str | None = None

    def fill(self, step: Step) -> None:
        """Give a compat give-up step the prompt α-UMi would have used."""
        # With no earlier prompt α-UMi crashes; the step's own prompt is used instead.
        step.input = self.value if self.value is not None else step.fresh_input

    def update(self, steps: RoleSteps) -> None:
        if steps.last_input is not None:
            self.value = steps.last_input
