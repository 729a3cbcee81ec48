"""The chat format says the same as the α-UMi format, loads in datasets and trains in TRL."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE, STB_ANSWERS, read_json, read_jsonl

from GLPFT.models import TINY_LLAMA, resolve_model
from process_data.protocol import ROLES, format_action, parse_decision
from process_data.toolbench.cli import main


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory, shared) -> dict[str, Path]:
    outs = {}
    for fmt in ("alpha_umi", "chat"):
        out = tmp_path_factory.mktemp(fmt)
        for name, where in (
            ("sample", ["--data_dir", str(SAMPLE)]),
            ("stb", ["--answer_dir", str(STB_ANSWERS)]),
        ):
            assert main(["all", *where, "--output_dir", str(out / name), "--format", fmt]) == 3
        outs[fmt] = out
    return outs


@pytest.mark.parametrize("source", ["sample", "stb"])
@pytest.mark.parametrize("role", ROLES)
def test_chat_targets_equal_alpha_umi_targets(both_formats, source: str, role: str) -> None:
    alpha = read_json(both_formats["alpha_umi"] / source / f"train_{role}.json")
    chat = read_jsonl(both_formats["chat"] / source / f"train_{role}.jsonl")
    assert len(alpha) == len(chat) > 0
    for a, c in zip(alpha, chat, strict=True):
        assert c["role"] == role
        messages = c["messages"]
        assert messages[0]["role"] == "system"
        assert c["train_turns"] == [len(messages) - 1]
        last = messages[-1]
        assert last["role"] == "assistant"
        if role == "caller":
            call = last["tool_calls"][0]["function"]
            assert format_action(call["name"], call["arguments"]) == a["target"]
        elif role == "backbone":
            decision = parse_decision(a["target"], "backbone")
            thought, follow = decision.thought, decision.follow_up
            if decision.kind == "caller":
                call = last["tool_calls"][0]["function"]
                assert last["content"] == thought
                assert format_action(call["name"], call["arguments"]) == follow
            else:
                assert last["content"] == a["target"]
        else:
            assert last["content"] == a["target"]
        # the history is the same conversation: every user text and observation is there
        texts = json.dumps(messages, ensure_ascii=False)
        for turn in a["history"]:
            if turn["from"] in ("user", "observation"):
                assert json.dumps(turn["value"], ensure_ascii=False)[1:-1] in texts
        tool_names = [t["function"]["name"] for t in c["tools"]]
        assert tool_names == [t["Name"] for t in a["tools"]]


def test_tool_messages_follow_their_call(both_formats) -> None:
    for line in read_jsonl(both_formats["chat"] / "stb" / "train_summarizer.jsonl"):
        calls = set()
        for m in line["messages"]:
            calls.update(c["id"] for c in m.get("tool_calls", []))
            if m["role"] == "tool":
                assert m["tool_call_id"] in calls


def test_loads_in_datasets_and_trains_in_trl(both_formats, tmp_path: Path) -> None:
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path = both_formats["chat"] / "stb" / "train_planner.jsonl"
    dataset = load_dataset("json", data_files=str(path), split="train")
    rows = read_jsonl(path)
    assert dataset.num_rows == len(rows)
    assert dataset[0]["messages"] == rows[0]["messages"]
    assert dataset[3]["tools"] == rows[3]["tools"]  # tool schemas survive Arrow as they are

    path = resolve_model(TINY_LLAMA)  # SmolLM2's real tokenizer and chat template
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=2,
        report_to=[],
        use_cpu=True,
        max_length=2048,
        save_strategy="no",
        logging_steps=1,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert len(trainer.train_dataset) == len(rows)
    text = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert rows[0]["messages"][-1]["content"] in text
    result = trainer.train()
    assert math.isfinite(result.training_loss)


def test_chat_tools_are_the_answers_functions_as_they_are(both_formats) -> None:
    """The chat format's tool schemas come straight from the answer file's functions (no
    round trip through α-UMi's ``"<type>, <description>"`` strings, which cut descriptions to
    256 characters and lose ``required``, ``enum`` and ``example_value``): each equals its
    function, ``Finish`` left out."""
    lines = read_jsonl(both_formats["chat"] / "stb" / "train_caller.jsonl")
    functions = {}
    for path in sorted(STB_ANSWERS.rglob("*.json")):
        for f in read_json(path)["answer_generation"]["function"]:
            functions.setdefault(f["name"], f)
    kept = required = 0
    for line in lines:
        assert line["tools"], line["id"]
        for tool in line["tools"]:
            f = tool["function"]
            source = functions[f["name"]]
            assert f == {
                "name": source["name"],
                "description": source["description"],
                "parameters": source["parameters"],
            }
            specs = f["parameters"]["properties"].values()
            kept += any(set(spec) - {"type", "description"} for spec in specs)
            required += bool(f["parameters"].get("required"))
    assert kept and required  # what the round trip lost is there
