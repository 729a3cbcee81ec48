#!/usr/bin/env bash
# GLPFT, both stages: the backbone on all backbone data (stage 1), then the planner, the caller
# and the summarizer, each from the backbone on its own data (stage 2).
#
#   scripts/train_glpft.sh --data outputs/demo/data --out outputs/glpft [options] [-- flags]
#
#   --base MODEL        base model: path, hub id or alias (default: smollm2-135m)
#   --data DIR          process_data output (train_<role>.json, or .jsonl in chat format)
#   --out DIR           output folder: DIR/backbone, DIR/planner, DIR/caller, DIR/summarizer
#   --nproc N           processes per node (default 1)
#   --nnodes N  --node_rank R  --master_addr ADDR  --master_port PORT   (multi-node torchrun)
#   --ds1 CONFIG        DeepSpeed config for stage 1 (e.g. ds_configs/zero3.json)
#   --ds2 CONFIG        DeepSpeed config for stage 2
#   --lora R            stage 2 as LoRA adapters of rank R on the backbone (default: full)
#   --roles "A B"       stage-2 roles (default: "planner caller summarizer")
#   --skip_stage1       reuse an existing DIR/backbone
#   -- FLAGS            passed to every GLPFT.train call (e.g. --max_steps 10 --bf16)
#
# The hyperparameters default to α-UMi's (scripts/train_toolbench.sh there): stage 1 two
# epochs at 5e-5, stage 2 one epoch at 1e-5 (two for the summarizer; 2e-4 with LoRA), cosine
# schedule. Flags after -- override them.
set -euo pipefail
cd "$(dirname "$0")/.."

base=smollm2-135m data="" out=outputs/glpft nproc=1 nnodes=1 node_rank=0
master_addr=127.0.0.1 master_port=29511 ds1="" ds2="" lora=0 skip1=0
roles="planner caller summarizer"
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --nproc) nproc=$2; shift 2 ;;
    --nnodes) nnodes=$2; shift 2 ;;
    --node_rank) node_rank=$2; shift 2 ;;
    --master_addr) master_addr=$2; shift 2 ;;
    --master_port) master_port=$2; shift 2 ;;
    --ds1) ds1=$2; shift 2 ;;
    --ds2) ds2=$2; shift 2 ;;
    --lora) lora=$2; shift 2 ;;
    --roles) roles=$2; shift 2 ;;
    --skip_stage1) skip1=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "train_glpft.sh: unknown option $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
[ -n "$data" ] || { echo "train_glpft.sh: --data DIR is required" >&2; exit 2; }

py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python

role_file() {  # the role's training file in the data folder, in either format
  local f
  for f in "$data/train_$1.json" "$data/train_$1.jsonl"; do
    [ -f "$f" ] && { echo "$f"; return; }
  done
  echo "train_glpft.sh: no train_$1.json(l) in $data" >&2
  exit 2
}

launch() {  # launch OUTPUT_DIR GLPFT.train-flags...
  local cmd=("$py" -m torch.distributed.run --nproc_per_node "$nproc" --nnodes "$nnodes"
             --node_rank "$node_rank" --master_addr "$master_addr" --master_port "$master_port"
             -m GLPFT.train "$@")
  [ "$nproc" -eq 1 ] && [ "$nnodes" -eq 1 ] && cmd=("$py" -m GLPFT.train "$@")
  echo "+ ${cmd[*]}" >&2
  "${cmd[@]}"
}

if [ "$skip1" -eq 0 ]; then
  echo "== GLPFT stage 1: backbone ← $base" >&2
  launch --model_name_or_path "$base" --data_path "$(role_file backbone)" \
    --output_dir "$out/backbone" --num_train_epochs 2 --learning_rate 5e-5 \
    --warmup_ratio 0.4 --lr_scheduler_type cosine --save_strategy steps --save_steps 500 \
    --save_total_limit 2 --logging_steps 2 --model_max_length 4096 \
    ${ds1:+--deepspeed "$ds1"} "${extra[@]}"
fi

for role in $roles; do
  epochs=1; [ "$role" = summarizer ] && epochs=2
  lr=1e-5 lora_flags=() how="full weights"
  if [ "$lora" -gt 0 ]; then  # adapters side by side, all on the one backbone
    lr=2e-4 lora_flags=(--lora_r "$lora") how="LoRA r=$lora"
  fi
  echo "== GLPFT stage 2: $role ← $out/backbone ($how)" >&2
  launch --model_name_or_path "$out/backbone" --data_path "$(role_file "$role")" \
    --output_dir "$out/$role" --num_train_epochs "$epochs" --learning_rate "$lr" \
    --weight_decay 0.01 --warmup_ratio 0.2 --lr_scheduler_type cosine --save_strategy steps \
    --save_steps 500 --save_total_limit 2 --logging_steps 2 --model_max_length 4096 \
    ${ds2:+--deepspeed "$ds2"} "${lora_flags[@]}" "${extra[@]}"
done
echo "== GLPFT done: $out/{backbone,${roles// /,}}" >&2
