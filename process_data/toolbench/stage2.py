"""Stage 2: a stage-1 chain of OpenAI messages → a multi-agent conversation.

Each assistant message with a function call becomes a planner turn (``... Next: caller.``)
followed by a caller turn (``Action: ...``), or, for ``Finish``, a planner turn followed by a
conclusion, or a give-up. Function results become observations. The rules, including how
α-UMi recovers a final answer from arguments that are not JSON, follow its
``prepro_raw_stage_2.py``.

Where α-UMi's behaviour is a defect, the default mode differs and ``compat=True`` keeps it:

* an assistant message with no function call (a thought-only turn) is dropped by α-UMi; by
  default its text is carried into the next planner turn, or, at the end of a chain, becomes
  the conclusion;
* a function response that is not a string is kept as-is by α-UMi (and its role scripts then
  crash on it); by default it is serialised as JSON.
"""

from __future__ import annotations

import json

from process_data.protocol import (
    ASSISTANT,
    CALLER,
    CONCLUSION,
    FINISH,
    GIVE_UP_AND_RESTART,
    OBSERVATION,
    PLACEHOLDER,
    USER,
    format_action,
    format_plan,
)
from process_data.toolbench.records import RecordError, require, require_str

_FINAL_ANSWER_KEY = '"final_answer": '
_RESPONSE_KEY = '"response":'


def _finish_outcome(arguments: object, content: str | None) -> str | None:
    """The final answer of a ``Finish`` call, or ``None`` for a give-up.

    α-UMi parses the arguments as JSON; if that fails it looks for the give-up return type
    in the raw text, then for ``"final_answer": `` and takes the rest of the text.
    """
    try:
        parsed = arguments if isinstance(arguments, dict) else json.loads(arguments)
        if parsed["return_type"] == GIVE_UP_AND_RESTART:
            return None
        return parsed["final_answer"] if "final_answer" in parsed else PLACEHOLDER
    except Exception:  # α-UMi's bare except: any failure falls back to text matching
        text = require_str(arguments, "Finish arguments")
        if GIVE_UP_AND_RESTART in text:
            return None
        start = text.find(_FINAL_ANSWER_KEY)
        if start != -1:
            return text[start + len(_FINAL_ANSWER_KEY) :].strip().strip("}").strip('"')
        return content if content is not None else PLACEHOLDER


def _observation(content: object, compat: bool) -> object:
    """The ``response`` field of a function message, recovered as α-UMi does.

    When the content is not JSON, α-UMi takes the text after ``"response":``. When it is JSON
    without a ``response`` field, α-UMi crashes unless it decoded to a string (then that string
    is searched); by default such content is kept whole.
    """
    text = content
    try:
        parsed = json.loads(content)  # type: ignore[arg-type]
    except Exception:
        parsed = _UNPARSED
    try:
        response = parsed["response"]  # type: ignore[index]
    except Exception:
        if isinstance(parsed, str):
            text = parsed
        elif parsed is not _UNPARSED:
            if compat:
                raise RecordError("function result is JSON without a response field") from None
            return content
        text = require_str(text, "function message content")
        start = text.find(_RESPONSE_KEY)
        response = text[start + len(_RESPONSE_KEY) :] if start != -1 else ""
    if not compat and not isinstance(response, str):
        response = json.dumps(response, ensure_ascii=False)
    return response


_UNPARSED = object()


def to_stage2(record: dict, compat: bool) -> dict:
    """Convert one stage-1 record. Raises :class:`RecordError` when it is malformed."""
    require(isinstance(record, dict), "record is not an object")
    instruction = require_str(record.get("instruction"), "instruction")
    chains = record.get("chains")
    require(isinstance(chains, list), "chains is not a list")
    tools = record.get("tools")
    require(isinstance(tools, list), "tools is not a list")

    conversations: list[dict] = [{"from": USER, "value": instruction}]
    carried: str | None = None  # a thought-only assistant turn waiting for its decision
    for index, message in enumerate(chains[2:], start=2):
        require(isinstance(message, dict), f"message {index} is not an object")
        role = message.get("role")
        if role == "assistant":
            content = message.get("content")
            if content is not None:
                require_str(content, f"content of message {index}")
            call = message.get("function_call")
            if call is None and "function_call" not in message:
                if not compat and content:
                    carried = content if carried is None else carried + "\n" + content
                continue
            require(isinstance(call, dict), f"function_call of message {index} is not an object")
            if carried is not None:
                content = carried if content is None else carried + "\n" + content
                carried = None
            name = require_str(call.get("name"), f"function name in message {index}")
            require("arguments" in call, f"function_call of message {index} has no arguments")
            arguments = call["arguments"]
            if name == FINISH:
                answer = _finish_outcome(arguments, content)
                decision = "give up" if answer is None else "conclusion"
                conversations.append({"from": ASSISTANT, "value": format_plan(content, decision)})
                if answer is not None:
                    conversations.append({"from": CONCLUSION, "value": answer})
            else:
                if not isinstance(arguments, str):
                    if compat:
                        raise RecordError(f"arguments of message {index} are not a string")
                    arguments = json.dumps(arguments, ensure_ascii=False)
                conversations.append({"from": ASSISTANT, "value": format_plan(content, "caller")})
                conversations.append({"from": CALLER, "value": format_action(name, arguments)})
        elif role == "user":
            conversations.append({"from": USER, "value": message.get("content")})
        elif role == "function":
            conversations.append(
                {"from": OBSERVATION, "value": _observation(message.get("content"), compat)}
            )
    if carried is not None:  # a chain that ends on a thought: that thought is the answer
        conversations.append({"from": ASSISTANT, "value": format_plan(None, "conclusion")})
        conversations.append({"from": CONCLUSION, "value": carried})
    return {"tools": tools, "instruction": instruction, "conversations": conversations}
