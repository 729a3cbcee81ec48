"""Win rate against a scripted judge: ToolEval's preference procedure, the shortcut (which
StableToolBench's never takes), the answer order alternating between rounds (which the
references never do), ties, a missing answer, and resume with 0 judge calls."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from conftest import SHARED, read_json
from openai_gateway import ScriptedJudge
from test_tooleval_pass_rate import converted

from inference_utils.tooleval.win_rate import main as win_rate_main

S, U = {"answer_status": "Solved"}, {"answer_status": "Unsolved"}
SCRIPT = {
    ("check_answer_status", "q1-ref"): [S],
    ("check_answer_status", "q1-out"): [U],
    ("check_answer_status", "q2-ref"): [S],
    ("check_answer_status", "q2-out"): [S],
    ("select_better_answer", "q2"): [{"index": 0}],  # a judge that always picks the first shown
    ("check_answer_status", "q4-ref"): [U],
    ("check_answer_status", "q4-out"): [U],
    ("select_better_answer", "q4"): [{"index": 1}, {"index": 0}],  # the candidate, both rounds
}
STB = SHARED / "stabletoolbench" / "data_example"


def answers(side: str, qids: list[str]) -> dict:
    return {q: converted(q, answer=f"The answer is 42. [{q}-{side}]") for q in qids}


def setup(tmp_path: Path) -> dict[str, Path]:
    paths = {name: tmp_path / name for name in ("ref", "out", "ids", "ref_pass", "out_pass")}
    for path in paths.values():
        path.mkdir()
    (paths["ref"] / "G1_instruction.json").write_text(
        json.dumps(answers("ref", ["q1", "q2", "q3", "q4", "q5"]))
    )
    (paths["out"] / "G1_instruction.json").write_text(
        json.dumps(answers("out", ["q1", "q2", "q3", "q4"]))
    )
    (paths["ids"] / "G1_instruction.json").write_text(json.dumps({f"q{k}": 0 for k in range(1, 6)}))
    (paths["ref_pass"] / "G1_instruction_ref.json").write_text(
        json.dumps({"q3": {"passed": 0, "failed": 2}})
    )
    (paths["out_pass"] / "G1_instruction_out.json").write_text(
        json.dumps({"q3": {"passed": 2, "failed": 0}})
    )
    return paths


def run(paths: dict[str, Path], judge: ScriptedJudge, save: Path, *flags: str) -> int:
    argv = [
        "--ref_converted_answer_path",
        str(paths["ref"]),
        "--output_converted_answer_path",
        str(paths["out"]),
    ]
    argv += ["--ref_pass", str(paths["ref_pass"]), "--output_pass", str(paths["out_pass"])]
    argv += ["--test_ids", str(paths["ids"]), "--save_path", str(save), "--api_base", judge.url]
    return win_rate_main([*argv, "--evaluate_times", "2", "--max_eval_threads", "1", *flags])


def test_win_rate(tmp_path: Path) -> None:
    paths = setup(tmp_path)
    with ScriptedJudge(SCRIPT) as judge:
        assert run(paths, judge, tmp_path / "win") == 0
        # q1 2 × 2 checks · q2 and q4 2 × (2 checks + 1 comparison) · q3 shortcut · q5 missing
        assert judge.posts == 16
        votes = read_json(tmp_path / "win" / "G1_instruction_ref_out.json")
        assert {q: (v["ref"], v["out"]) for q, v in votes.items()} == {
            # the only Solved answer wins, in round 1 too, where the candidate is shown first:
            # each status stays with its answer. (Their eval_preference.py with
            # --use_pass_rate true hands the judge [ref status, output status] whatever order
            # the shuffle in annotate_preference gives the answers, so a swapped round credits
            # the status-decided win to the wrong answer.)
            "q1": (2, 0),
            "q2": (1, 1),  # a judge that always picks Answer_0: the alternation makes it a tie
            "q3": (0, 2),  # the shortcut: only the candidate passed
            "q4": (0, 2),
            "q5": (2, 0),  # the candidate has no answer
        }
        assert votes["q3"]["rounds"] == {"0": "output (shortcut)", "1": "output (shortcut)"}
        assert votes["q2"]["round_1"] == "complete"
        compared = [
            b["messages"][0]["content"]
            for b in judge.requests
            if b["tool_choice"]["function"]["name"] == "select_better_answer"
        ]
        first = [
            text.index("[q2-ref]") < text.index("[q2-out]") for text in compared if "[q2]" in text
        ]
        assert first == [True, False]  # the reference first in round 0, the candidate in round 1
        summary = read_json(tmp_path / "win" / "G1_instruction_ref_out.summary.json")
        assert (summary["wins"], summary["losses"], summary["ties"]) == (2, 2, 1)
        # the references' figure: queries won over all queries (eval_preference.py:
        # ``win_rate /= len(prefer_dict)``, ties counted apart), then ours beside it
        assert summary["win_rate"] == 40.0 and summary["tie_rate"] == 20.0
        assert summary["win_rate_ties_as_half"] == 50.0
        assert summary["win_rate_without_ties"] == 50.0
        with open(tmp_path / "win" / "G1_instruction_ref_out.csv", newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
        assert [r[6] for r in rows[1:]] == ["1", "3", "2", "2", "1"] and rows[0][
            6
        ] == "preference_label"
        assert run(paths, judge, tmp_path / "win") == 0  # resumed: every verdict is cached
        assert judge.posts == 16


def test_the_shortcut_fires_on_stabletoolbench_results(tmp_path: Path, shared) -> None:
    """StableToolBench's own example: its chain-of-thought answer to query 588 has no Finish
    (Unsolved in all 3 rounds of its pass-rate results) and its DFS answer is Solved. Its
    preference run still judged all 3 rounds (its shortcut never fires); ours decides them
    from the pass-rate results without a judge call."""
    shipped = read_json(
        STB / "preference_results" / "G1_instruction_virtual_chatgpt_cot_virtual_chatgpt_dfs.json"
    )
    assert shipped["588"] == {"virtual_chatgpt_cot": 0, "virtual_chatgpt_dfs": 3} | {
        f"round_{i}": "complete" for i in range(3)
    }
    (tmp_path / "ids").mkdir()
    (tmp_path / "ids" / "G1_instruction.json").write_text(json.dumps({"588": 0}))
    converted_root = STB / "model_predictions_converted"
    argv = [
        "--converted_answer_path",
        str(converted_root),
        "--reference_model",
        "virtual_chatgpt_cot",
    ]
    argv += [
        "--output_model",
        "virtual_chatgpt_dfs",
        "--pass_rate_result_path",
        str(STB / "pass_rate_results"),
    ]
    argv += [
        "--test_ids",
        str(tmp_path / "ids"),
        "--save_path",
        str(tmp_path / "win"),
        "--evaluate_times",
        "3",
    ]
    with ScriptedJudge({}) as judge:
        assert win_rate_main([*argv, "--api_base", judge.url]) == 0
        assert judge.posts == 0
    ours = read_json(
        tmp_path / "win" / "G1_instruction_virtual_chatgpt_cot_virtual_chatgpt_dfs.json"
    )["588"]
    assert (ours["virtual_chatgpt_cot"], ours["virtual_chatgpt_dfs"]) == (0, 3)
    assert set(ours["rounds"].values()) == {"output (shortcut)"}


def test_the_shortcut_reads_each_record_as_its_reference_does() -> None:
    """ToolBench's votes: its ``eval_preference.py`` reads ``machine_label``, the CSV label of
    ``write_results`` (passed when ``passed > failed``, failed when fewer, ``if random.random()
    < 0.5`` on a tie); StableToolBench's statuses: the most frequent one, Solved against
    Unsolved only (its commented-out shortcut), so an Unsure majority decides nothing."""
    from inference_utils.tooleval.answer_status import tied_vote_passes
    from inference_utils.tooleval.win_rate import passed

    assert passed({"passed": 3, "failed": 1}) is True
    assert passed({"passed": 1, "failed": 3}) is False
    assert passed({"passed": 0, "failed": 4, "missing": True}) is False
    coins = {q: passed({"passed": 2, "failed": 2}, 42, q) for q in ("q1", "q2", "q3", "q4")}
    assert coins == {q: tied_vote_passes(42, q) for q in coins} and len(set(coins.values())) == 2
    solved, unsolved, unsure = (f"AnswerStatus.{s}" for s in ("Solved", "Unsolved", "Unsure"))
    assert passed({"is_solved": {"0": solved, "1": solved, "2": unsure}}) is True
    assert passed({"is_solved": {"0": unsolved, "1": unsolved, "2": solved}}) is False
    assert passed({"is_solved": {"0": unsure, "1": unsure, "2": solved}}) is None
    assert passed(None) is None


def test_order_random_shuffles_as_the_references_do(tmp_path: Path) -> None:
    """``--order random``: each round shows the two answers in the order of a coin seeded by
    the query and the round, as the references' ``annotate_preference`` shuffles them
    (``random.shuffle(indices)``); a judge that always picks the first answer shown then wins
    each side the rounds the coin shows it first."""
    paths = setup(tmp_path)
    with ScriptedJudge(SCRIPT) as judge:
        assert run(paths, judge, tmp_path / "win", "--order", "random") == 0
        compared = [
            b["messages"][0]["content"]
            for b in judge.requests
            if b["tool_choice"]["function"]["name"] == "select_better_answer"
            and "[q2]" in b["messages"][0]["content"]
        ]
    shown_first = [t.index("[q2-ref]") < t.index("[q2-out]") for t in compared]
    coins = [random.Random(f"42-q2-{r}-order").random() < 0.5 for r in range(2)]
    assert shown_first == coins
    votes = read_json(tmp_path / "win" / "G1_instruction_ref_out.json")["q2"]
    assert (votes["ref"], votes["out"]) == (sum(coins), 2 - sum(coins))
    summary = read_json(tmp_path / "win" / "G1_instruction_ref_out.summary.json")
    assert summary["order"] == "random"
    # --compat toolbench (or stable) is the references' way: the same shuffled order
    with ScriptedJudge(SCRIPT) as judge:
        assert run(paths, judge, tmp_path / "tb", "--compat", "toolbench") == 0
    assert read_json(tmp_path / "tb" / "G1_instruction_ref_out.json")["q2"] == votes


def test_the_preference_question_is_the_references_byte_for_byte(tmp_path: Path, shared) -> None:
    """With ToolBench's evaluator folder, the ``select_better_answer`` question equals the one
    its evaluator builds for the same two answers: ``process_answer`` (the final answer cut to
    1,000 characters, ``answer_details[:3000]``, ``method`` removed), ``json.dumps`` of each,
    and the ``<description>`` of the function's ``<function>`` block of ``template.txt``
    filled with ``str.format`` (``OpenAINormalizedEvaluator.function_call``)."""
    import re

    folder = SHARED / "toolbench" / "tooleval_evaluators" / "tooleval_gpt-3.5-turbo_default"
    real = read_json(SHARED / "toolbench" / "tooleval_default_evalset" / "G1_instruction.json")
    example = next(e for e in real.values() if len(e["answer"]["final_answer"]) > 1000)
    ref = json.loads(json.dumps(example))
    out = json.loads(json.dumps(example))
    ref["query"] = out["query"] = example["query"] + " [q1]"
    # tags the scripted judge reads, where the cut to 1,000 characters keeps them
    ref["answer"]["final_answer"] = "[q1-ref] " + ref["answer"]["final_answer"]
    out["answer"]["final_answer"] = "[q1-out] " + out["answer"]["final_answer"]
    out["answer"]["method"] = "another method"
    for name, side in (("ref", ref), ("out", out)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "G1_instruction.json").write_text(json.dumps({"q1": side}))
    (tmp_path / "ids").mkdir()
    (tmp_path / "ids" / "G1_instruction.json").write_text(json.dumps({"q1": 0}))
    script = {
        ("check_answer_status", "q1-ref"): [S],
        ("check_answer_status", "q1-out"): [S],
        ("select_better_answer", "q1"): [{"index": 0}],
    }
    argv = [
        "--ref_converted_answer_path", str(tmp_path / "ref"),
        "--output_converted_answer_path", str(tmp_path / "out"),
        "--test_ids", str(tmp_path / "ids"), "--save_path", str(tmp_path / "win"),
        "--evaluate_times", "1", "--evaluator_dir", str(folder),
    ]  # fmt: skip
    with ScriptedJudge(script) as judge:
        assert win_rate_main([*argv, "--api_base", judge.url]) == 0
        asked = [
            b["messages"][0]["content"]
            for b in judge.requests
            if b["tool_choice"]["function"]["name"] == "select_better_answer"
        ]

    def process_answer(answer: dict) -> dict:
        answer = json.loads(json.dumps(answer))
        answer["final_answer"] = answer["final_answer"][:1000]
        answer["answer_details"] = answer["answer_details"][:3000]
        answer.pop("method", None)
        return answer

    template = (folder / "template.txt").read_text(encoding="utf-8")
    blocks = re.findall(r"<function>(.*?)</function>", template, re.DOTALL)
    descriptions = {
        re.findall(r"<name>(.*?)</name>", b, re.DOTALL)[0]: re.findall(
            r"<description>(.*?)</description>", b, re.DOTALL
        )[0]
        for b in blocks
    }
    theirs = str(descriptions["select_better_answer"]).format(
        query=ref["query"],
        answer_0=json.dumps(process_answer(ref["answer"])),
        answer_1=json.dumps(process_answer(out["answer"])),
    )
    assert asked == [theirs] and len(theirs) < len(json.dumps(ref["answer"])) + len(template)
