"""``python -m inference_utils.run_report RUN_DIR`` (``umi-report``): one report of a whole
α-UMi run, ``RUN_DIR/REPORT.md`` with its charts beside it.

It reads what the run's commands wrote, wherever a step left it under ``RUN_DIR`` (every part
is optional; a part with nothing to read says so):

* ``phases.json``: ``{"phases": [{"name", "seconds", "status"}, ...]}`` (``scripts/demo.sh``
  writes it);
* ``glpft/<model>/train_summary.json``: each training (GLPFT stage 1 and 2), with its loss
  history;
* ``<folder>/metrics.json`` beside a ``predictions.json``: static evaluations (the folder's
  name labels the column: ``static`` for the multi-LLM roles, ``static_backbone`` for the
  single LLM);
* ``agents/<agent>/summary.json``: real-time agent runs (``run_agent``);
* ``*.summary.json`` under ``tooleval/``: pass rates (by ``model``) and win rates (by
  ``candidate``), matched to the agents by name.

Every figure in the report is the value of the file named beside its table, rounded as
shown, so a report can be rebuilt from the artifacts alone, on the demo's run or on a user's
full-scale one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from inference_utils.tooleval.answer_status import win_rates
from process_data.protocol import ROLES

#: Static metrics as α-UMi's paper names them, from ``metrics.json``'s keys.
STATIC_METRICS = {
    "plan_em": "Plan ACC",
    "action_em": "Act EM",
    "hallu_rate": "Hallu rate",
    "easy_f1": "Arg F1 (easy)",
    "hard_f1": "Arg F1 (hard)",
    "f1": "Arg F1",
    "rouge": "R-L",
}
#: Training order: stage 1 (the backbone), then the roles.
MODELS = ROLES
LOSS_CHART = "training_loss.png"


def _read(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read it: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a JSON object expected")
    return data


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _num(value: object, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def phases(root: Path) -> list[str]:
    path = root / "phases.json"
    if not path.exists():
        return ["No `phases.json`: the phases' times were not recorded."]
    rows = []
    total = 0.0
    for phase in _read(path).get("phases", []):
        total += float(phase.get("seconds", 0.0))
        rows.append([phase["name"], _num(float(phase["seconds"]), 1), phase.get("status", "")])
    rows.append(["**total**", _num(total, 1), ""])
    return [f"From `{_rel(path, root)}`.", "", *_table(["phase", "seconds", "status"], rows)]


def training(root: Path, charts: Path) -> list[str]:
    found = {p.parent.name: p for p in sorted(root.glob("glpft/*/train_summary.json"))}
    if not found:
        return ["No `glpft/*/train_summary.json`: no training in this run."]
    order = [m for m in MODELS if m in found] + [m for m in found if m not in MODELS]
    rows, curves = [], {}
    for name in order:
        summary = _read(found[name])
        history = summary.get("loss_history") or {}
        curves[name] = (history.get("steps") or [], history.get("loss") or [])
        losses = curves[name][1]
        rows.append(
            [
                name,
                _rel(found[name], root),
                _num(summary.get("samples")),
                _num(summary.get("steps")),
                _num(losses[0] if losses else None, 4),
                _num(losses[-1] if losses else None, 4),
                _num(summary.get("train_loss"), 4),
                _num(summary.get("seconds"), 1),
            ]
        )
    header = ["model", "file", "samples", "steps", "first loss", "last loss", "mean loss", "s"]
    lines = _table(header, rows)
    if any(steps for steps, _ in curves.values()):
        loss_chart(curves, charts / LOSS_CHART)
        lines += ["", f"![training loss]({LOSS_CHART})"]
    return lines


def loss_chart(curves: dict[str, tuple[list, list]], path: Path) -> None:
    """One line per training: its loss (``curves[name] = (steps, losses)``) over its steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    for name, (steps, losses) in curves.items():
        if steps:
            ax.plot(steps, losses, marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def static(root: Path) -> list[str]:
    found = sorted(
        p for p in root.rglob("metrics.json") if (p.parent / "predictions.json").exists()
    )
    if not found:
        return ["No static evaluation (`metrics.json` beside `predictions.json`)."]
    columns = [(_rel(p.parent, root), _read(p), _rel(p, root)) for p in found]
    rows = [
        [label, *(_num(metrics.get(key), 4) for _, metrics, _ in columns)]
        for key, label in STATIC_METRICS.items()
    ]
    header = ["metric", *(f"{name} (`{file}`)" for name, _, file in columns)]
    return _table(header, rows)


def _tooleval(root: Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """Pass-rate and win-rate summaries under ``tooleval/``, by answer set, with their file."""
    passes: dict[str, dict] = {}
    wins: dict[str, dict] = {}
    for path in sorted(root.glob("tooleval/**/*.summary.json")):
        summary = _read(path)
        summary["_file"] = _rel(path, root)
        if "pass_rate" in summary:
            passes[str(summary.get("model"))] = summary
        elif "win_rate" in summary:
            wins[str(summary.get("candidate"))] = summary
    return passes, wins


def agents(root: Path) -> list[str]:
    found = sorted(root.glob("agents/*/summary.json"))
    if not found:
        return ["No `agents/*/summary.json`: no real-time agent ran."]
    passes, wins = _tooleval(root)
    rows = []
    for path in found:
        name, summary = path.parent.name, _read(path)
        n = summary.get("run") or summary.get("queries") or 0
        per = {k: summary[k] / n if n else None for k in ("llm_calls", "tool_calls", "seconds")}
        passed, won = passes.get(name), wins.get(name)
        rates = win_rates(won["wins"], won["ties"], won["queries"]) if won else None
        rows.append(
            [
                name,
                _rel(path, root),
                str(summary.get("agent", "alpha_umi")),
                str(summary.get("method", "")),
                _num(n),
                _num(summary.get("answered")),
                _num(passed["pass_rate"], 1) if passed else "–",
                _num(rates["win_rate"], 1) if rates else "–",
                _num(rates["tie_rate"], 1) if rates else "–",
                _num(per["llm_calls"], 1),
                _num(per["tool_calls"], 1),
                _num(per["seconds"], 1),
            ]
        )
    header = [
        "agent", "file", "design", "method", "queries", "answered", "pass rate %",
        "win rate %", "tie rate %", "LLM calls/query", "tool calls/query", "s/query",
    ]  # fmt: skip
    lines = _table(header, rows)
    named = {path.parent.name for path in found}
    for name, summary in passes.items():  # the reference, say: answer sets of no agent here
        if name not in named:
            lines += ["", f"Answer set `{name}`: pass rate {_num(summary['pass_rate'], 1)} %."]
    used = [s["_file"] for s in [*passes.values(), *wins.values()]]
    if used:
        lines += ["", "Pass and win rates from " + ", ".join(f"`{f}`" for f in used) + "."]
    return lines


def artifacts(root: Path) -> list[str]:
    lines = []
    for name, what in (
        ("data", "training sets (α-UMi format), rejects report, summary"),
        ("data_chat", "the same in chat format"),
        ("glpft", "the trained models (backbone; planner, caller, summarizer adapters)"),
        ("static", "the multi-LLM static evaluation: predictions, metrics"),
        ("static_backbone", "the single-LLM static evaluation"),
        ("agents", "each agent's ToolBench answer files and summary.json"),
        ("tooleval", "converted answers, pass and win rates, verdict caches"),
    ):
        if (root / name).exists():
            lines.append(f"- `{name}/`: {what}")
    return lines or ["Nothing under this folder."]


def build(root: Path, charts: Path | None = None) -> str:
    """The report of the run under ``root`` as markdown; its charts are written to
    ``charts`` (default: ``root``), the folder the report goes to."""
    charts = charts or root
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    parts = [
        f"# Run report: `{root}`",
        "",
        "## Phases",
        "",
        *phases(root),
        "",
        "## Training (GLPFT)",
        "",
        *training(root, charts),
        "",
        "## Static evaluation (α-UMi's step-level metrics)",
        "",
        *static(root),
        "",
        "## Real-time agents",
        "",
        *agents(root),
        "",
        "## Artifacts",
        "",
        *artifacts(root),
        "",
        "## Rebuild",
        "",
        f"`umi-report {root}` (or `python -m inference_utils.run_report {root}`) writes this "
        "report again from the files above.",
    ]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="umi-report", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--output", type=Path, help="default: RUN_DIR/REPORT.md")
    args = p.parse_args(argv)
    output = args.output or args.run_dir / "REPORT.md"
    if not args.run_dir.is_dir():
        print(f"umi-report: {args.run_dir}: not a folder", file=sys.stderr)
        return 2
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        text = build(args.run_dir, output.parent)
        output.write_text(text, encoding="utf-8")
    except (OSError, ValueError) as exc:
        print(f"umi-report: {exc}", file=sys.stderr)
        return 2
    print(output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
