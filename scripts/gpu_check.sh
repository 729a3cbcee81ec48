#!/usr/bin/env bash
# GLPFT's CUDA paths on one GPU, in about 5 minutes: what the CPU test suite cannot run.
#
#   scripts/gpu_check.sh [OUT_DIR]        (default: a temporary folder)
#
# 1. Padding-free batches (one flat row per batch) against padded batches, with SDPA, eager
#    and flash attention 2 (where the flash-attn package is installed), on the tiny model and
#    SmolLM2-135M: the loss over the trained tokens and the gradient must agree.
# 2. Short GLPFT.train runs of SmolLM2 under torchrun on the one GPU, bf16 throughout: padded
#    and padding-free without DeepSpeed, ZeRO-2, ZeRO-3, and ZeRO-3 with a LoRA adapter merged
#    at the end. Each prints its batching, real (non-padding) tokens/s, peak GPU memory and
#    final loss; the whole table is in OUT_DIR/gpu_check.json.
# It stops at the first failure. Without CUDA it stops at once.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python

if ! "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check.sh: no CUDA device visible to $py (torch.cuda.is_available() is False);" \
    "these checks need a GPU: run the CPU test suite instead (scripts/test.sh)" >&2
  exit 1
fi
out=${1:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
gpu=$("$py" -c 'import torch; print(torch.cuda.get_device_name(), "torch", torch.__version__)')
echo "== gpu_check: $gpu; output in $out" >&2

echo "== data: the bundled ToolBench sample → $out/data" >&2
"$py" -m process_data.toolbench all --data_dir data/toolbench_sample --output_dir "$out/data" \
  >"$out/process_data.log" 2>&1 || [ $? -eq 3 ]  # 3: some sample answers are rejected on purpose

echo "== 1. padding-free vs padded: loss and gradient" >&2
timeout 240 "$py" - "$out/data/train_planner.json" <<'EOF'
import json, sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import is_flash_attn_2_available

from GLPFT.collate import FlatCollator, PadCollator
from GLPFT.data import tokenize_record
from GLPFT.models import SMOLLM2, TINY_LLAMA, resolve_model
from GLPFT.trainer import sparse_lm_loss

records = json.load(open(sys.argv[1]))[:4]
attns = ["sdpa", "eager"] + (["flash_attention_2"] if is_flash_attn_2_available() else [])
if "flash_attention_2" not in attns:
    print("   (flash-attn is not installed: flash attention 2 is not checked)")
for name in (TINY_LLAMA, SMOLLM2):
    path = resolve_model(name)
    tok = AutoTokenizer.from_pretrained(path)
    feats = []
    for k, r in enumerate(records):
        t = tokenize_record(r, tok, 1024, f"planner#{k}")
        feats.append({"input_ids": t.input_ids, "labels": t.labels})
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batches = {"padded": PadCollator(pad)(feats), "flat": FlatCollator(pad)(feats)}
    for attn in attns:
        # flash attention runs in half precision only; the others in fp32, to compare tightly
        dtype = torch.bfloat16 if attn.startswith("flash") else torch.float32
        result = {}
        for kind, batch in batches.items():
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation=attn
            ).cuda()
            model.train()
            batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
            loss, count, _ = sparse_lm_loss(model, batch)
            (loss / count).backward()
            grad = torch.cat([p.grad.float().flatten() for p in model.parameters()])
            result[kind] = (float(loss.detach() / count), count, grad)
        (lp, np_, gp), (lf, nf, gf) = result["padded"], result["flat"]
        rel_loss = abs(lp - lf) / abs(lp)
        rel_grad = float((gp - gf).norm() / gp.norm())
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
        status = "ok" if np_ == nf and rel_loss < tol and rel_grad < 10 * tol else "FAILED"
        print(f"   {name:18} {attn:18} loss {lp:.5f} vs {lf:.5f} (rel {rel_loss:.1e}), "
              f"gradient rel {rel_grad:.1e}, {nf} trained tokens: {status}")
        if status != "ok":
            sys.exit(1)
EOF

echo "== 2. training runs on one GPU (SmolLM2-135M, bf16)" >&2
cat >"$out/probe.py" <<'EOF'
"""GLPFT.train with a record of real tokens/s, peak GPU memory and the final loss."""
import json, sys, time
from pathlib import Path

import torch
from transformers import TrainerCallback

from GLPFT.train import parse_args, train


class Figures(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        seconds = time.perf_counter() - self.start
        self.figures = {
            "tokens_per_s": round(state.num_input_tokens_seen / seconds),
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
            "seconds": round(seconds, 1),
        }


model_args, data_args, train_args = parse_args(sys.argv[2:])
# real tokens: the attention mask's, or (flat rows, no mask) those that are not the pad token,
# which undercounts flat rows by the EOS tokens where the tokenizer pads with EOS
train_args.include_num_input_tokens_seen = "non_padding"
figures = Figures()
summary = train(model_args, data_args, train_args, callbacks=[figures])
if train_args.process_index == 0:
    row = {"run": sys.argv[1], "batching": summary["batching"],
           "attention": summary["attn_implementation"], **figures.figures,
           "final_loss": summary["loss_history"]["loss"][-1]}
    print("   " + ", ".join(f"{k}={v}" for k, v in row.items()), file=sys.stderr)
    with open(Path(train_args.output_dir).parent / "gpu_check.jsonl", "a") as fh:
        fh.write(json.dumps(row) + "\n")
EOF
rm -f "$out/runs/gpu_check.jsonl"
run() {  # run NAME GLPFT.train-flags...
  local name=$1
  shift
  echo "-- $name" >&2
  timeout 150 "$py" -m torch.distributed.run --nproc_per_node 1 --master_port 29533 \
    "$out/probe.py" "$name" --model_name_or_path smollm2-135m \
    --data_path "$out/data/train_backbone.json" --output_dir "$out/runs/$name" \
    --max_steps 20 --per_device_train_batch_size 4 --model_max_length 2048 --bf16 \
    --learning_rate 1e-4 --logging_steps 5 --save_strategy no --report_to none \
    --disable_tqdm True "$@" \
    >"$out/$name.log" 2>&1 || {
    tail -40 "$out/$name.log" >&2
    echo "gpu_check: $name FAILED (log: $out/$name.log)" >&2
    exit 1
  }
  grep -E '^GLPFT:' "$out/$name.log" | sed 's/^/   /' >&2
  grep -E '^   run=' "$out/$name.log" >&2
}
run padded --padding_free false
run padding_free --padding_free true
run zero2 --deepspeed ds_configs/zero2.json
run zero3 --deepspeed ds_configs/zero3.json --activation_checkpointing True
run zero3_lora --deepspeed ds_configs/zero3.json --lora_r 8 --learning_rate 1e-3 --merge_lora True
"$py" - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
merged = out / "runs" / "zero3_lora" / "merged"
assert (merged / "config.json").is_file(), f"{merged}: no merged model"
rows = [json.loads(line) for line in open(out / "runs" / "gpu_check.jsonl")]
(out / "gpu_check.json").write_text(json.dumps(rows, indent=2) + "\n")
print(f"== gpu_check: all passed; figures in {out / 'gpu_check.json'}", file=sys.stderr)
EOF
