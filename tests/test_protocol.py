"""The protocol's formatters and parsers are inverses, and the templates are α-UMi's.

This is the one test file that spells the markers out: it pins them byte for byte. All other
code and tests import them from ``process_data.protocol``.
"""

from __future__ import annotations

import json
import random
import string

import pytest
from conftest import ALPHA_UMI, read_json

from process_data.protocol import (
    NEXT_MARKERS,
    PROMPT_TEMPLATES,
    Decision,
    StepReading,
    build_prompt,
    fill_tools,
    format_action,
    format_backbone,
    format_plan,
    format_prediction,
    parse_action,
    parse_actions,
    parse_decision,
    prompt_suffix,
    read_step,
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
    for kind in NEXT_MARKERS:
        turn = format_plan(thought, kind)
        assert parse_decision(turn) == Decision(kind, thought, turn)


def test_plan_examples() -> None:
    assert format_plan("I will call it.", "caller") == "I will call it.\n Next: caller."
    assert format_plan(None, "give up") == " Next: give up."
    assert format_plan("", "conclusion") == "\n Next: conclusion."
    assert parse_decision("\n Next: conclusion.").thought == ""


@pytest.mark.parametrize(
    ("output", "kind", "thought", "turn"),
    [
        # the period is optional, and the turn gets it back
        ("Look it up. Next: caller", "caller", "Look it up.", "Look it up. Next: caller."),
        ("Done.\n Next: conclusion", "conclusion", "Done.", "Done.\n Next: conclusion."),
        # what follows the marker is not part of the turn
        ("done\n Next: conclusion.</s>junk", "conclusion", "done", "done\n Next: conclusion."),
        # give up beats conclusion beats caller, wherever they are
        ("a Next: caller. b Next: give up", "give up", "a Next: caller. b", None),
        ("a Next: conclusion. b Next: caller.", "conclusion", "a", "a Next: conclusion."),
        # the first occurrence of the winning marker ends the turn
        ("a Next: caller. b Next: caller.", "caller", "a", "a Next: caller."),
    ],
)
def test_decision_rules(output: str, kind: str, thought: str, turn: str | None) -> None:
    decision = parse_decision(output)
    assert (decision.kind, decision.thought, decision.explicit) == (kind, thought, True)
    assert turn is None or decision.turn == turn


def test_no_marker_is_a_call_by_default() -> None:
    decision = parse_decision("  I should look this up  ")
    assert decision == Decision(
        "caller", "I should look this up", format_plan("I should look this up", "caller"), False
    )
    assert parse_decision("").thought is None


def _random_planner_output(rng: random.Random) -> str:
    pieces = [rand_text(rng, 0, 12)]
    for _ in range(rng.randint(0, 3)):
        marker = rng.choice(list(NEXT_MARKERS.values()))
        pieces += [marker if rng.random() < 0.5 else marker[:-1], rand_text(rng, 0, 12)]
    return "".join(pieces).replace("</s>", "")


@pytest.mark.parametrize("seed", range(100))
def test_router_and_metrics_read_the_same_decision(seed: int) -> None:
    """What the pipeline routes a planner output to is what the metrics score it as, as long
    as the caller's or summarizer's text holds no marker of its own."""
    from inference_utils.static.infer import step_search

    rng = random.Random(seed)
    for _ in range(20):
        output = _random_planner_output(rng)
        sample = {"dispath": "", "tools": [], "model_input": "p"}
        search = step_search(sample, {}, chat=False, backbone=False)
        assert next(search).role == "planner"
        try:
            role = search.send(output).role
        except StopIteration:
            role = None
        else:
            with pytest.raises(StopIteration):
                search.send("Action: f\nAction Input: {}")
        kind = parse_decision(output).kind
        assert role == {"caller": "caller", "conclusion": "summarizer", "give up": None}[kind]
        prediction = sample["predictions"]
        assert (
            read_step(prediction).plan
            == {
                "caller": "call",
                "conclusion": "finish",
                "give up": "give up",
            }[kind]
        )


def test_predictions_are_read_as_alpha_umi_reads_them() -> None:
    call = format_prediction(
        format_plan("t", "caller"), "caller", 'Action: f\nAction Input: {"a": 1}'
    )
    assert call == 'assistant: t\n Next: caller.</s>caller: Action: f\nAction Input: {"a": 1}'
    assert read_step(call) == StepReading("call", "f", '{"a": 1}')
    answer = format_prediction(format_plan("t", "conclusion"), "conclusion", "It is 4.")
    assert answer == "assistant: t\n Next: conclusion.</s>conclusion: It is 4."
    assert read_step(answer) == StepReading("finish", answer="It is 4.")
    assert format_prediction(" Next: give up.", "give up") == " Next: give up."
    assert read_step(" Next: give up.") == StepReading("give up")
    # α-UMi's reading where the router's differs: a marker in the caller's text counts
    odd = format_prediction(format_plan("t", "caller"), "caller", "Next: conclusion")
    assert parse_decision(format_plan("t", "caller")).kind == "caller"
    assert read_step(odd).plan == "finish"
    # with no separator the whole text is the call; no call at all is 'none' with '{}'
    assert read_step('Action: f\nAction Input: {"a": 1}').action == "f"
    assert read_step("thinking") == StepReading("call", "none", "{}")


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
def test_actions_roundtrip(seed: int) -> None:
    """Caller turns joined by newlines read back as their pairs, in order; one alone reads as
    parse_action reads it."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(rng.randint(1, 4)):
        name = "".join(rng.choice(string.ascii_lowercase + "_") for _ in range(rng.randint(1, 20)))
        arguments = rand_text(rng)
        while "\nAction:" in arguments:
            arguments = rand_text(rng)
        pairs.append((name, arguments))
    text = "\n".join(format_action(name, arguments) for name, arguments in pairs)
    assert parse_actions(text) == pairs
    if len(pairs) == 1:
        assert parse_action(text) == pairs[0]


@pytest.mark.parametrize(
    "text",
    [
        'Action: f\nAction Input: {"a": 1}',
        'Sure.\nAction: get_x\nAction Input: {"a": 1}  \n',
        "\nAction: f\nAction Input: {} ",
        "I call Action:f\n  Action Input:{}",
        'Action: f\nAction Input: {\n  "a": "Action Input: x"\n}',
        "Action: f",
        "Action Input: {}",
        "no call",
        "",
    ],
)
def test_parse_actions_of_one_action_is_parse_action(text: str) -> None:
    one = parse_action(text)
    assert parse_actions(text) == ([] if one is None else [one])


def test_parse_actions_cuts_at_each_action_line() -> None:
    text = (
        'Two lookups.\nAction: a\nAction Input: {\n  "x": 1\n}\n'
        'Action: b\nAction Input: {"y": "$1"}'
    )
    assert parse_actions(text) == [("a", '{\n  "x": 1\n}'), ("b", '{"y": "$1"}')]
    # parse_action reads the first call only, with the rest of the text as its arguments
    assert parse_action(text) == ("a", text.split("Action Input: ", 1)[1].strip())
    # an Action: line without its input joins the next piece, as parse_action would read it
    text = "Action: a\nAction Input: {}\nAction: oops\nAction: b\nAction Input: {}\nAction: c"
    assert parse_actions(text) == [("a", "{}"), ("b", "{}")]
    # "Action:" inside a line starts no action
    assert parse_actions("Action: a\nAction Input: say Action: b") == [("a", "say Action: b")]


def test_history_format() -> None:
    turns = [
        ("user", "hi"),
        ("assistant", "t\n Next: caller."),
        ("caller", "Action: f\nAction Input: {}"),
        ("observation", '{"x": 1}'),
        ("assistant", "ok"),
    ]
    assert "".join(render_turn(*t) for t in turns) == (
        "user: hi</s>assistant: t\n Next: caller.</s>caller: Action: f\nAction Input: {}</s>"
        'observation: {"x": 1}assistant: ok</s>'
    )


@pytest.mark.parametrize("seed", range(100))
def test_backbone_roundtrip(seed: int) -> None:
    rng = random.Random(seed)
    thought = clean_thought(rng)
    call = format_action("f_for_t", rand_text(rng))
    answer = rand_text(rng, 1)
    for decision, follow in (("caller", call), ("conclusion", answer), ("give up", None)):
        text = format_backbone(format_plan(thought, decision), decision, follow)
        assert parse_decision(text, "backbone") == Decision(decision, thought, text, True, follow)


def test_tool_docs_roundtrip(shared) -> None:
    record = read_json(ALPHA_UMI / "train-example" / "raw_data" / "raw_data_stage_2.json")[0]
    doc, names = render_tool_docs(record["tools"])
    assert [json.loads(line) for line in doc.splitlines()] == record["tools"]
    assert names.split(", ") == [t["Name"] for t in record["tools"]]


@pytest.mark.parametrize("role", ["backbone", "planner", "caller", "summarizer"])
def test_build_prompt_matches_alpha_umi(role: str, shared) -> None:
    """The first sample of each α-UMi file is rebuilt from its tools and history alone."""
    sample = read_json(ALPHA_UMI / "train-example" / f"train_{role}.json")[0]
    history = sample["history"]
    if role == "backbone":  # its history merges planner and caller turns; none before step 1
        assert {t["from"] for t in history} <= {"user", "observation"}
    thought = history[-1]["value"] if role == "caller" else None
    rendered = "".join(render_turn(t["from"], t["value"]) for t in history)
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
