"""Pass rate, both modes, against a scripted judge (a real OpenAI-compatible server on
127.0.0.1 that answers each question with a fixed verdict sequence): the rules worked out by
hand, the outputs' shapes, resume with 0 judge calls, and judge faults."""

from __future__ import annotations

import csv
import json
import random
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED, kill_when, read_json
from openai_gateway import ScriptedJudge

from inference_utils.tooleval.answer_status import steps, tied_vote_passes
from inference_utils.tooleval.judge import Rubric
from inference_utils.tooleval.pass_rate import main as pass_rate_main

S, U, N = ({"answer_status": s} for s in ("Solved", "Unsolved", "Unsure"))
SOLVABLE, UNSOLVABLE, UNSURE_TASK = (
    {"task_status": s} for s in ("Solvable", "Unsolvable", "Unsure")
)
SCRIPT = {
    ("check_answer_status", "q2"): [S],
    ("check_answer_status", "q3"): [U],
    ("check_task_solvable", "q3"): [SOLVABLE],
    ("check_answer_status", "q4"): [U],
    ("check_task_solvable", "q4"): [UNSOLVABLE],
    ("check_answer_status", "q5"): [N],
    ("parse_answer_status", "q5"): [N],
    ("check_task_solvable", "q5"): [UNSURE_TASK],
    ("check_answer_status", "q6"): [S, S, U, U],
    ("check_task_solvable", "q6"): [SOLVABLE],
    ("check_task_solvable", "q8"): [UNSOLVABLE],
}
TOOL = {"name": "lookup_for_tool", "arguments": "{}", "response": '{"error": "", "response": "42"}'}


def converted(tag: str, finish: bool = True, answer: str = "The answer is 42.") -> dict:
    final = json.dumps({"return_type": "give_answer", "final_answer": answer}) if answer else ""
    messages = [TOOL] + ([{"name": "Finish", "arguments": final, "response": ""}] if finish else [])
    node: dict = {}
    for m in reversed(messages):
        node = {"role": "tool", "message": m, "next": [node] if node else []}
    user = {"role": "user", "message": "", "next": [node]}
    return {
        "query": f"[{tag}] What is the answer?",
        "available_tools": [
            {"name": "lookup_for_tool", "description": "Looks it up."},
            {"name": "Finish"},
        ],
        "answer": {
            "method": "CoT@1",
            "total_steps": 2 + len(messages),
            "final_answer": final,
            "answer_details": [{"role": "system", "message": "", "next": [user]}],
        },
    }


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    answers = {f"q{k}": converted(f"q{k}") for k in (2, 3, 4, 5, 6)}
    answers["q1"] = converted("q1", finish=False)
    answers["q8"] = converted("q8", answer="")
    (tmp_path / "converted").mkdir()
    (tmp_path / "converted" / "G1_instruction.json").write_text(json.dumps(answers))
    (tmp_path / "ids").mkdir()
    ids = {f"q{k}": 0 for k in range(1, 9)}  # q7 has no answer
    (tmp_path / "ids" / "G1_instruction.json").write_text(json.dumps(ids))
    return tmp_path / "converted", tmp_path / "ids"


def run(data, judge: ScriptedJudge, save: Path, *flags: str) -> int:
    converted_dir, ids = data
    argv = [
        "--converted_answer_path",
        str(converted_dir),
        "--test_ids",
        str(ids),
        "--save_path",
        str(save),
    ]
    argv += [
        "--model",
        "m",
        "--api_base",
        judge.url,
        "--evaluate_times",
        "4",
        "--max_eval_threads",
        "1",
    ]
    return pass_rate_main([*argv, *flags])


def coin(qid: str, round_: int) -> str:
    return "passed" if random.Random(f"42-{qid}-{round_}").random() < 0.5 else "failed"


