"""The protocol's formatters and parsers are inverses, and the templates are α-UMi's."""

from __future__ import annotations

import json
import random
import string

import pytest
from conftest import ALPHA_UMI, read_json

from process_data.protocol import (
    NEXT_MARKERS,
    PROMPT_TEMPLATES,
    Turn,
    build_prompt,
    fill_tools,
    format_action,
    format_backbone,
    format_plan,
    parse_action,
    parse_backbone,
    parse_history,
    parse_plan,
    parse_tool_docs,
    prompt_suffix,
    render_history,
    render_tool_docs,
    render_turn,
)
from process_data.toolbench.roles import RolePrompt

RNG = random.Random(1234)
ALPHABET = string.ascii_letters + string.digits + " .,:;{}[]\"'\n\t!?-_/ü€"


def rand_text(rng: random.Random, lo: int = 0, hi: int = 40) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(lo, hi)))


def clean_thought(rng: random.Random) -> str:
    """Thoughts as ToolBench writes them: no markers, no leading/trailing whitespace."""
    while True:
        text = rand_text(rng, 1).strip()
        if text and not any(m[:-1] in text for m in NEXT_MARKERS.values()):
            if "\nAction: " not in "\n" + text and "\nconclusion: " not in "\n" + text:
                return text


@pytest.mark.parametrize("seed", range(200))
def test_plan_roundtrip(seed: int) -> None:
    rng = random.Random(seed)
    thought = None if seed % 5 == 0 else clean_thought(rng)
    for decision in NEXT_MARKERS:
        assert parse_plan(format_plan(thought, decision)) == (thought, decision)


def test_plan_examples() -> None:
    assert format_plan("I will call it.", "caller") == "I will call it.\n Next: caller."
    assert format_plan(None, "give up") == " Next: give up."
    assert format_plan("", "conclusion") == "\n Next: conclusion."
    assert parse_plan("\n Next: conclusion.") == ("", "conclusion")
    # lenient on model outputs: missing period, trailing text
    assert parse_plan("Look it up. Next: caller") == ("Look it up.", "caller")
    assert parse_plan("done\n Next: conclusion.</s>junk") == ("done", "conclusion")
    assert parse_plan("no marker here") == ("no marker here", None)


@pytest.mark.parametrize("seed", range(200))
def test_action_roundtrip(seed: int) -> None:
    rng = random.Random(seed)
    name = "".join(rng.choice(string.ascii_lowercase + "_") for _ in range(rng.randint(1, 64)))
    arguments = rand_text(rng)
    assert parse_action(format_action(name, arguments)) == (name, arguments)


def test_action_lenient() -> None:
    assert parse_action('Sure.\nAction: get_x\nAction Input: {"a": 1}') == ("get_x", '{"a": 1}')
    assert parse_action("no call") is None


@pytest.mark.parametrize("seed", range(100))
def test_history_roundtrip(seed: int) -> None:
    rng = random.Random(seed)
    speakers = ["user", "assistant", "caller", "observation", "conclusion"]
    turns = []
    for _ in range(rng.randint(0, 12)):
        text = rand_text(rng).replace("</s>", "")
        if any(f"{s}: " in text for s in speakers):
            text = text.replace(": ", ":")
        turns.append(Turn(rng.choice(speakers), text))
    assert parse_history(render_history(turns)) == turns


def test_history_format() -> None:
    turns = [
        Turn("user", "hi"),
        Turn("assistant", "t\n Next: caller."),
        Turn("caller", "Action: f\nAction Input: {}"),
        Turn("observation", '{"x": 1}'),
        Turn("assistant", "ok"),
    ]
    assert render_history(turns) == (
        "user: hi</s>assistant: t\n Next: caller.</s>caller: Action: f\nAction Input: {}</s>"
        'observation: {"x": 1}assistant: ok</s>'
    )
    assert render_turn("observation", "x") == "observation: x"
    with pytest.raises(ValueError):
        parse_history("user: unterminated")


@pytest.mark.parametrize("seed", range(100))
def test_backbone_roundtrip(seed: int) -> None:
    rng = random.Random(seed)
    thought = clean_thought(rng)
    call = format_action("f_for_t", rand_text(rng))
    answer = rand_text(rng, 1)
    for decision, follow in (("caller", call), ("conclusion", answer), ("give up", None)):
        text = format_backbone(format_plan(thought, decision), decision, follow)
        assert parse_backbone(text) == (thought, decision, follow)


def test_tool_docs_roundtrip(shared) -> None:
    record = read_json(ALPHA_UMI / "train-example" / "raw_data" / "raw_data_stage_2.json")[0]
    doc, names = render_tool_docs(record["tools"])
    assert parse_tool_docs(doc) == record["tools"]
    assert names.split(", ") == [t["Name"] for t in record["tools"]]


@pytest.mark.parametrize("role", ["backbone", "planner", "caller", "summarizer"])
def test_build_prompt_matches_alpha_umi(role: str, shared) -> None:
    """The first sample of each α-UMi file is rebuilt from its tools and history alone."""
    sample = read_json(ALPHA_UMI / "train-example" / f"train_{role}.json")[0]
    history = sample["history"]
    if role == "backbone":  # its history merges planner and caller turns; none before step 1
        assert {t["from"] for t in history} <= {"user", "observation"}
    thought = history[-1]["value"] if role == "caller" else None
    rendered = render_history(Turn(t["from"], t["value"]) for t in history)
    assert build_prompt(role, sample["tools"], rendered, thought) == sample["input"]


def test_templates_have_their_placeholders() -> None:
    for name, template in PROMPT_TEMPLATES.items():
        assert "{history}" in template
        assert ("{thought}" in template) == name.endswith("caller")
        assert ("{doc}" in template) == (not name.endswith("summarizer"))


FRAGMENTS = ["{thought}", "{history}", "{tho", "ught}", "{", "}", "thought", "a", "é", "\n", '"']


def _fragmented(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, n)))


@pytest.mark.parametrize("seed", range(300))
def test_role_prompt_encoding_equals_json_dumps(seed: int) -> None:
    """The piecewise encoding equals encoding the literally filled prompt, placeholders in the
    tools or the history included."""
    rng = random.Random(seed)
    role = rng.choice(["backbone", "planner", "caller", "summarizer"])
    tools = [{"Name": _fragmented(rng, 3), "function": _fragmented(rng, 4), "input": {}}]
    prompt = RolePrompt(
        fill_tools(PROMPT_TEMPLATES[f"toolbench_{role}"], tools), prompt_suffix(role)
    )
    history = ""
    for _ in range(6):  # a growing history, as the role builders make it
        history += _fragmented(rng, 6)
        thought = _fragmented(rng, 4) if role == "caller" else None
        assert prompt.encoded(history, thought) == json.dumps(prompt.text(history, thought))
