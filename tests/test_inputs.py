"""Real DFS and CoT answers, test-id filtering, and the defects fixed by default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import SAMPLE, STB_ANSWERS, TOOLBENCH_EXAMPLE, read_json, read_jsonl

from process_data.protocol import (
    BACKBONE_CONCLUSION_PREFIX,
    BACKBONE_GIVE_UP,
    USER,
    format_plan,
    parse_decision,
    render_turn,
)
from process_data.toolbench.cli import main
from process_data.toolbench.roles import build_role_steps
from process_data.toolbench.stage1 import convert_tool, read_answer, to_stage1
from process_data.toolbench.stage2 import to_stage2


def run_all(out: Path, *args: str) -> tuple[int, dict]:
    code = main(["all", "--output_dir", str(out), *args])
    return code, read_json(out / "summary.json")


def test_dfs_answers(tmp_path: Path, shared) -> None:
    code, summary = run_all(tmp_path, "--data_dir", str(TOOLBENCH_EXAMPLE))
    assert code == 3  # two answers are invalid
    assert (summary["read"], summary["kept"], summary["rejected"]) == (15, 13, 2)
    rejects = read_jsonl(tmp_path / "rejects.jsonl")
    assert sorted(Path(r["file"]).name for r in rejects) == [
        "69_ChatGPT_DFS_woFilter_w2.json",
        "8_ChatGPT_DFS_woFilter_w2.json",
    ]
    assert all("valid_data: false" in r["reason"] for r in rejects)
    stage1 = read_json(tmp_path / "raw_data" / "raw_data_stage_1.json")
    assert len(stage1) == 13  # not only the first 20: every valid trajectory
    planner = read_json(tmp_path / "train_planner.json")
    assert len(planner) == summary["stages"]["planner"]["samples"] > 13


def test_cot_and_dfs_from_stabletoolbench(tmp_path: Path, shared) -> None:
    code, summary = run_all(tmp_path, "--answer_dir", str(STB_ANSWERS))
    assert summary["read"] == 6 and summary["kept"] == 5
    stage2 = read_json(tmp_path / "raw_data" / "raw_data_stage_2.json")
    queries = {r["instruction"] for r in stage2}
    assert len(queries) == 3  # CoT and DFS answers of the same three queries
    # the CoT answer to 1073 has a thought-only turn before its Finish call
    cot = read_answer(str(STB_ANSWERS / "virtual_chatgpt_cot/G1_instruction/1073_CoT@1.json"))
    chain = cot["answer_generation"]["train_messages"][-1]
    thought = next(
        m["content"] for m in chain if m["role"] == "assistant" and "function_call" not in m
    )
    kept = [r for r in stage2 if any(thought in t["value"] for t in r["conversations"])]
    assert len(kept) == 1
    assert code == 3


def test_thought_only_turn_is_carried_not_dropped(shared) -> None:
    answer = read_answer(str(STB_ANSWERS / "virtual_chatgpt_cot/G1_instruction/1073_CoT@1.json"))
    chain = answer["answer_generation"]["train_messages"][-1]
    thought = next(
        m["content"] for m in chain if m["role"] == "assistant" and "function_call" not in m
    )
    for compat in (True, False):
        conv = to_stage2(to_stage1(answer, compat), compat)["conversations"]
        finish_plan = [t["value"] for t in conv if t["from"] == "assistant"][-1]
        decision = parse_decision(finish_plan)
        text = decision.thought
        assert decision.kind == "conclusion"
        if compat:  # α-UMi drops the thought: the Finish turn has no thought at all
            assert text is None and all(thought not in t["value"] for t in conv)
        else:  # carried into the planner turn that follows it
            assert text == thought


def test_thought_at_the_end_becomes_the_conclusion() -> None:
    record = {
        "tools": [],
        "instruction": "q",
        "chains": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "The answer is 4."},
        ],
    }
    assert to_stage2(record, compat=True)["conversations"] == [{"from": "user", "value": "q"}]
    conv = to_stage2(record, compat=False)["conversations"]
    assert conv[1:] == [
        {"from": "assistant", "value": format_plan(None, "conclusion")},
        {"from": "conclusion", "value": "The answer is 4."},
    ]


def _give_up_first_record() -> dict:
    return {
        "tools": [{"Name": "f_for_t", "function": "d", "input": {}}],
        "instruction": "q",
        "conversations": [
            {"from": "user", "value": "q"},
            {"from": "assistant", "value": format_plan("Cannot.", "give up")},
        ],
    }


def test_first_turn_give_up_uses_its_own_prompt() -> None:
    steps = build_role_steps("backbone", _give_up_first_record(), compat=False)
    assert len(steps.steps) == 1
    step = steps.steps[0]
    assert step.input == step.fresh_input and render_turn(USER, "q") in step.input
    assert step.target == "Cannot." + BACKBONE_CONCLUSION_PREFIX + BACKBONE_GIVE_UP
    compat = build_role_steps("backbone", _give_up_first_record(), compat=True)
    assert compat.steps[0].input is None  # filled from the previous trajectory by the writer


def test_compat_give_up_takes_the_previous_trajectory_prompt(tmp_path: Path) -> None:
    """α-UMi's stale variable crosses trajectories; compat reproduces it, default does not."""
    first = {
        "tools": [],
        "instruction": "q1",
        "conversations": [
            {"from": "user", "value": "q1"},
            {"from": "assistant", "value": format_plan("t", "conclusion")},
            {"from": "conclusion", "value": "a1"},
        ],
    }
    path = tmp_path / "s2.json"
    path.write_text(json.dumps([first, _give_up_first_record()], indent=2))
    for compat in (True, False):
        out = tmp_path / f"b{compat}.json"
        args = ["--compat", "alpha_umi"] if compat else []
        assert (
            main(
                [
                    "role",
                    "--role",
                    "backbone",
                    "--input_path",
                    str(path),
                    "--output_path",
                    str(out),
                    *args,
                ]
            )
            == 0
        )
        samples = read_json(out)
        assert (render_turn(USER, "q1") in samples[1]["input"]) is compat
        assert (render_turn(USER, "q") in samples[1]["input"]) is not compat


