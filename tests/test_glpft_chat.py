"""GLPFT on the project's own chat-format output: each role trains the text it must write,
whatever the model's chat template does with tool calls and tool results."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE, read_json, read_jsonl, tiny_train_flags

from GLPFT.data import (
    IGNORE_INDEX,
    SampleError,
    ToolSupport,
    build_dataset,
    render_chat,
    tokenize_record,
    tool_support,
)
from GLPFT.models import TINY_LLAMA, resolve_model
from process_data.protocol import (
    ACTION_PREFIX,
    NEXT_CALLER,
    NEXT_CONCLUSION,
    NEXT_GIVE_UP,
    OBSERVATION,
    ROLES,
    format_action,
    parse_action,
)
from process_data.toolbench.cli import main

#: The body of a ChatML message, for the test templates below.
_CHATML_TURN = "<|im_start|>{{ m.role }}\n{{ m.content }}"
_CHATML_END = (
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: Templates that handle the tool turns in different ways.
RENDERS_CALLS = (
    "{% for m in messages %}" + _CHATML_TURN + "{% for c in m.tool_calls or [] %}"
    "<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}" + _CHATML_END
)
FIRST_CALL_ONLY = (
    "{% for m in messages %}" + _CHATML_TURN + "{% if m.tool_calls %}<tool_call>"
    "{{ m.tool_calls[0].function | tojson }}</tool_call>{% endif %}" + _CHATML_END
)
REFUSES_TOOL_ROLE = (
    "{% for m in messages %}{% if m.role == 'tool' %}"
    "{{ raise_exception('Conversation roles must be system, user or assistant') }}{% endif %}"
    + _CHATML_TURN
    + _CHATML_END
)
DROPS_TOOL_ROLE = (
    "{% for m in messages %}{% if m.role != 'tool' %}" + _CHATML_TURN + "<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(TINY_LLAMA))


def with_template(tokenizer, template: str):
    tok = deepcopy(tokenizer)
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def role_sets(tmp_path_factory, shared) -> dict[str, Path]:
    """The bundled sample through the CLI, in both formats (3: some trajectories rejected)."""
    out = {}
    for fmt in ("chat", "alpha_umi"):
        out[fmt] = tmp_path_factory.mktemp(fmt)
        args = ["all", "--data_dir", str(SAMPLE), "--output_dir", str(out[fmt]), "--format", fmt]
        assert main(args) == 3
    return out


def turn_end(tokenizer) -> str:
    """What the chat template writes after an assistant message's text."""
    messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": "THE-END"}]
    return render_chat(tokenizer, messages, None).rpartition("THE-END")[2]


def trained_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode(
        [i for i, x in zip(input_ids, labels, strict=True) if x != IGNORE_INDEX]
    )


@pytest.mark.parametrize("role", ROLES)
def test_every_role_trains_the_text_it_must_write(role_sets, tokenizer, tmp_path, role) -> None:
    """The chat set builds into the GLPFT dataset with SmolLM2's template (which drops tool
    calls), and each sample trains exactly its α-UMi target, then the template's turn end."""
    path = role_sets["chat"] / f"train_{role}.jsonl"
    chat = read_jsonl(path)
    alpha = read_json(role_sets["alpha_umi"] / f"train_{role}.json")
    dataset = build_dataset(str(path), tokenizer, 4096, cache_dir=str(tmp_path / "cache"))
    assert len(dataset) == len(chat) == len(alpha) > 0
    end = turn_end(tokenizer)
    assert tokenizer.eos_token in end
    for row in dataset:
        index = int(row["source"].rpartition("#")[2])
        last = chat[index]["messages"][-1]
        text = trained_text(tokenizer, row["input_ids"], row["labels"])
        assert text.endswith(end), (row["source"], text)
        body = text.removesuffix(end)
        target = alpha[index]["target"]
        if role == "backbone":  # an empty thought leaves no newline before the call
            assert body == (target.removeprefix("\n") if not last["content"] else target)
        else:
            assert body == target
        if role == "planner":
            assert body.endswith((NEXT_CALLER, NEXT_CONCLUSION, NEXT_GIVE_UP))
        if last.get("tool_calls"):  # caller, and backbone call steps
            call = last["tool_calls"][0]["function"]
            assert body.endswith(format_action(call["name"], call["arguments"]))
            assert parse_action(body) == (call["name"], call["arguments"])
        else:
            assert body == last["content"]


