"""ToolEval's answer conversion: equal to StableToolBench's shipped output, and ToolBench's
rules (merged DFS actions, the random walk, the generator across files) on worked examples."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLE, read_json

from inference_utils.tooleval.convert import convert_answer, convert_dir, main

STB = Path(__file__).resolve().parents[2] / "shared" / "data" / "stabletoolbench" / "data_example"
METHODS = {"virtual_chatgpt_cot": "CoT@1", "virtual_chatgpt_dfs": "DFS_woFilter_w2"}


@pytest.mark.parametrize("folder", sorted(METHODS))
def test_equal_to_stabletoolbench(folder: str, tmp_path: Path, shared) -> None:
    shipped = STB / "model_predictions_converted" / folder / "G1_instruction.json"
    out = tmp_path / "converted.json"
    answers = STB / "answer" / folder / "G1_instruction"
    assert (
        main(["--answer_dir", str(answers), "--method", METHODS[folder], "--output", str(out)]) == 0
    )
    ours, theirs = read_json(out), read_json(shipped)
    assert ours == theirs
    # written as ToolBench writes it: the same bytes in the shipped key order
    assert json.dumps({k: ours[k] for k in theirs}) == shipped.read_text()


def _node(kind: str, description: str, *children: dict, observation: str = "") -> dict:
    node = {"node_type": kind, "description": description, "children": list(children)}
    return node | ({"observation": observation} if kind == "Action Input" else {})


def _invalid(tree_children: list[dict] | None = None, trys: list | None = None) -> dict:
    answer = {
        "answer_generation": {"valid_data": False, "query": "q", "function": [], "final_answer": ""}
    }
    if trys is not None:
        return answer | {"trys": trys}
    return answer | {
        "tree": {"tree": {"node_type": "Action Input", "children": tree_children or []}}
    }


def test_an_invalid_dfs_tree_merges_actions_and_walks_at_random() -> None:
    """Action A has Thought X before its Action Input I (whose children are Thought T and
    Action B); merged, A's steps are X, then T and B (its own first, then the input's)."""
    b = _node("Action", "b_for_t", _node("Action Input", '{"y": 2}', observation="rb"))
    a = _node(
        "Action",
        "a_for_t",
        _node("Thought", "X"),
        _node("Action Input", '{"x": 1}', _node("Thought", "T"), b, observation="ra"),
    )
    root = [_node("Thought", "start", a)]
    expected_choices = [["user"], ["start"], ["a_for_t"], ["X", "T", "b_for_t"]]
    for seed in range(12):
        converted = convert_answer(_invalid(root), "DFS_woFilter_w2", random.Random(seed))
        check = random.Random(seed)
        picked = [check.choice(options) for options in expected_choices]
        details = converted["answer"]["answer_details"][0]
        names = []
        while details["next"]:
            details = details["next"][0]
            m = details["message"]
            names.append(
                m if isinstance(m, str) else m["name"] if "name" in m else m["description"]
            )
        assert names[: len(picked)] == ["", *picked[1:]]
        assert converted["answer"]["total_steps"] == 5  # system, user, start, a, the leaf
        if picked[-1] == "b_for_t":
            assert details["message"] == {
                "name": "b_for_t",
                "arguments": '{"y": 2}',
                "response": "rb",
            }
        else:
            assert details["role"] == "assistant"


def test_one_generator_across_files(tmp_path: Path, shared) -> None:
    """Each walk step draws once, also with one way on, so an invalid CoT answer's try
    depends on the walks of the files before it (by name)."""
    valid = read_json(STB / "answer" / "virtual_chatgpt_cot" / "G1_instruction" / "1073_CoT@1.json")
    one = read_json(STB / "answer" / "virtual_chatgpt_cot" / "G1_instruction" / "588_CoT@1.json")
    tries = [one["trys"][0] | {"tag": k} for k in range(5)]
    for k, t in enumerate(tries):
        t["chain"] = [{"node_type": "Thought", "description": f"try {k}"}]
    folder = tmp_path / "answers"
    folder.mkdir()
    (folder / "1_CoT@1.json").write_text(json.dumps(valid))
    (folder / "2_CoT@1.json").write_text(json.dumps(_invalid(trys=tries)))
    converted = convert_dir(folder, "CoT@1")
    rng = random.Random(42)
    for _ in range(converted["1"]["answer"]["total_steps"] - 1):  # the first file's walk
        rng.choice([None])
    chosen = rng.choice(range(5))
    thought = converted["2"]["answer"]["answer_details"][0]["next"][0]["next"][0]["message"]
    assert thought == f"try {chosen}"


def test_the_sample_converts(tmp_path: Path) -> None:
    for group in ("G1", "G2", "G3"):
        for method in ("DFS_woFilter_w2", "CoT@1"):
            converted = convert_dir(SAMPLE / "answer" / f"{group}_answer", method)
            assert converted and all(
                c["answer"]["answer_details"][0]["role"] == "system" for c in converted.values()
            )


def test_bad_answer_files_are_named(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "answers"
    shutil.copytree(STB / "answer" / "virtual_chatgpt_cot" / "G1_instruction", folder)
    (folder / "9_CoT@1.json").write_text('{"answer_generation": {"valid_data": true}}')
    assert (
        main(
            ["--answer_dir", str(folder), "--method", "CoT@1", "--output", str(tmp_path / "o.json")]
        )
        == 1
    )
    assert "9_CoT@1.json: KeyError" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()
    assert (
        main(
            ["--answer_dir", str(folder), "--method", "DFS_x", "--output", str(tmp_path / "o.json")]
        )
        == 1
    )
    assert "no DFS_x answer files" in capsys.readouterr().err


def _generation(*messages: dict) -> dict:
    head = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    return {"train_messages": [[*head, *messages]]}


def _kinds(root) -> list:
    out, step = [], root
    while step.next:
        step = step.next[0]
        out.append((step.role, step.message))
    return out[1:]  # after the user step


def test_converter_edge_cases_read_as_stabletoolbench_reads_them() -> None:
    """StableToolBench's ``process_valid_data`` takes ``tool_calls`` when ``'tool_calls' in
    message and message['tool_calls'] is not None``: an empty list loops over no call and adds
    no step (the message's text is dropped), ``None`` is read as text. A ``function_call`` key
    is read as a call whatever its value (``'function_call' in message``), so one that names
    no function fails there; here it stops with the message named."""
    from inference_utils.tooleval.convert import ConvertError, valid_steps

    call = {"name": "f", "arguments": "{}"}
    steps = _kinds(
        valid_steps(
            _generation(
                {"role": "assistant", "content": "thinking", "function_call": call},
                {"role": "function", "content": "r1"},
                {"role": "assistant", "content": "no calls", "tool_calls": []},
                {"role": "assistant", "content": "plain", "tool_calls": None},
            )
        )
    )
    assert steps == [
        ("tool", {"name": "f", "arguments": "{}", "response": "r1"}),
        ("assistant", "plain"),
    ]
    for empty in ({}, None, {"arguments": "{}"}):
        bad = _generation({"role": "assistant", "content": "x", "function_call": empty})
        with pytest.raises(ConvertError, match="message 2: function_call .* names no function"):
            valid_steps(bad)
