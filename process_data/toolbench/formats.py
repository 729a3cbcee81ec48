"""Output formats of the role datasets.

* ``alpha_umi``: α-UMi's records ``{tools, history, input, target}``, byte for byte as its
  scripts print them. The tools and the history turns repeat in every step of a trajectory;
  they are encoded once per trajectory and reused.
* ``chat``: one JSON line per step with OpenAI-style ``messages`` and ``tools``, the ``role``
  the sample trains and ``train_turns``, the indices of the messages that carry the loss.
  Where a chat template or a server knows only system / user / assistant messages,
  :func:`plain_roles` writes the tool turns as text in the α-UMi format's own words.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from process_data.jsonio import encode_list_items, encode_str, indent_json
from process_data.protocol import (
    ASSISTANT,
    BACKBONE_GIVE_UP,
    CALLER,
    CONCLUSION_TAG,
    NEXT_CALLER,
    NEXT_CONCLUSION,
    NEXT_GIVE_UP,
    OBSERVATION,
    USER,
    chat_tools,
    format_backbone,
    function_tools,
    parse_action,
    strip_marker,
)
from process_data.toolbench.roles import RoleSteps, Step, backbone_decision

FORMATS = ("alpha_umi", "chat")


class AlphaUmiEncoder:
    """Encodes one trajectory's records at depth 1 of an α-UMi array.

    The tools (depth 2) and the conversation turns (depth 3) are encoded once and reused by
    the stage-1 and stage-2 records and by every step of every role.
    """

    def __init__(self, tools: list[dict]):
        self.tools_list = tools
        self.tools = indent_json(tools, 2)
        self.conversations: list[dict] | None = None
        self._turns: list[str] = []

    def _turns_upto(self, index: int) -> list[str]:
        assert self.conversations is not None
        while len(self._turns) < index:
            self._turns.append(indent_json(self.conversations[len(self._turns)], 3))
        return self._turns[:index]

    def encode_record(self, record: dict) -> str:
        """A stage-1 or stage-2 record, as ``indent_json(record, 1)`` prints it."""
        parts = []
        for key, value in record.items():
            if value is self.tools_list:
                text = self.tools
            elif self.conversations is not None and value is self.conversations:
                text = encode_list_items(self._turns_upto(len(value)), 2)
            else:
                text = indent_json(value, 2)
            parts.append(encode_str(key) + ": " + text)
        return "{\n    " + ",\n    ".join(parts) + "\n  }" if parts else "{}"

    def split(self, step: Step) -> tuple[str, str]:
        """The record before and after the ``input`` value (filled in later for stale inputs)."""
        head = (
            '{\n    "tools": '
            + self.tools
            + ',\n    "history": '
            + encode_list_items(self._turns_upto(step.index), 2)
            + ',\n    "input": '
        )
        tail = ',\n    "target": ' + encode_str(step.target) + "\n  }"
        return head, tail

    def encode(self, step: Step) -> str:
        head, tail = self.split(step)
        return head + step.encoded_input() + tail


# --------------------------------------------------------------------------------------------
# Chat format
# --------------------------------------------------------------------------------------------

#: System prompts of the chat format: the instruction part of each α-UMi template, without
#: the tool documents and history (those travel as ``tools`` and ``messages``).
CHAT_SYSTEM: dict[str, str] = {
    "backbone": "You are a tool-using assistant. Answer the user's question by calling the "
    "available tools one step at a time: give your thought, then call one tool. Once the "
    f"question is answered, write the final answer after {CONCLUSION_TAG!r}, or "
    f"{CONCLUSION_TAG + BACKBONE_GIVE_UP!r} if it cannot be answered.",
    "planner": "You are the planner of a team of agents. Given the conversation so far, write "
    f"the thought of the next step, followed by {NEXT_CALLER!r} (a tool must be called), "
    f"{NEXT_CONCLUSION!r} (the question can be answered) or {NEXT_GIVE_UP!r}.",
    "caller": "You are the caller of a team of agents. Make the tool call that carries out the "
    "planner's last thought.",
    "summarizer": "You are the summarizer of a team of agents. Write the final answer to the "
    "user's question from the conversation so far.",
}


class ChatEncoder:
    """Encodes the steps of one trajectory as chat-format JSON lines.

    The conversation maps turn by turn: user → ``user``; planner turn → ``assistant`` with the
    thought and its ``Next:`` marker; caller turn → ``assistant`` with a ``tool_calls`` entry;
    observation → ``tool``; conclusion → ``assistant``. For the backbone, a planner turn and the
    call or conclusion that follows it form one ``assistant`` message, as in single-agent
    function calling.
    """

    def __init__(self, record_id: str, tools: Sequence[dict], conversations: Sequence[dict]):
        """``tools``: the OpenAI tool schemas of the trajectory's functions
        (:func:`~process_data.protocol.function_tools`)."""
        self.record_id = record_id
        self.conversations = conversations
        self.tools = list(tools)
        self._multi: list[dict] | None = None
        self._backbone: list[tuple[int, dict]] | None = None

    def _call_message(self, turn_index: int, text: str) -> dict:
        parsed = parse_action(text)
        name, arguments = parsed if parsed is not None else ("", text)
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": f"call_{turn_index}",
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        }

    def _multi_messages(self) -> list[dict]:
        if self._multi is None:
            messages: list[dict] = []
            last_call = None
            for k, turn in enumerate(self.conversations):
                speaker, value = turn["from"], turn["value"]
                if speaker == USER:
                    messages.append({"role": "user", "content": value})
                elif speaker == CALLER:
                    last_call = f"call_{k}"
                    messages.append(self._call_message(k, value))
                elif speaker == OBSERVATION:
                    messages.append({"role": "tool", "tool_call_id": last_call, "content": value})
                else:  # planner turns and conclusions
                    messages.append({"role": "assistant", "content": value})
            self._multi = messages
        return self._multi

    def _backbone_messages(self) -> list[tuple[int, dict]]:
        """``(first turn index, message)`` pairs of the single-agent view."""
        if self._backbone is None:
            conv, multi, out, k = self.conversations, self._multi_messages(), [], 0
            while k < len(conv):
                if conv[k]["from"] != ASSISTANT:
                    out.append((k, multi[k]))  # user and tool messages are the same
                    k += 1
                    continue
                plan = conv[k]["value"]
                decision = backbone_decision(conv, k)
                follow = conv[k + 1]["value"] if decision in ("caller", "conclusion") else None
                if decision == "caller":
                    message = self._call_message(k + 1, follow)  # type: ignore[arg-type]
                    message["content"] = strip_marker(plan, decision)
                elif decision is not None:
                    message = {
                        "role": "assistant",
                        "content": format_backbone(plan, decision, follow),
                    }
                else:
                    message = {"role": "assistant", "content": plan}
                out.append((k, message))
                k += 2 if follow is not None else 1
            self._backbone = out
        return self._backbone

    def prompt(self, role: str, index: int) -> list[dict]:
        """The messages a role sees before turn ``index``, system prompt first: the input of
        a training sample, and what inference sends to a chat endpoint."""
        if role == "backbone":
            history = [m for first, m in self._backbone_messages() if first < index]
        else:
            history = self._multi_messages()[:index]  # one message per turn
        return [{"role": "system", "content": CHAT_SYSTEM[role]}, *history]

    def encode(self, role: str, step: Step, step_number: int) -> str:
        messages = self.prompt(role, step.index)
        if role == "backbone":
            target = next(m for first, m in self._backbone_messages() if first == step.index)
        elif role == "caller":
            target = self._call_message(step.index, step.target)
        else:
            target = {"role": "assistant", "content": step.target}
        messages.append(target)
        record = {
            "id": f"{self.record_id}#{step_number}",
            "role": role,
            "messages": messages,
            "tools": self.tools,
            "train_turns": [len(messages) - 1],
        }
        return json.dumps(record, ensure_ascii=False)


class TrajectoryEncoder:
    """The encoders of one trajectory, shared by its stage records and all its roles."""

    def __init__(self, uid: str, tools: list[dict], functions: list[dict] | None = None):
        """``tools``: α-UMi's tool documents; ``functions``: ToolBench's functions they were
        converted from, when the input has them (answer files), for the chat format's tool
        schemas (else the documents are converted back)."""
        self.uid = uid
        self.alpha = AlphaUmiEncoder(tools)
        self.functions = functions
        self._chat: ChatEncoder | None = None

    def set_conversations(self, conversations: list[dict]) -> None:
        self.alpha.conversations = conversations

    def role_samples(self, fmt: str, role_steps: RoleSteps) -> list:
        """Encode a role's steps; compat give-ups waiting for their prompt stay as
        ``(head, tail, step)`` triples (see :func:`process_data.toolbench.outputs.resolve`)."""
        if fmt == "chat":
            if self._chat is None:
                assert self.alpha.conversations is not None
                schemas = (
                    function_tools(self.functions)
                    if self.functions is not None
                    else chat_tools(self.alpha.tools_list)
                )
                self._chat = ChatEncoder(self.uid, schemas, self.alpha.conversations)
            chat = self._chat
            return [chat.encode(role_steps.role, s, n) for n, s in enumerate(role_steps.steps)]
        return [
            self.alpha.encode(step)
            if not step.stale or step.stale_history is not None
            else (*self.alpha.split(step), step)
            for step in role_steps.steps
        ]
