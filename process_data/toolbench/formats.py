"""Output formats of the role datasets.

* ``alpha_umi``: α-UMi's records ``{tools, history, input, target}``, byte for byte as its
  scripts print them. The tools and the history turns repeat in every step of a trajectory;
  they are encoded once per trajectory and reused.
* ``chat``: one JSON line per step with OpenAI-style ``messages`` and ``tools``, the ``role``
  the sample trains and ``train_turns``, the indices of the messages that carry the loss.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from process_data.jsonio import encode_list_items, encode_str, indent_json
from process_data.protocol import (
    ASSISTANT,
    CALLER,
    OBSERVATION,
    USER,
    format_backbone,
    parse_action,
    strip_marker,
)
from process_data.toolbench.roles import RoleSteps, Step, backbone_decision

FORMATS = ("alpha_umi", "chat")


class AlphaUmiEncoder:
    """Encodes the steps of one trajectory as α-UMi records (at depth 1 of the array)."""

    def __init__(self, tools: Sequence[dict], conversations: Sequence[dict]):
        self.conversations = conversations
        self.tools = indent_json(list(tools), 2)
        self._turns: list[str] = []

    def _history(self, index: int) -> str:
        while len(self._turns) < index:
            self._turns.append(indent_json(self.conversations[len(self._turns)], 3))
        return encode_list_items(self._turns[:index], 2)

    def split(self, step: Step) -> tuple[str, str]:
        """The record before and after the ``input`` value (filled in later for stale inputs)."""
        head = (
            '{\n    "tools": '
            + self.tools
            + ',\n    "history": '
            + self._history(step.index)
            + ',\n    "input": '
        )
        tail = ',\n    "target": ' + encode_str(step.target) + "\n  }"
        return head, tail

    def encode(self, step: Step) -> str:
        assert step.input is not None
        head, tail = self.split(step)
        return head + encode_str(step.input) + tail


# --------------------------------------------------------------------------------------------
# Chat format
# --------------------------------------------------------------------------------------------

#: System prompts of the chat format: the instruction part of each α-UMi template, without
#: the tool documents and history (those travel as ``tools`` and ``messages``).
CHAT_SYSTEM: dict[str, str] = {
    "backbone": "You are a tool-using assistant. Answer the user's question by calling the "
    "available tools one step at a time: give your thought, then call one tool. Once the "
    "question is answered, write the final answer after 'conclusion: ', or 'conclusion: give "
    "up.' if it cannot be answered.",
    "planner": "You are the planner of a team of agents. Given the conversation so far, write "
    "the thought of the next step, followed by 'Next: caller.' (a tool must be called), "
    "'Next: conclusion.' (the question can be answered) or 'Next: give up.'.",
    "caller": "You are the caller of a team of agents. Make the tool call that carries out the "
    "planner's last thought.",
    "summarizer": "You are the summarizer of a team of agents. Write the final answer to the "
    "user's question from the conversation so far.",
}


def chat_tools(tools: Sequence[dict]) -> list[dict]:
    """α-UMi tool documents (``{Name, function, input}``) as OpenAI function schemas.

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


class ChatEncoder:
    """Encodes the steps of one trajectory as chat-format JSON lines.

    The conversation maps turn by turn: user → ``user``; planner turn → ``assistant`` with the
    thought and its ``Next:`` marker; caller turn → ``assistant`` with a ``tool_calls`` entry;
    observation → ``tool``; conclusion → ``assistant``. For the backbone, a planner turn and the
    call or conclusion that follows it form one ``assistant`` message, as in single-agent
    function calling.
    """

    def __init__(self, record_id: str, tools: Sequence[dict], conversations: Sequence[dict]):
        self.record_id = record_id
        self.conversations = conversations
        self.tools = chat_tools(tools)
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

    def encode(self, role: str, step: Step, step_number: int) -> str:
        if role == "backbone":
            pairs = self._backbone_messages()
            n = next(j for j, (first, _) in enumerate(pairs) if first == step.index)
            messages = [m for _, m in pairs[: n + 1]]
        else:
            history = self._multi_messages()[: step.index]  # one message per turn
            if role == "caller":
                target = self._call_message(step.index, step.target)
            else:
                target = {"role": "assistant", "content": step.target}
            messages = history + [target]
        record = {
            "id": f"{self.record_id}#{step_number}",
            "role": role,
            "messages": [{"role": "system", "content": CHAT_SYSTEM[role]}] + messages,
            "tools": self.tools,
            "train_turns": [len(messages)],
        }
        return json.dumps(record, ensure_ascii=False)


def encode_role_steps(
    fmt: str,
    role_steps: RoleSteps,
    record_id: str,
    tools: Sequence[dict],
    conversations: Sequence[dict],
    encoders: dict,
) -> list:
    """Encode a role's steps; stale compat inputs stay as ``(head, tail, step)`` triples."""
    if fmt == "chat":
        enc = encoders.setdefault("chat", ChatEncoder(record_id, tools, conversations))
        return [enc.encode(role_steps.role, s, n) for n, s in enumerate(role_steps.steps)]
    enc = encoders.setdefault("alpha_umi", AlphaUmiEncoder(tools, conversations))
    out: list = []
    for step in role_steps.steps:
        if step.input is None:
            out.append((*enc.split(step), step))
        else:
            out.append(enc.encode(step))
    return out