def test_test_ids_per_group(tmp_path: Path, shared) -> None:
    """G1 test query 10 excludes G1's answer 10 only; α-UMi's mixed filter drops G2's too."""
    data = tmp_path / "tb"
    for group in ("G1_answer", "G2_answer"):
        (data / "answer" / group).mkdir(parents=True)
        shutil.copy(
            TOOLBENCH_EXAMPLE / "answer" / group / "10_ChatGPT_DFS_woFilter_w2.json",
            data / "answer" / group,
        )
    (data / "test_query_ids").mkdir()
    (data / "test_query_ids" / "G1_instruction.json").write_text('{"10": 0}')
    code, summary = run_all(tmp_path / "ours", "--data_dir", str(data))
    assert code == 0 and summary["kept"] == 1 and summary["excluded"] == 1
    kept = read_json(tmp_path / "ours" / "raw_data" / "raw_data_stage_1.json")
    g2 = read_answer(str(data / "answer/G2_answer/10_ChatGPT_DFS_woFilter_w2.json"))
    assert kept[0]["instruction"] == g2["answer_generation"]["query"]
    code, summary = run_all(tmp_path / "compat", "--data_dir", str(data), "--compat", "alpha_umi")
    assert code == 0 and summary["kept"] == 0 and summary["excluded"] == 2
    excluded = read_jsonl(tmp_path / "compat" / "rejects.jsonl")
    assert {r["kind"] for r in excluded} == {"excluded"}


def test_tool_conversion_truncates_like_alpha_umi() -> None:
    tool = {
        "name": "x" * 70 + "_for_t",
        "description": "d" * 300,
        "parameters": {
            "properties": {
                "a": {"type": "string", "description": "e" * 300},
                "b": {"type": "number"},
            }
        },
    }
    converted = convert_tool(tool)
    assert converted == {
        "Name": tool["name"][-64:],
        "function": "d" * 256,
        "input": {"a": "string, " + "e" * 256, "b": "number"},
    }


def test_bundled_sample_covers_every_shape(tmp_path: Path) -> None:
    code, summary = run_all(tmp_path, "--data_dir", str(SAMPLE))
    assert code == 3
    kinds = {}
    for r in read_jsonl(tmp_path / "rejects.jsonl"):
        kinds.setdefault(r["kind"], []).append(r["reason"])
    assert len(kinds["excluded"]) == 2 and len(kinds["rejected"]) == 1
    assert any("hallucinated" in r for r in kinds["skipped"])
    assert any("no final answer" in r for r in kinds["skipped"])
    backbone = read_json(tmp_path / "train_backbone.json")
    assert any(
        s["target"].endswith(BACKBONE_CONCLUSION_PREFIX + BACKBONE_GIVE_UP) for s in backbone
    )
    stage2 = read_json(tmp_path / "raw_data" / "raw_data_stage_2.json")
    users = [t for r in stage2 for t in r["conversations"][1:] if t["from"] == "user"]
    assert users, "a DFS diversity prompt appears as a later user turn"


def test_reader_accepts_what_json_accepts(tmp_path: Path) -> None:
    """The fast reader falls back to json's rules: NaN, huge integers, lone surrogates."""
    path = tmp_path / "a.json"
    path.write_text('{"tree": {"x": NaN, "y": 100000000000000000000000, "z": "\\ud800"}, "k": 1}')
    assert read_answer(str(path)) == json.loads(path.read_text(), parse_constant=None) | {}
    data = read_answer(str(path))
    assert data["tree"]["y"] == 10**23 and data["tree"]["z"] == "\ud800"
