"""``umi-report RUN_DIR``: every section, and every figure equal to the file it comes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference_utils.run_report import STATIC_METRICS, main


def write(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    root = tmp_path / "run"
    write(root / "phases.json", {"phases": [
        {"name": "process_data", "seconds": 3.3, "status": "ok"},
        {"name": "GLPFT", "seconds": 61.5, "status": "ok"},
    ]})  # fmt: skip
    for i, model in enumerate(("backbone", "planner", "caller", "summarizer")):
        losses = [2.0 - i / 10, 1.5 - i / 10, 1.0 - i / 10]
        write(
            root / "glpft" / model / "train_summary.json",
            {"samples": 10 + i, "steps": 3, "train_loss": sum(losses) / 3, "seconds": 4.5 + i,
             "loss_history": {"steps": [1, 2, 3], "loss": losses}},
        )  # fmt: skip
    for folder, base in (("static", 0.5), ("static_backbone", 0.25)):
        write(root / folder / "predictions.json", [])
        write(
            root / folder / "metrics.json",
            {k: base + i / 100 for i, k in enumerate(STATIC_METRICS)},
        )
    for name, calls in (("alpha_umi_cot", 8), ("llmcompiler", 4)):
        write(root / "agents" / name / "summary.json", {
            "agent": name.split("_cot")[0], "method": "CoT@1", "queries": 2, "run": 2,
            "answered": 1, "llm_calls": calls, "tool_calls": 3, "seconds": 5.0,
        })  # fmt: skip
        write(root / "tooleval" / "pass" / name / f"G1_instruction_{name}.summary.json",
              {"test_set": "G1_instruction", "model": name, "pass_rate": 50.0})  # fmt: skip
    write(root / "tooleval" / "pass" / "ref" / "G1_instruction_ref.summary.json",
          {"test_set": "G1_instruction", "model": "ref", "pass_rate": 75.0})  # fmt: skip
    write(root / "tooleval" / "win" / "llmcompiler" / "G1_instruction_ref_llmcompiler.summary.json",
          {"test_set": "G1_instruction", "candidate": "llmcompiler", "reference": "ref",
           "win_rate": 25.0, "wins": 1, "ties": 2, "queries": 4})  # fmt: skip
    return root


def rows(text: str, section: str) -> dict[str, list[str]]:
    """A section's table rows by their first cell."""
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    out = {}
    for line in body.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0]] = cells[1:]
    return out


def test_the_report_has_every_section_and_each_figure_is_its_files(run_dir: Path) -> None:
    assert main([str(run_dir)]) == 0
    text = (run_dir / "REPORT.md").read_text()
    for section in ("Phases", "Training (GLPFT)", "Static evaluation", "Real-time agents",
                    "Artifacts", "Rebuild"):  # fmt: skip
        assert f"## {section}" in text
    assert f"umi-report {run_dir}" in text
    assert (run_dir / "training_loss.png").stat().st_size > 1000

    phases = rows(text, "Phases")
    assert phases["process_data"][:2] == ["3.2", "ok"] or phases["process_data"][:2] == [
        "3.3",
        "ok",
    ]
    assert phases["GLPFT"][0] == "61.5" and phases["**total**"][0] == "64.8"

    training = rows(text, "Training (GLPFT)")
    for model in ("backbone", "planner", "caller", "summarizer"):
        summary = json.loads((run_dir / "glpft" / model / "train_summary.json").read_text())
        _, samples, steps, first, last, mean, seconds = training[model]
        assert int(samples) == summary["samples"] and int(steps) == summary["steps"]
        assert float(first) == round(summary["loss_history"]["loss"][0], 4)
        assert float(last) == round(summary["loss_history"]["loss"][-1], 4)
        assert float(mean) == round(summary["train_loss"], 4)
        assert float(seconds) == round(summary["seconds"], 1)

    static = rows(text, "Static evaluation")
    multi = json.loads((run_dir / "static" / "metrics.json").read_text())
    single = json.loads((run_dir / "static_backbone" / "metrics.json").read_text())
    for key, label in STATIC_METRICS.items():
        assert [float(v) for v in static[label]] == [round(multi[key], 4), round(single[key], 4)]

    agents = rows(text, "Real-time agents")
    for name in ("alpha_umi_cot", "llmcompiler"):
        summary = json.loads((run_dir / "agents" / name / "summary.json").read_text())
        cells = agents[name]
        assert cells[0] == f"agents/{name}/summary.json"
        assert int(cells[3]) == summary["run"] and int(cells[4]) == summary["answered"]
        assert float(cells[5]) == 50.0
        assert float(cells[8]) == round(summary["llm_calls"] / summary["run"], 1)
        assert float(cells[9]) == round(summary["tool_calls"] / summary["run"], 1)
        assert float(cells[10]) == round(summary["seconds"] / summary["run"], 1)
    # the references' win rate (wins over all queries) and the tie rate, from the counts
    assert agents["llmcompiler"][6:8] == ["25.0", "50.0"]
    assert agents["alpha_umi_cot"][6:8] == ["–", "–"]
    assert "Answer set `ref`: pass rate 75.0 %." in text  # the reference of the win rates


def test_a_run_without_parts_says_so_and_a_broken_file_is_named(tmp_path: Path, capsys) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    assert main([str(root)]) == 0
    text = (root / "REPORT.md").read_text()
    assert "no training in this run" in text and "no real-time agent ran" in text
    (root / "agents" / "x").mkdir(parents=True)
    (root / "agents" / "x" / "summary.json").write_text("{not json")
    assert main([str(root)]) == 2
    assert "agents/x/summary.json: cannot read it" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 2
