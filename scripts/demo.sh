#!/usr/bin/env bash
# Set up the environment (idempotent) and run the main job on the bundled sample:
# ToolBench answers → stage 1 → stage 2 → backbone/planner/caller/summarizer training sets.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=${1:-outputs/demo}
py=.venv/bin/python

echo "== process_data: data/toolbench_sample → $out/data (α-UMi format)"
# exit code 3 means "partial": the sample deliberately holds an invalid answer, which is
# reported in $out/data/rejects.jsonl rather than converted
$py -m process_data.toolbench all --data_dir data/toolbench_sample --output_dir "$out/data" \
  --num_workers 2 || [ $? -eq 3 ]
echo "== process_data: the same in chat format → $out/data_chat"
$py -m process_data.toolbench all --data_dir data/toolbench_sample --output_dir "$out/data_chat" \
  --format chat --num_workers 2 || [ $? -eq 3 ]
echo "== done: $out/data/summary.json"
