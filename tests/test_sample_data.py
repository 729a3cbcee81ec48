"""The bundled sample is exactly what the generator writes."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

from conftest import SAMPLE

from process_data.protocol import FINISH, function_name
from process_data.sample_data import main, reference_steps


def test_bundled_sample_is_regenerated_byte_for_byte(tmp_path: Path) -> None:
    main(["--output_dir", str(tmp_path / "sample")])
    ours = sorted(p.relative_to(tmp_path / "sample") for p in (tmp_path / "sample").rglob("*.json"))
    bundled = sorted(p.relative_to(SAMPLE) for p in SAMPLE.rglob("*.json"))
    assert ours == bundled and len(ours) > 20
    for rel in ours:
        assert filecmp.cmp(tmp_path / "sample" / rel, SAMPLE / rel, shallow=False), rel


def test_other_seeds_differ(tmp_path: Path) -> None:
    main(["--output_dir", str(tmp_path / "s1"), "--seed", "1"])
    name = "answer/G1_answer/1_ChatGPT_DFS_woFilter_w2.json"
    assert (tmp_path / "s1" / name).read_bytes() != (SAMPLE / name).read_bytes()


def test_the_queries_name_the_functions_of_their_answers() -> None:
    """Each test-instruction query's APIs are, as ToolBench names them, the functions its DFS
    answer offered."""
    checked = 0
    for file in sorted((SAMPLE / "test_instruction").glob("*_instruction.json")):
        group = file.name.split("_")[0]
        for query in json.loads(file.read_text()):
            answer = (
                SAMPLE
                / "answer"
                / f"{group}_answer"
                / f"{query['query_id']}_ChatGPT_DFS_woFilter_w2.json"
            )
            generation = json.loads(answer.read_text())["answer_generation"]
            names = [function_name(a["api_name"], a["tool_name"]) for a in query["api_list"]]
            assert names + [FINISH] == [f["name"] for f in generation["function"]]
            assert query["query"] == generation["query"]
            checked += 1
    assert checked == 18


def test_reference_steps_are_the_answers_calls_and_facts() -> None:
    """``reference_steps`` gives the calls a query's DFS answer makes, their tool outputs, and
    facts that its final answer states and its query does not (so a benchmark that finds them in
    an agent's answer knows the tools were called and read)."""
    checked = 0
    for file in sorted((SAMPLE / "test_instruction").glob("*_instruction.json")):
        group = file.name.split("_")[0]
        for query in json.loads(file.read_text()):
            qid = query["query_id"]
            answer = SAMPLE / "answer" / f"{group}_answer" / f"{qid}_ChatGPT_DFS_woFilter_w2.json"
            generation = json.loads(answer.read_text())["answer_generation"]
            steps = reference_steps(group, qid, seed=0)
            messages = generation["train_messages"][-1] if generation["valid_data"] else []
            calls = [m["function_call"] for m in messages if m.get("function_call")]
            for step in steps:
                assert step["facts"], step
                assert not any(fact in query["query"] for fact in step["facts"]), step
            try:
                final = json.loads(generation["final_answer"])["final_answer"]
            except (ValueError, KeyError):
                continue  # a give-up, or a broken Finish: no answer to check
            assert [(c["name"], c["arguments"]) for c in calls[-len(steps) - 1 : -1]] == [
                (s["name"], s["args"]) for s in steps
            ]
            assert all(fact in final for s in steps for fact in s["facts"]), final
            checked += 1
    assert checked >= 5