def test_toolbench_mode(data, tmp_path: Path) -> None:
    with ScriptedJudge(SCRIPT) as judge:
        assert run(data, judge, tmp_path / "pass") == 0
        calls = judge.posts
        # q2 4 · q3 8 · q4 8 · q5 12 · q6 4 + 2 · q8 4 (its empty answer needs no call)
        assert calls == 42
        result = read_json(tmp_path / "pass" / "G1_instruction_m.json")
        assert list(result) == [f"q{k}" for k in range(1, 9)]
        votes = {qid: (r["passed"], r["failed"]) for qid, r in result.items()}
        q5 = [coin("q5", r) for r in range(4)]
        assert votes == {
            "q1": (0, 4),  # no Finish: failed without a judge call
            "q2": (4, 0),
            "q3": (0, 4),  # Unsolved + Solvable
            "q4": (4, 0),  # Unsolved + Unsolvable
            "q5": (q5.count("passed"), q5.count("failed")),  # Unsure all the way: the coin
            "q6": (2, 2),  # a tie, which passes
            "q7": (0, 4),  # no answer
            "q8": (4, 0),  # empty answer (Unsolved) on an unsolvable task
        }
        passing = 4 + (q5.count("failed") <= q5.count("passed"))
        summary = read_json(tmp_path / "pass" / "G1_instruction_m.summary.json")
        assert summary["pass_rate"] == pytest.approx(100 * passing / 8) and summary["answered"] == 7
        assert result["q4"]["task_solvable"] == "TaskStatus.Unsolvable"
        assert (
            result["q2"]["is_solved"] == "AnswerStatus.Solved" and result["q2"]["not_hallucinate"]
        )
        assert result["q2"]["final_step"].startswith("Final step: {'name': 'Finish'")
        assert result["q7"]["missing"]
        with open(tmp_path / "pass" / "G1_instruction_m.csv", newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t"))
        assert rows[0][:3] == ["query", "solvable", "available_tools"] and len(rows) == 9
        # the CSV's label is ToolBench's write_results': a tied vote (q6, 2 to 2) is a coin,
        # ``if random.random() < 0.5``, here seeded by the query; the pass rate counts it as
        # passed (``failed <= passed``)
        labels = {r[6]: r[8] for r in rows[1:]}
        assert labels["q6"] == ("passed" if tied_vote_passes(42, "q6") else "failed")
        assert labels["q2"] == "passed" and labels["q3"] == labels["q7"] == "failed"
        # the same command again: every verdict comes from the cache
        assert run(data, judge, tmp_path / "pass") == 0
        assert judge.posts == calls
        assert read_json(tmp_path / "pass" / "G1_instruction_m.json") == result
        assert summary["denominator"] == 8
    # ToolBench's denominator: only the queries of the answer file (eval_pass_rate.py loops
    # over ``reference_examples`` and ends with ``pass_rate /= len(label_cnt)``)
    with ScriptedJudge(SCRIPT) as judge:
        assert run(data, judge, tmp_path / "tb", "--compat", "toolbench") == 0
        tb = read_json(tmp_path / "tb" / "G1_instruction_m.summary.json")
        assert tb["pass_rate"] == pytest.approx(100 * passing / 7) and tb["denominator"] == 7
        assert "q7" not in read_json(tmp_path / "tb" / "G1_instruction_m.json")


def test_stable_mode_and_its_denominator(data, tmp_path: Path) -> None:
    with ScriptedJudge(SCRIPT) as judge:
        assert run(data, judge, tmp_path / "ours", "--mode", "stable") == 0
        assert judge.posts == 24  # the solved checks only: q2 4 · q3 4 · q4 4 · q5 8 · q6 4
        ours = read_json(tmp_path / "ours" / "G1_instruction_m.summary.json")
        rounds = [(1 + 0.5 + 1) / 8, (1 + 0.5 + 1) / 8, (1 + 0.5) / 8, (1 + 0.5) / 8]
        assert ours["rounds"] == pytest.approx(rounds)
        assert ours["pass_rate"] == pytest.approx(100 * statistics.fmean(rounds))  # 25.0
        assert ours["std"] == pytest.approx(100 * statistics.pstdev(rounds))  # 6.25
        record = read_json(tmp_path / "ours" / "G1_instruction_m.json")["q6"]
        assert record["is_solved"] == {
            str(r): f"AnswerStatus.{s}" for r, s in enumerate(["Solved"] * 2 + ["Unsolved"] * 2)
        }
    with ScriptedJudge(SCRIPT) as judge:
        assert run(data, judge, tmp_path / "stb", "--mode", "stable", "--compat", "stable") == 0
        stb = read_json(tmp_path / "stb" / "G1_instruction_m.summary.json")
        assert stb["pass_rate"] == pytest.approx(100 * 2 / 7)  # q7 left out: a higher score
        assert "q7" not in read_json(tmp_path / "stb" / "G1_instruction_m.json")


def test_judge_faults(data, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """429s and 500s are retried; text that is not a verdict is asked again, then recorded as
    Unsure with the reason; a judge that hangs past the timeout fails the run (exit 3), and the
    run resumes from the verdicts it got."""
    with ScriptedJudge(SCRIPT, garbage=3) as judge:
        judge.faults.fail_first, judge.faults.fail_status = 2, 429
        assert run(data, judge, tmp_path / "a", "--mode", "stable") == 0
        records = read_json(tmp_path / "a" / "G1_instruction_m.json")
        assert records["q6"]["is_solved"]["3"] == "AnswerStatus.Unsolved"
    with ScriptedJudge(SCRIPT) as judge:
        judge.faults.fail_always, judge.faults.fail_status = True, 500
        assert run(data, judge, tmp_path / "b", "--max_retries", "1") == 3
    said = capsys.readouterr().err
    assert "the judge failed" in said and "--request_timeout" not in said  # broken, not slow
    with ScriptedJudge(SCRIPT) as judge:
        judge.faults.delay_first, judge.faults.delay = 10**6, 5.0
        assert (
            run(data, judge, tmp_path / "b", "--max_retries", "0", "--request_timeout", "0.5") == 3
        )
    said = capsys.readouterr().err
    assert "slower than --request_timeout" in said and "resumes" in said
    with ScriptedJudge(SCRIPT) as judge:
        assert run(data, judge, tmp_path / "b") == 0
        assert judge.posts == 42


def test_malformed_verdicts_become_unsure(data, tmp_path: Path) -> None:
    maybe = [{"answer_status": "Maybe"}]
    bad = SCRIPT | {("check_answer_status", "q2"): maybe, ("parse_answer_status", "q2"): maybe}
    with ScriptedJudge(bad) as judge:
        assert run(data, judge, tmp_path / "p", "--mode", "stable") == 0
        q2 = read_json(tmp_path / "p" / "G1_instruction_m.json")["q2"]
        assert set(q2["is_solved"].values()) == {"AnswerStatus.Unsure"}  # asked twice, then Unsure
        assert (
            judge.asked[("check_answer_status", "q2")]
            == judge.asked[("parse_answer_status", "q2")]
            == 8
        )


def test_json_in_text_when_the_judge_does_no_tool_calls(data, tmp_path: Path) -> None:
    with ScriptedJudge(SCRIPT, tool_calls=False) as judge:
        assert run(data, judge, tmp_path / "p", "--mode", "stable") == 0
        assert "tools" not in judge.requests[-1] and judge.requests[-1]["response_format"] == {
            "type": "json_object"
        }
        assert read_json(tmp_path / "p" / "G1_instruction_m.summary.json")[
            "pass_rate"
        ] == pytest.approx(25.0)


def test_toolbench_evaluator_folder(data, tmp_path: Path, shared) -> None:
    folder = SHARED / "toolbench" / "tooleval_evaluators" / "tooleval_gpt-3.5-turbo_default"
    rubric = Rubric.load_tooleval(folder)
    messages, function = rubric.request(
        "check_answer_status", {"query": "Q?", "answer": "A."}, reason=True
    )
    assert messages == [{"role": "user", "content": messages[0]["content"]}]
    assert "Query:\nQ?\nAnswer:\nA." in messages[0]["content"]
    assert function["parameters"]["required"] == ["answer_status", "reason"]
    with ScriptedJudge(SCRIPT) as judge:
        assert run(data, judge, tmp_path / "p", "--evaluator_dir", str(folder)) == 0
        body = judge.requests[0]
        assert body["tool_choice"]["function"]["name"] in {fn for fn, _ in SCRIPT}
        assert body["temperature"] == 0.2 and body["max_tokens"] == 1000  # the folder's settings


def test_steps_read_the_reference_answers(shared) -> None:
    """ToolEval's reading of the converted reference set (the old format: messages cut to
    100 characters as text)."""
    answers = read_json(SHARED / "toolbench" / "tooleval_default_evalset" / "G1_instruction.json")
    finished = 0
    for example in answers.values():
        text, final = steps(example)
        assert text.startswith("Step 1: ") or not text
        finished += "'name': 'Finish'" in final
    assert 0 < finished <= len(answers)


def test_sigkill_loses_no_verdict(data, tmp_path: Path) -> None:
    """A run killed while judging keeps every verdict it received: the run again asks the
    judge exactly the questions that have no stored verdict."""
    converted_dir, ids = data
    save = tmp_path / "pass"
    script = SCRIPT | {("check_answer_status", "q6"): [S]}  # verdicts that do not depend on order
    total = 40  # q2 4 · q3 8 · q4 8 · q5 12 · q6 4 · q8 4
    with ScriptedJudge(script) as judge:
        judge.faults.delay_first, judge.faults.delay = 10**6, 0.3
        cmd = [
            sys.executable,
            "-m",
            "inference_utils.tooleval.pass_rate",
            "--converted_answer_path",
            str(converted_dir),
        ]
        cmd += [
            "--test_ids",
            str(ids),
            "--save_path",
            str(save),
            "--model",
            "m",
            "--api_base",
            judge.url,
        ]
        cmd += ["--evaluate_times", "4", "--max_eval_threads", "4"]
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        kill_when(proc, lambda: judge.posts >= 12, timeout=120)
    with sqlite3.connect(save / "verdicts.sqlite") as db:
        kept = db.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    assert 0 < kept < total
    with ScriptedJudge(script) as judge:
        assert run(data, judge, save) == 0
        assert judge.posts == total - kept


def test_api_keys_reach_the_judge_and_nothing_else(
    data, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    """The keys of a key pool, and of ``--api_key``, are sent to the judge (each pool entry in
    turn) and appear in no log line, no output file and no cache, including on retries and on
    a run that fails."""
    keys = ["sk-pool-SECRET-one", "sk-pool-SECRET-two", "sk-flag-SECRET-three"]
    caplog.set_level("DEBUG")
    with ScriptedJudge(SCRIPT) as judge:
        pool = tmp_path / "pool.json"
        pool.write_text(json.dumps([{"api_key": k, "api_base": judge.url} for k in keys[:2]]))
        judge.faults.fail_first, judge.faults.fail_status = 3, 500
        assert run(data, judge, tmp_path / "out", "--api_pool", str(pool)) == 0
        assert set(judge.keys) == set(keys[:2])
    with ScriptedJudge(SCRIPT) as judge:
        judge.faults.fail_always, judge.faults.fail_status = True, 401
        flags = ("--api_key", keys[2], "--max_retries", "1")
        assert run(data, judge, tmp_path / "failed", *flags) == 3
        assert set(judge.keys) == {keys[2]}
    said = capfd.readouterr()
    text = said.out + said.err + caplog.text
    assert "judge failed" in text  # the failure was reported
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "pool.json"]
    assert any(p.name.startswith("verdicts.sqlite") for p in written)
    for key in keys:
        assert key not in text
        assert key.encode() not in b"".join(p.read_bytes() for p in written)


def test_the_judge_samples_as_tooleval_and_a_greedy_judge_is_asked_once(data, tmp_path) -> None:
    """ToolEval's evaluator configs ask the judge with ``temperature: 0.2`` and
    ``max_tokens: 1000`` (``completions_kwargs``): ours by default, each round with a seed of
    its own. At ``--temperature 0`` every round would get the same verdict: the question is
    asked once and its verdict counts for every round, so the rounds cost no call."""
    with ScriptedJudge(SCRIPT) as judge:
        assert run(data, judge, tmp_path / "sampled") == 0
        assert {(b["temperature"], b["max_tokens"]) for b in judge.requests} == {(0.2, 1000)}
        q6 = [b["seed"] for b in judge.requests if "[q6]" in b["messages"][-1]["content"]]
        assert set(q6) == {0, 1, 2, 3}  # a seed per round
    with ScriptedJudge(SCRIPT) as judge:
        assert run(data, judge, tmp_path / "greedy", "--temperature", "0") == 0
        # one round's questions: q2 1 · q3 2 · q4 2 · q5 3 · q6 1 · q8 1
        assert judge.posts == 10
        assert {b["temperature"] for b in judge.requests} == {0}
        records = read_json(tmp_path / "greedy" / "G1_instruction_m.json")
        assert (records["q6"]["passed"], records["q6"]["failed"]) == (4, 0)  # round 0's, 4 times
        assert read_json(tmp_path / "greedy" / "G1_instruction_m.summary.json")["std"] == 0


def test_compat_gives_the_references_numbers_from_the_same_verdicts(data, tmp_path) -> None:
    """With ``--compat toolbench`` / ``--compat stable``, the summary's pass rate is what the
    reference's own ``eval_pass_rate.py`` prints from the records we write (the same shape as
    its ``label_cnt``):

    * ToolBench: ``if label_cnt[query_id]["failed"] <= label_cnt[query_id]["passed"]:
      pass_rate += 1`` over the records, then ``pass_rate /= len(label_cnt)``;
    * StableToolBench: per round, ``score += 1`` for ``"AnswerStatus.Solved"``, ``0.5`` for
      ``"AnswerStatus.Unsure"``, nothing otherwise or for a missing round, ``scores.append(
      score / len(label_cnt))``; then ``sum(scores) / len(scores) * 100`` and
      ``np.std(scores) * 100``.
    """
    with ScriptedJudge(SCRIPT) as judge:
        assert run(data, judge, tmp_path / "tb", "--compat", "toolbench") == 0
    label_cnt = read_json(tmp_path / "tb" / "G1_instruction_m.json")
    theirs = sum(r["failed"] <= r["passed"] for r in label_cnt.values()) / len(label_cnt)
    summary = read_json(tmp_path / "tb" / "G1_instruction_m.summary.json")
    assert summary["pass_rate"] == pytest.approx(100 * theirs)

    with ScriptedJudge(SCRIPT) as judge:
        flags = ("--mode", "stable", "--compat", "stable")
        assert run(data, judge, tmp_path / "stb", *flags) == 0
    label_cnt = read_json(tmp_path / "stb" / "G1_instruction_m.json")
    scores = []
    for runtime in range(4):
        score = 0.0
        for record in label_cnt.values():
            solved = {int(k): v for k, v in record["is_solved"].items()}
            status = solved.get(runtime)
            score += {"AnswerStatus.Solved": 1, "AnswerStatus.Unsure": 0.5}.get(status, 0)
        scores.append(score / len(label_cnt))
    summary = read_json(tmp_path / "stb" / "G1_instruction_m.summary.json")
    assert summary["pass_rate"] == pytest.approx(sum(scores) / len(scores) * 100)
    assert summary["std"] == pytest.approx(statistics.pstdev(scores) * 100)  # np.std
