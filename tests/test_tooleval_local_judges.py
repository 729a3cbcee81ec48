"""ToolEval end to end with real local judges: the four commands on ToolBench's reference
answers with the llama.cpp server (the default GGUF) as the judge, and a local HF model as the
judge. A 135M model is a poor judge: these tests check that every path runs and that what it
writes adds up, not the verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import SHARED, read_json

from inference_utils.tooleval.convert import main as convert_main
from inference_utils.tooleval.judge import DEFAULT_RUBRIC
from inference_utils.tooleval.pass_rate import main as pass_rate_main
from inference_utils.tooleval.report import main as report_main
from inference_utils.tooleval.win_rate import main as win_rate_main

EVALSET = SHARED / "toolbench" / "tooleval_default_evalset" / "G1_instruction.json"
IDS = ["42700", "7620"]


def short_prompts(tmp_path: Path, max_tokens: int) -> Path:
    """Our judge prompts with short answers (a CPU judge at ~20 tokens/s)."""
    data = yaml.safe_load(DEFAULT_RUBRIC.read_text())
    data["settings"]["max_tokens"] = max_tokens
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def setup(tmp_path: Path) -> dict[str, Path]:
    """The reference set's first two G1-inst answers, and a candidate that gave up on both."""
    reference = read_json(EVALSET)
    ref = {q: reference[q] for q in IDS}
    gave_up = {q: json.loads(json.dumps(a)) for q, a in ref.items()}
    for answer in gave_up.values():
        answer["answer"]["final_answer"] = ""
    paths = {k: tmp_path / k for k in ("ref", "cand", "ids")}
    for name, content in (("ref", ref), ("cand", gave_up), ("ids", dict.fromkeys(IDS, 0))):
        paths[name].mkdir()
        (paths[name] / "G1_instruction.json").write_text(json.dumps(content))
    return paths


def test_the_four_commands_with_llama_cpp(tmp_path: Path, llama_server: str, shared) -> None:
    answers = (
        SHARED
        / "stabletoolbench"
        / "data_example"
        / "answer"
        / "virtual_chatgpt_cot"
        / "G1_instruction"
    )
    assert (
        convert_main(
            [
                "--answer_dir",
                str(answers),
                "--method",
                "CoT@1",
                "--output",
                str(tmp_path / "c.json"),
            ]
        )
        == 0
    )
    paths = setup(tmp_path)
    judge = [
        "--api_base",
        llama_server,
        "--judge_prompts",
        str(short_prompts(tmp_path, 48)),
        "--max_eval_threads",
        "2",
    ]
    for side in ("ref", "cand"):
        argv = ["--converted_answer_path", str(paths[side]), "--test_ids", str(paths["ids"])]
        argv += [
            "--save_path",
            str(tmp_path / "pass" / side),
            "--evaluate_times",
            "2",
            "--mode",
            "stable",
        ]
        assert pass_rate_main([*argv, *judge]) == 0
        summary = read_json(tmp_path / "pass" / side / f"G1_instruction_{side}.summary.json")
        assert summary["answered"] == 2 and len(summary["rounds"]) == 2
    assert (
        read_json(tmp_path / "pass" / "cand" / "G1_instruction_cand.summary.json")["pass_rate"]
        == 0.0
    )
    argv = [
        "--ref_converted_answer_path",
        str(paths["ref"]),
        "--output_converted_answer_path",
        str(paths["cand"]),
    ]
    argv += [
        "--ref_pass",
        str(tmp_path / "pass" / "ref"),
        "--output_pass",
        str(tmp_path / "pass" / "cand"),
    ]
    argv += ["--test_ids", str(paths["ids"]), "--save_path", str(tmp_path / "win")]
    assert win_rate_main([*argv, *judge]) == 0
    win = read_json(tmp_path / "win" / "G1_instruction_ref_cand.summary.json")
    assert win["wins"] + win["losses"] + win["ties"] == 2
    assert (
        report_main(
            [str(tmp_path / "pass"), str(tmp_path / "win"), "--output", str(tmp_path / "report")]
        )
        == 0
    )
    assert (tmp_path / "report" / "report.png").stat().st_size > 10_000


def test_a_local_hf_judge(tmp_path: Path, shared) -> None:
    paths = setup(tmp_path)
    argv = ["--converted_answer_path", str(paths["ref"]), "--test_ids", str(paths["ids"])]
    argv += ["--save_path", str(tmp_path / "pass"), "--evaluate_times", "1", "--mode", "stable"]
    argv += [
        "--evaluator",
        "local:smollm2-135m",
        "--judge_prompts",
        str(short_prompts(tmp_path, 32)),
    ]
    assert pass_rate_main(argv) == 0
    records = read_json(tmp_path / "pass" / "G1_instruction_ref.json")
    assert set(records) == set(IDS)
    assert all(set(r["is_solved"]) == {"0"} for r in records.values())