def test_smollm2_template_drops_tool_calls_and_keeps_tool_results(tokenizer) -> None:
    assert tool_support(tokenizer) == ToolSupport(calls=False, results=True)
    assert tool_support(with_template(tokenizer, RENDERS_CALLS)) == ToolSupport(True, True)
    assert tool_support(with_template(tokenizer, REFUSES_TOOL_ROLE)).results is False
    assert tool_support(with_template(tokenizer, DROPS_TOOL_ROLE)).results is False


def test_a_template_that_renders_tool_calls_trains_them_as_it_renders_them(
    role_sets, tokenizer
) -> None:
    tok = with_template(tokenizer, RENDERS_CALLS)
    for k, record in enumerate(read_jsonl(role_sets["chat"] / "train_caller.jsonl")[:5]):
        t = tokenize_record(record, tok, 4096, f"caller#{k}")
        call = record["messages"][-1]["tool_calls"][0]["function"]
        expected = f"<tool_call>{json.dumps(call, ensure_ascii=False)}</tool_call>"
        assert trained_text(tok, t.input_ids, t.labels) == expected + turn_end(tok)
        assert ACTION_PREFIX not in tok.decode(t.input_ids)  # no fallback, history included


@pytest.mark.parametrize("template", [REFUSES_TOOL_ROLE, DROPS_TOOL_ROLE])
def test_tool_results_a_template_cannot_write_become_observations(
    role_sets, tokenizer, template: str
) -> None:
    tok = with_template(tokenizer, template)
    records = read_jsonl(role_sets["chat"] / "train_summarizer.jsonl")
    record = next(r for r in records if any(m["role"] == "tool" for m in r["messages"]))
    t = tokenize_record(record, tok, 4096, "summarizer#0")
    text = tok.decode(t.input_ids)
    for m in record["messages"]:
        if m["role"] == "tool":
            assert f"<|im_start|>user\n{OBSERVATION}: {m['content']}<|im_end|>" in text
        if m.get("tool_calls"):  # this template drops the calls too
            call = m["tool_calls"][0]["function"]
            assert format_action(call["name"], call["arguments"]) in text
    assert "<|im_start|>tool" not in text
    trained = trained_text(tok, t.input_ids, t.labels)
    assert trained == record["messages"][-1]["content"] + turn_end(tok)


def test_a_call_the_template_leaves_out_of_its_turn_is_an_error(tokenizer) -> None:
    """The probe's single call renders, so there is no fallback; a turn with two calls loses
    its second one, which must not train silently."""
    tok = with_template(tokenizer, FIRST_CALL_ONLY)
    assert tool_support(tok) == ToolSupport(calls=True, results=True)
    calls = [
        {"id": f"c{k}", "type": "function", "function": {"name": name, "arguments": "{}"}}
        for k, name in enumerate(["first", "second"])
    ]
    record = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "", "tool_calls": calls},
        ],
        "train_turns": [1],
    }
    pattern = rf"f\.jsonl#3: the chat template of {tok.name_or_path} .*'second' of message 1"
    with pytest.raises(SampleError, match=pattern):
        tokenize_record(record, tok, 4096, "f.jsonl#3")


def test_glpft_trains_on_the_chat_backbone_set(role_sets, tokenizer, tmp_path: Path) -> None:
    data = role_sets["chat"] / "train_backbone.jsonl"
    out = tmp_path / "run"
    flags = tiny_train_flags(data, out, max_steps=3, cache_dir=tmp_path / "cache")
    cmd = [sys.executable, "-m", "GLPFT.train", *flags]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "does not render tool calls" in proc.stderr  # the fallback's notice
    summary = read_json(out / "train_summary.json")
    expected = build_dataset(str(data), tokenizer, 512, cache_dir=str(tmp_path / "check"))
    assert summary["samples"] == len(expected) == len(read_jsonl(data))
    assert summary["trained_tokens"] == sum(expected["trained"])
    losses = summary["loss_history"]["loss"]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
