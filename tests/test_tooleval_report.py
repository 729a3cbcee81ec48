"""The report: per-group tables (markdown and CSV) and a bar chart from the summaries."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from inference_utils.tooleval.report import answer_set
from inference_utils.tooleval.report import main as report_main


def summary(path: Path, **fields: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields))


def test_report(tmp_path: Path) -> None:
    p = tmp_path / "pass"
    summary(
        p / "a" / "G1_instruction_a.summary.json",
        test_set="G1_instruction",
        model="a",
        mode="stable",
        pass_rate=50.0,
        std=6.25,
    )
    summary(
        p / "a" / "G2_category_a.summary.json",
        test_set="G2_category",
        model="a",
        mode="stable",
        pass_rate=30.0,
        std=0.0,
    )
    summary(
        p / "b" / "G1_instruction_b.summary.json",
        test_set="G1_instruction",
        model="b",
        mode="stable",
        pass_rate=70.0,
        std=1.0,
    )
    summary(
        tmp_path / "win" / "G1_instruction_ref_b.summary.json",
        test_set="G1_instruction",
        candidate="b",
        reference="ref",
        queries=8,
        wins=4,
        losses=2,
        ties=2,
        win_rate=62.5,  # as summaries counted it before: ties as half
    )
    assert report_main([str(p), str(tmp_path / "win"), "--output", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| a (stable) | 50.0 ± 6.2 | 30.0 ± 0.0 | 40.0 |" in md
    assert "| b (stable) | 70.0 ± 1.0 | – | 70.0 |" in md
    # the references' win rate (won / all) first, recomputed from the counts, then the rest
    won, tied, half = (md.index(f"| b vs ref | {v} | {v} |") for v in ("50.0", "25.0", "62.5"))
    assert md.index("## Win rate (%: queries won / all") < won < tied < half
    with open(tmp_path / "report" / "report.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert ["a (stable)", "pass_rate", "Average", "40.0", ""] in rows
    png = (tmp_path / "report" / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert report_main([str(tmp_path / "nothing"), "--output", str(tmp_path / "r2")]) == 1


def test_a_pass_row_and_a_win_row_of_one_answer_set_share_its_colour() -> None:
    # names with " vs " and " (" in them: the answer set comes from the summaries, not the row
    passed = {"G1_instruction": {"model": "ours (v2) vs b", "mode": "toolbench", "pass_rate": 1}}
    won = {"G1_tool": {"candidate": "ours (v2) vs b", "reference": "r", "win_rate": 50.0}}
    assert answer_set(passed) == answer_set(won) == "ours (v2) vs b"
