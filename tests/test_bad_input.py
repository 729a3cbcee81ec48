"""Broken input never stops a run: it is reported, and the counts reconcile."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from conftest import ALPHA_UMI, SAMPLE, TOOLBENCH_EXAMPLE, read_json, read_jsonl
from conftest import STB_ANSWERS as STB

from process_data.protocol import ACTION_INPUT_PREFIX, ROLES
from process_data.toolbench.cli import main


def put(data: Path, name: str, content: bytes | str, group: str = "G1_answer") -> Path:
    path = data / "answer" / group / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def good_answer() -> dict:
    return read_json(TOOLBENCH_EXAMPLE / "answer/G1_answer/10_ChatGPT_DFS_woFilter_w2.json")


def check_reconciled(out: Path, n_files: int) -> dict:
    """read = kept + rejected per stage and role; every lost trajectory is in the rejects."""
    summary = read_json(out / "summary.json")
    assert summary["read"] == n_files
    assert summary["read"] == summary["kept"] + summary["rejected"]
    stages = summary["stages"]
    for counts in stages.values():
        assert counts["read"] == counts["kept"] + counts["rejected"]
    assert stages["stage1"]["read"] == n_files
    assert stages["stage2"]["read"] == stages["stage1"]["kept"]
    for role in ROLES:
        assert stages[role]["read"] == stages["stage2"]["kept"]
        samples = read_json(out / f"train_{role}.json")
        assert len(samples) == stages[role]["samples"]
    assert len(read_json(out / "raw_data/raw_data_stage_1.json")) == stages["stage1"]["kept"]
    assert len(read_json(out / "raw_data/raw_data_stage_2.json")) == stages["stage2"]["kept"]
    rejects = read_jsonl(out / "rejects.jsonl") if (out / "rejects.jsonl").exists() else []
    lost = {(r["file"], r["stage"]) for r in rejects if "step" not in r}
    assert len({f for f, _ in lost}) == summary["rejected"]
    for stage in ("stage1", "stage2", *ROLES):
        assert sum(1 for _, s in lost if s == stage) == stages[stage]["rejected"], stage
    return summary


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"answer_generation": {"valid_data": true, "train_mess', "invalid JSON"),
        (b'{"answer_generation": "\xff\xfe"}', "not UTF-8"),
        ("", "invalid JSON"),
        ("[1, 2]", "top level is list"),
        ('{"win": true}', "no answer_generation"),
        (
            '{"answer_generation": {"valid_data": true, "train_messages": [], "query": "q", '
            '"function": []}}',
            "train_messages is empty",
        ),
        (
            '{"answer_generation": {"train_messages": [[]], "query": 5, "function": []}}',
            "answer_generation.query is int",
        ),
    ],
)
def test_broken_file_is_reported(tmp_path: Path, content, reason: str) -> None:
    data = tmp_path / "data"
    bad = put(data, "1_x.json", content)
    put(data, "2_x.json", json.dumps(good_answer()))
    assert main(["all", "--data_dir", str(data), "--output_dir", str(tmp_path / "out")]) == 3
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [(r["file"], r["record"], r["stage"]) for r in rejects] == [(str(bad), "1", "stage1")]
    assert reason in rejects[0]["reason"]
    check_reconciled(tmp_path / "out", 2)


def test_wrong_types_inside_a_chain(tmp_path: Path) -> None:
    data = tmp_path / "data"
    answer = good_answer()
    chain = answer["answer_generation"]["train_messages"][-1]
    chain[2]["function_call"]["arguments"] = {"not": "a string"}  # a dict, not JSON text
    put(data, "1_x.json", json.dumps(answer))
    broken = good_answer()
    broken["answer_generation"]["train_messages"][-1][2]["function_call"] = "oops"
    put(data, "2_x.json", json.dumps(broken))
    notjson = good_answer()
    notjson["answer_generation"]["train_messages"][-1][2]["function_call"]["arguments"] = "{'a': "
    put(data, "3_x.json", json.dumps(notjson))
    code = main(["all", "--data_dir", str(data), "--output_dir", str(tmp_path / "out")])
    assert code == 3
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [(Path(r["file"]).name, r["stage"]) for r in rejects] == [("2_x.json", "stage2")]
    assert "function_call of message 2 is not an object" in rejects[0]["reason"]
    callers = read_json(tmp_path / "out" / "train_caller.json")
    assert any(c["target"].endswith(ACTION_INPUT_PREFIX + '{"not": "a string"}') for c in callers)
    assert any(c["target"].endswith(ACTION_INPUT_PREFIX + "{'a': ") for c in callers)
    check_reconciled(tmp_path / "out", 3)


def test_strict_stops_at_the_first_problem(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    put(data, "1_x.json", json.dumps(good_answer()))
    bad = put(data, "2_x.json", "{truncated")
    out = tmp_path / "out"
    assert main(["all", "--data_dir", str(data), "--output_dir", str(out), "--strict"]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "invalid JSON" in err
    assert not (out / "summary.json").exists() and not (out / "train_planner.json").exists()
    assert not list(out.rglob("*.partial"))


def test_exit_codes(tmp_path: Path, shared) -> None:
    stage1 = ALPHA_UMI / "train-example" / "raw_data" / "raw_data_stage_1.json"
    assert (
        main(["stage2", "--input_path", str(stage1), "--output_path", str(tmp_path / "s2.json")])
        == 0
    )
    (tmp_path / "empty" / "answer" / "G1_answer").mkdir(parents=True)
    assert (
        main(["all", "--data_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "o")])
        == 1
    )
    assert (
        main(["all", "--data_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o")])
        == 1
    )
    with pytest.raises(SystemExit) as exc:
        main(["role", "--role", "nobody", "--input_path", "x", "--output_path", "y"])
    assert exc.value.code == 2


def test_truncated_stage_array_reports_the_record(tmp_path: Path, shared) -> None:
    text = (ALPHA_UMI / "train-example" / "raw_data" / "raw_data_stage_2.json").read_text()
    cut = tmp_path / "cut.json"
    cut.write_text(text[: len(text) // 2])
    out = tmp_path / "planner.json"
    code = main(["role", "--role", "planner", "--input_path", str(cut), "--output_path", str(out)])
    assert code == 3
    samples = read_json(out)
    (reject,) = read_jsonl(tmp_path / "planner.json.rejects.jsonl")
    assert reject["file"] == str(cut) and "unreadable JSON" in reject["reason"]
    assert int(reject["record"]) > 0 and samples  # records before the cut are kept


# --------------------------------------------------------------------------------------------
# Fuzz: hundreds of mutated real files, one run, nothing crashes and everything adds up
# --------------------------------------------------------------------------------------------


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _get(obj, path):
    for key in path:
        obj = obj[key]
    return obj


WEIRD = [None, 0, 1.5, "", "text", [], {}, [1, "a"], {"x": None}, True, '{"a": 1', "🙂"]


def mutate(raw: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # truncate
        return raw[: rng.randrange(len(raw))]
    if kind == 1:  # invalid UTF-8 somewhere
        i = rng.randrange(len(raw))
        return raw[:i] + bytes([rng.choice([0xFF, 0xC3, 0x80])]) + raw[i:]
    doc = json.loads(raw)
    paths = [p for p in _paths(doc) if p]
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(paths)
        try:
            parent = _get(doc, path[:-1])
            if kind == 2 and isinstance(parent, dict):  # drop a key
                parent.pop(path[-1], None)
            elif kind == 3 and isinstance(parent, list) and parent:  # drop a list item
                parent.pop(min(path[-1], len(parent) - 1))
            else:  # wrong type
                parent[path[-1]] = rng.choice(WEIRD)
        except (KeyError, IndexError, TypeError):
            continue
    return json.dumps(doc).encode()


def test_fuzz_counts_reconcile(tmp_path: Path, shared) -> None:
    rng = random.Random(20240113)
    sources = sorted(TOOLBENCH_EXAMPLE.glob("answer/*/*.json")) + sorted(
        SAMPLE.glob("answer/*/*.json")
    )
    data = tmp_path / "data"
    n = 240
    for k in range(n):
        src = rng.choice(sources)
        put(data, f"{k}_fuzz.json", mutate(src.read_bytes(), rng), src.parent.name)
    outs = {}
    for workers, compat in ((1, []), (2, ["--compat", "alpha_umi"])):
        out = tmp_path / f"out{workers}"
        code = main(
            [
                "all",
                "--data_dir",
                str(data),
                "--output_dir",
                str(out),
                "--num_workers",
                str(workers),
                *compat,
            ]
        )
        assert code in (0, 3)
        outs[workers] = check_reconciled(out, n)
        # every problem was foreseen and explained, none caught as an unexpected exception
        reasons = [r["reason"] for r in read_jsonl(out / "rejects.jsonl")]
        assert not [r for r in reasons if r.startswith("malformed record")]
    assert outs[1]["rejected"] > n // 4  # the mutations do break things
    assert outs[1]["kept"] > 0


@pytest.mark.parametrize("source", ["sample", "stabletoolbench"])
def test_chat_format_counts_reconcile(tmp_path: Path, source: str, shared) -> None:
    out = tmp_path / "chat"
    where = ["--data_dir", str(SAMPLE)] if source == "sample" else ["--answer_dir", str(STB)]
    assert main(["all", *where, "--output_dir", str(out), "--format", "chat"]) == 3
    summary = read_json(out / "summary.json")
    for role in ROLES:
        lines = read_jsonl(out / f"train_{role}.jsonl")
        assert len(lines) == summary["stages"][role]["samples"]
        assert len({line["id"] for line in lines}) == len(lines)
    shutil.rmtree(out)
