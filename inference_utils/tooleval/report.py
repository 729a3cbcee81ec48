"""``python -m inference_utils.tooleval.report`` (``umi-tooleval-report``): pass rates and win rates
per test group, as a markdown table, a CSV and a bar chart.

    python -m inference_utils.tooleval.report pass/ win/ [more folders] --output report/

Reads the ``*.summary.json`` files that ``pass_rate`` and ``win_rate`` write (folders are
searched recursively). Rows are the answer sets (the ``model`` of a pass rate, the
``candidate`` of a win rate, with the reference named); columns are ToolBench's groups
(G1-inst, G1-cat, G1-tool, G2-inst, G2-cat, G3-inst) and their average over the groups present.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from inference_utils.tooleval.answer_status import win_rates

GROUPS = {
    "G1_instruction": "G1-inst",
    "G1_category": "G1-cat",
    "G1_tool": "G1-tool",
    "G2_instruction": "G2-inst",
    "G2_category": "G2-cat",
    "G3_instruction": "G3-inst",
}
AVERAGE = "Average"


def collect(folders: Sequence[Path]) -> tuple[dict, dict]:
    """``(pass_rates, win_rates)``: ``{row: {group: summary}}``."""
    passes: dict[str, dict] = {}
    wins: dict[str, dict] = {}
    for folder in folders:
        if not folder.exists():
            raise FileNotFoundError(f"{folder}: no such folder")
        for path in sorted(folder.rglob("*.summary.json")):
            with open(path, encoding="utf-8") as fh:
                summary = json.load(fh)
            group = summary.get("test_set")
            if group not in GROUPS:
                continue
            if "pass_rate" in summary:
                passes.setdefault(f"{summary['model']} ({summary['mode']})", {})[group] = summary
            elif "win_rate" in summary:
                row = f"{summary['candidate']} vs {summary['reference']}"
                wins.setdefault(row, {})[group] = win_figures(summary)
    return passes, wins


def win_figures(summary: dict) -> dict:
    """A win-rate summary with its three rates computed from its counts, so that summaries
    written before the references' win rate became the headline (when ``win_rate`` counted
    ties as half) read the same as new ones."""
    n = summary.get("queries")
    if not isinstance(n, int) or n <= 0 or not all(k in summary for k in ("wins", "ties")):
        return summary
    return {**summary, **win_rates(summary["wins"], summary["ties"], n)}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def table(
    rows: dict[str, dict], value: str, spread: str | None
) -> tuple[list[str], list[list[str]], list[list]]:
    """Header, formatted cells, and raw values of one metric."""
    groups = [g for g in GROUPS if any(g in r for r in rows.values())]
    header = ["", *(GROUPS[g] for g in groups), AVERAGE]
    cells, raw = [], []
    for name, by_group in rows.items():
        line, numbers = [name], []
        for g in groups:
            s = by_group.get(g)
            if s is None:
                line.append("–")
                continue
            numbers.append(s[value])
            line.append(f"{s[value]:.1f}" + (f" ± {s[spread]:.1f}" if spread else ""))
            raw.append([name, value, GROUPS[g], s[value], s.get(spread) if spread else None])
        mean = _mean(numbers)
        line.append("–" if mean is None else f"{mean:.1f}")
        if mean is not None:
            raw.append([name, value, AVERAGE, mean, None])
        cells.append(line)
    return header, cells, raw


#: The win-rate tables: the references' figure first, then what puts it in context.
WIN_TABLES = (
    (
        "win_rate",
        "Win rate (%: queries won / all queries, as ToolBench and StableToolBench count it)",
    ),
    ("tie_rate", "Tie rate (%)"),
    ("win_rate_ties_as_half", "Win rate with ties as half (%: 50 is as good as the reference)"),
)


def markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells])


def answer_set(by_group: dict[str, dict]) -> str:
    """The answers a row is about: its summaries' ``model`` (pass rate) or ``candidate`` (win
    rate)."""
    summary = next(iter(by_group.values()))
    return summary.get("model") or summary["candidate"]


def chart(passes: dict, wins: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (passes, "pass_rate", "std", "pass rate (%)"),
        (wins, "win_rate", None, "win rate (%: won / all; ties stacked, hatched)"),
    ]
    panels = [p for p in panels if p[0]]
    # one colour per answer set, the same in both panels
    sets = list(dict.fromkeys(answer_set(r) for rows, *_ in panels for r in rows.values()))
    colour = {name: f"C{k % 10}" for k, name in enumerate(sets)}
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 4 * len(panels)), squeeze=False)
    for ax, (rows, value, spread, label) in zip(axes[:, 0], panels, strict=True):
        groups = [g for g in GROUPS if any(g in r for r in rows.values())]
        width = 0.8 / max(len(rows), 1)
        for k, (name, by_group) in enumerate(rows.items()):
            xs = [i + k * width for i, g in enumerate(groups) if g in by_group]
            ys = [by_group[g][value] for g in groups if g in by_group]
            errs = [by_group[g][spread] for g in groups if g in by_group] if spread else None
            hue = colour[answer_set(by_group)]
            ax.bar(xs, ys, width, yerr=errs, capsize=3, label=name, color=hue)
            if value == "win_rate":  # the ties on top, so won + tied reads off the bar's top
                ties = [by_group[g].get("tie_rate", 0.0) for g in groups if g in by_group]
                ax.bar(xs, ties, width, bottom=ys, color=hue, alpha=0.35, hatch="//")
        ax.set_xticks(
            [i + 0.4 - width / 2 for i in range(len(groups))], [GROUPS[g] for g in groups]
        )
        ax.set_ylabel(label)
        ax.set_ylim(0, 100)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="umi-tooleval-report", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "folders", nargs="+", type=Path, help="pass-rate and win-rate result folders"
    )
    parser.add_argument("--output", type=Path, default=Path("report"))
    args = parser.parse_args(argv)
    try:
        passes, wins = collect(args.folders)
    except (OSError, ValueError, KeyError) as exc:
        print(f"umi-tooleval-report: {exc}", file=sys.stderr)
        return 1
    if not passes and not wins:
        print("umi-tooleval-report: no pass-rate or win-rate summaries found", file=sys.stderr)
        return 1
    args.output.mkdir(parents=True, exist_ok=True)
    parts, raw = ["# ToolEval report"], []
    if passes:
        header, cells, values = table(passes, "pass_rate", "std")
        parts += ["## Pass rate (%, ± standard deviation over rounds)", markdown(header, cells)]
        raw += values
    if wins:
        for value, title in WIN_TABLES:
            header, cells, values = table(wins, value, None)
            parts += [f"## {title}", markdown(header, cells)]
            raw += values
    (args.output / "report.md").write_text("\n\n".join(parts) + "\n", encoding="utf-8")
    with open(args.output / "report.csv", "w", encoding="utf-8", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["answers", "metric", "group", "value", "std"])
        out.writerows(raw)
    chart(passes, wins, args.output / "report.png")
    print((args.output / "report.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
