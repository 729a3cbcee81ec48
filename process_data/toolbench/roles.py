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

from process_data.jsonio import encode_str
from process_data.protocol import (
    ASSISTANT,
    CALLER,
    CONCLUSION,
    HALLUCINATED_NAME,
    NEXT_GIVE_UP,
    OBSERVATION,
    PLACEHOLDER,
    PROMPT_TEMPLATES,
    SPEAKERS,
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


class RolePrompt:
    """One role's prompt for one trajectory: the template with the tools filled in, and the
    answering speaker's tag. It builds each step's input, and its JSON encoding.

    α-UMi fills ``{history}`` and then ``{thought}`` with chained ``str.replace`` calls. When
    ``{history}`` occurs once, the input is ``head + history + rest`` (with ``{thought}``
    replaced in ``rest`` when it occurs only there), and its encoding is assembled from
    pieces encoded once, the history being extended turn by turn. In any other case the
    chained replacement is done literally.
    """

    _T = "{thought}"

    def __init__(self, tool_prompt: str, suffix: str):
        self.tool_prompt = tool_prompt
        self.suffix = suffix
        head, _, rest = tool_prompt.partition("{history}")
        self._split = tool_prompt.count("{history}") == 1
        # "{thought}" only once, in rest, far enough from its start to check boundaries
        self._thought_split = (
            self._split
            and self._T not in head
            and rest.count(self._T) == 1
            and rest.find(self._T) >= len(self._T)
        )
        middle, _, tail = rest.partition(self._T)
        self._head_end, self._rest_start = head[-len(self._T) :], rest[: len(self._T)]
        self._enc = {
            name: _inner(text)
            for name, text in (
                ("head", head),
                ("rest", rest),
                ("middle", middle),
                ("tail", tail),
                ("suffix", suffix),
            )
        }
        self._history = ""
        self._history_encoded = ""

    def text(self, history: str, thought: str | None = None) -> str:
        """The model input for a step with this history (and thought, for the caller)."""
        return fill_step(self.tool_prompt, history, thought) + self.suffix

    def _thought_is_safe(self, history: str) -> bool:
        """No ``{thought}`` in the history or across its ends, so only ``rest``'s is replaced."""
        t, n = self._T, len(self._T)
        if (
            t in history
            or t in self._head_end + history[:n]
            or t in history[-n:] + self._rest_start
        ):
            return False
        return len(history) >= n or t not in self._head_end + history + self._rest_start

    def encoded(self, history: str, thought: str | None = None) -> str:
        """``json.dumps(self.text(history, thought))``, reusing what earlier steps encoded."""
        if not self._split or (
            thought is not None and not (self._thought_split and self._thought_is_safe(history))
        ):
            return encode_str(self.text(history, thought))
        if history.startswith(self._history):  # histories grow turn by turn
            self._history_encoded += _inner(history[len(self._history) :])
        else:
            self._history_encoded = _inner(history)
        self._history = history
        enc = self._enc
        if thought is None:
            body = enc["head"] + self._history_encoded + enc["rest"]
        else:
            body = (
                enc["head"] + self._history_encoded + enc["middle"] + _inner(thought) + enc["tail"]
            )
        return '"' + body + enc["suffix"] + '"'


def _inner(text: str) -> str:
    return encode_str(text)[1:-1]


@dataclass
class Step:
    """One training sample: ``conversations[:index]`` is the history, ``target`` the answer.

    ``history`` is the rendered history of the step. A compat backbone give-up (``stale``) is
    prompted, as in α-UMi, with the prompt of the last call or conclusion step: its history is
    ``stale_history`` when that step is in the same trajectory, else unknown here.
    """

    index: int
    target: str
    prompt: RolePrompt
    history: str
    thought: str | None = None
    stale: bool = False
    stale_history: str | None = None

    @property
    def input(self) -> str | None:
        """The model input, or ``None`` when it comes from an earlier trajectory."""
        if not self.stale:
            return self.prompt.text(self.history, self.thought)
        if self.stale_history is not None:
            return self.prompt.text(self.stale_history)
        return None

    @property
    def fresh_input(self) -> str:
        """The prompt built from the step's own history."""
        return self.prompt.text(self.history, self.thought)

    def encoded_input(self) -> str:
        if not self.stale:
            return self.prompt.encoded(self.history, self.thought)
        assert self.stale_history is not None
        return self.prompt.encoded(self.stale_history)


@dataclass
class RoleSteps:
    """The steps of one role for one trajectory, and the steps left out with the reason."""

    role: str
    prompt: RolePrompt
    steps: list[Step] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    #: backbone: the history of this trajectory's last call or conclusion step.
    last_history: str | None = None

    @property
    def last_input(self) -> str | None:
        """α-UMi's backbone prompt variable as this trajectory leaves it."""
        return None if self.last_history is None else self.prompt.text(self.last_history)


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


def _entry(speaker: str, value: str) -> str:
    """The history entry of any turn (planner, caller and summarizer histories); turns with
    an unknown speaker are left out, as α-UMi's scripts leave them out."""
    return render_turn(speaker, value) if speaker in SPEAKERS else ""


def _planner(conv: list[dict], out: RoleSteps) -> None:
    history = ""
    for i, turn in enumerate(conv):
        speaker, value = turn["from"], turn["value"]
        if speaker == ASSISTANT:
            nxt = _next_speaker(conv, i)
            if NEXT_GIVE_UP in value or nxt in (CONCLUSION, CALLER):
                if nxt == CALLER and HALLUCINATED_NAME in conv[i + 1]["value"]:
                    out.skipped.append((i, "the call names a hallucinated function"))
                else:
                    out.steps.append(Step(i, value, out.prompt, history))
        history += _entry(speaker, value)


def _caller(conv: list[dict], out: RoleSteps) -> None:
    history = ""
    for i, turn in enumerate(conv):
        speaker, value = turn["from"], turn["value"]
        if speaker == CALLER:
            if HALLUCINATED_NAME in value:
                out.skipped.append((i, "the call names a hallucinated function"))
                continue
            out.steps.append(Step(i, value, out.prompt, history, thought=conv[i - 1]["value"]))
        history += _entry(speaker, value)


def _summarizer(conv: list[dict], out: RoleSteps) -> None:
    history = ""
    for i, turn in enumerate(conv):
        speaker, value = turn["from"], turn["value"]
        if speaker == CONCLUSION:
            if value == PLACEHOLDER:
                out.skipped.append((i, f"Finish gave no final answer ({PLACEHOLDER!r})"))
                continue
            out.steps.append(Step(i, value, out.prompt, history))
        history += _entry(speaker, value)


def backbone_decision(conv: list[dict], i: int) -> str | None:
    """What the backbone does at planner turn ``i``, decided as α-UMi's script does: a give-up
    marker anywhere in the turn, else the speaker of the next turn."""
    if NEXT_GIVE_UP in conv[i]["value"]:
        return "give up"
    nxt = _next_speaker(conv, i)
    return nxt if nxt in (CALLER, CONCLUSION) else None


def _backbone_turn(conv: list[dict], i: int) -> tuple[str | None, str]:
    """``(decision, text)`` of the backbone at planner turn ``i``: the planner turn merged
    with the call or answer that follows it (the plain turn when it decides nothing)."""
    decision = backbone_decision(conv, i)
    if decision is None:
        return None, conv[i]["value"]
    follow = conv[i + 1]["value"] if decision != "give up" else None
    return decision, format_backbone(conv[i]["value"], decision, follow)


def backbone_entry(conv: list[dict], i: int) -> str:
    """Turn ``i``'s entry in the history of the backbone's prompts, as its training data
    renders it: a planner turn merged with its call or answer, user and observation turns as
    they are, nothing for caller turns and conclusions (inside the merged turns). Inference
    prompts the backbone with the same history."""
    speaker, value = conv[i]["from"], conv[i]["value"]
    if speaker == ASSISTANT:
        return render_turn(ASSISTANT, _backbone_turn(conv, i)[1])
    return _plain_history(speaker, value)


def render_history(conv: list[dict]) -> str:
    """The history after ``conv`` in planner, caller and summarizer prompts, as their
    training steps render it; the agent prompts with it so that its inputs are the training
    inputs of the same conversation."""
    return "".join(_entry(turn["from"], turn["value"]) for turn in conv)


def render_backbone_history(conv: list[dict]) -> str:
    """The history after ``conv`` in backbone prompts (see :func:`backbone_entry`)."""
    return "".join(backbone_entry(conv, i) for i in range(len(conv)))


def _backbone(conv: list[dict], out: RoleSteps, compat: bool) -> None:
    history = ""
    for i, turn in enumerate(conv):
        if turn["from"] != ASSISTANT:
            history += _plain_history(turn["from"], turn["value"])
            continue
        decision, span = _backbone_turn(conv, i)
        if decision is not None:
            step = Step(i, span, out.prompt, history)
            if decision == "give up" and compat:
                step.stale, step.stale_history = True, out.last_history
            else:
                out.last_history = history
            out.steps.append(step)
        history += render_turn(ASSISTANT, span)


def build_role_steps(
    role: str,
    record: dict,
    compat: bool,
    prompt_type: str | None = None,
) -> RoleSteps:
    """The steps of ``role`` for one stage-2 record. Raises :class:`RecordError` if malformed."""
    check_role(role)
    tools, conv = validate_stage2(record)
    template = PROMPT_TEMPLATES[check_prompt_type(prompt_type or default_prompt_type(role))]
    return role_steps(role, conv, fill_tools(template, tools), compat)


def role_steps(role: str, conv: list[dict], tool_prompt: str, compat: bool) -> RoleSteps:
    """The steps of ``role`` for a validated conversation (see :func:`validate_stage2`).

    ``tool_prompt`` is the role's template with the tools filled in (:func:`fill_tools`).
    """
    out = RoleSteps(role, RolePrompt(tool_prompt, prompt_suffix(role)))
    if role == "backbone":
        _backbone(conv, out, compat)
    else:
        {"planner": _planner, "caller": _caller, "summarizer": _summarizer}[role](conv, out)
    return out


class StaleInput:
    """α-UMi's backbone prompt variable, carried across trajectories in output order."""

    def __init__(self) -> None:
        self.value: str | None = None

    def input_for(self, step: Step) -> str:
        """The prompt α-UMi gives a give-up step whose trajectory has not set it yet."""
        # With no earlier prompt α-UMi crashes; the step's own prompt is used instead.
        return self.value if self.value is not None else step.fresh_input
