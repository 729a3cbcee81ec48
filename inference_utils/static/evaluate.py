"""``python -m inference_utils.static.evaluate``: α-UMi's static metrics for predictions.

Writes ``metrics.json`` (α-UMi's seven numbers, so existing tooling reads it), and beside it
``hallu_cases.json`` (the steps naming a function that does not exist, as α-UMi writes them),
``metrics_by_plan.json`` (the same metrics per gold plan, and what each plan was predicted
as), ``metrics_per_step.json`` and ``metrics.md`` (a table).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from inference_utils.static.metrics import evaluate, markdown_table
from process_data.jsonio import write_json_atomic


def load_predictions(path: Path) -> list[dict]:
    """A ``predictions.json`` array or a ``predictions.jsonl`` file."""
    with open(path, encoding="utf-8") as fh:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in fh if line.strip()]
        return json.load(fh)


def sibling(metrics_path: Path, name: str) -> Path:
    """α-UMi names the other outputs by replacing ``metrics.json`` in the metrics path."""
    if metrics_path.name.endswith("metrics.json"):
        return metrics_path.with_name(metrics_path.name.replace("metrics.json", name))
    return metrics_path.with_name(f"{metrics_path.stem}.{name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference_utils.static.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--input_path",
        required=True,
        type=Path,
        help="predictions.json (α-UMi's format) or predictions.jsonl",
    )
    parser.add_argument("--output_path", required=True, type=Path, help="metrics.json")
    args = parser.parse_args(argv)
    try:
        records = load_predictions(args.input_path)
    except (OSError, json.JSONDecodeError) as exc:
        print(f"evaluate: {args.input_path}: {exc}", file=sys.stderr)
        return 1
    for k, record in enumerate(records):
        missing = [key for key in ("reference", "predictions") if key not in record]
        if missing:
            print(
                f"evaluate: {args.input_path}: record {k} has no {', '.join(missing)}",
                file=sys.stderr,
            )
            return 1
    result = evaluate(records)
    out = args.output_path
    write_json_atomic(out, result.metrics)
    write_json_atomic(sibling(out, "hallu_cases.json"), [records[i] for i in result.hallucinated])
    write_json_atomic(sibling(out, "metrics_by_plan.json"), result.by_plan)
    write_json_atomic(sibling(out, "metrics_per_step.json"), result.per_step())
    table = markdown_table(result.metrics, result.by_plan)
    sibling(out, "metrics.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
