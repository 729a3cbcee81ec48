#!/usr/bin/env bash
# GLPFT, both stages: the backbone on all backbone data (stage 1), then the planner, the caller
# and the summarizer, each from the backbone on its own data (stage 2).
#
#   scripts/train_glpft.sh --data outputs/demo/data --out outputs/glpft [options] [-- flags]
#
#   --base MODEL        base model: path, hub id or alias (default: smollm2-135m)
#   --data DIR          process_data output (train_<role>.json, or .jsonl in chat format)
#   --out DIR           output folder: DIR/backbone, DIR/planner, DIR/caller, DIR/summarizer
#   --nproc N           processes per node (default: the GPU count on CUDA, else 1)
#   --nnodes N  --node_rank R  --master_addr ADDR  --master_port PORT   (multi-node torchrun)
#   --ds1 CONFIG        DeepSpeed config for stage 1 (CUDA default: ds_configs/zero3.json)
#   --ds2 CONFIG        DeepSpeed config for stage 2 (CUDA default: zero3, zero2 with --lora)
#   --no_ds             no DeepSpeed in either stage
#   --batch N           per-device batch (CUDA default: 6)
#   --grad_accum N      gradient accumulation (default on CUDA: what keeps α-UMi's 48 samples
#                       per optimizer step over all processes)
#   --no_bf16           no bf16 on CUDA
#   --no_checkpointing  no activation (gradient) checkpointing on CUDA
#   --lora R            stage 2 as LoRA adapters of rank R on the backbone (default: full)
#   --roles "A B"       stage-2 roles (default: "planner caller summarizer")
#   --skip_stage1       reuse an existing DIR/backbone
#   --device D          cuda, cpu or auto (default): which defaults apply; it changes only the
#                       flags chosen here, not where torch runs
#   --dry_run           print the commands, run nothing
#   -- FLAGS            passed to every GLPFT.train call (e.g. --max_steps 10); they win over
#                       this script's own flags, which are then left out
#
# The hyperparameters default to α-UMi's (scripts/train_toolbench.sh there): stage 1 two
# epochs at 5e-5, stage 2 one epoch at 1e-5 (two for the summarizer; 2e-4 with LoRA), cosine
# schedule, 48 samples per optimizer step (8 GPUs × 6).
#
# On CUDA the defaults are sized for a 7B model at 4096 tokens on 80 GB GPUs, 8 of them as in
# α-UMi (4 or more work; fewer need ds_configs/zero3_offload.json for a full 7B):
# - bf16, and activation (gradient) checkpointing: only each layer's input is kept
#   (4096 × 4096 × 2 B = 32 MiB per sample per layer, 1 GiB for 32 layers), and one layer is
#   recomputed at a time (about 0.6 GiB per sample with a memory-efficient attention kernel).
# - ZeRO-3 for full weights (stage 1, and stage 2 without --lora; α-UMi's stage 2 had no
#   DeepSpeed at all): weights, gradients and Adam states take 16 B per parameter, 107 GB
#   for 7B, more than one GPU holds; sharded over 8 GPUs that is 13.4 GB each, plus about
#   4 GB of gathered layers and communication buckets.
# - ZeRO-2 for LoRA: the frozen bf16 base (13.4 GB) fits on every GPU whole, the adapters'
#   gradients and optimizer states are megabytes; ZeRO-3 would gather every layer's weights
#   in each forward, backward and recompute to save memory nobody needs.
# - batch 6 per GPU (α-UMi's, which padded every sample to 4096 tokens): 6 GiB of checkpoints,
#   about 4 GiB for the recomputed layer and at most 8 GiB of fp32 logits for trained
#   positions (the LM head runs only there): under 40 GB with the sharded states, half an
#   80 GB GPU, leaving room for allocator fragmentation and longer-than-usual batches.
set -euo pipefail
cd "$(dirname "$0")/.."

base=smollm2-135m data="" out=outputs/glpft nproc="" nnodes=1 node_rank=0
master_addr=127.0.0.1 master_port=29511 ds1=unset ds2=unset lora=0 skip1=0
batch="" grad_accum="" bf16=unset ckpt=unset device=auto dry_run=0
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
    --no_ds) ds1="" ds2=""; shift ;;
    --batch) batch=$2; shift 2 ;;
    --grad_accum) grad_accum=$2; shift 2 ;;
    --no_bf16) bf16=0; shift ;;
    --no_checkpointing) ckpt=0; shift ;;
    --lora) lora=$2; shift 2 ;;
    --roles) roles=$2; shift 2 ;;
    --skip_stage1) skip1=1; shift ;;
    --device) device=$2; shift 2 ;;
    --dry_run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "train_glpft.sh: unknown option $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
[ -n "$data" ] || { echo "train_glpft.sh: --data DIR is required" >&2; exit 2; }
case "$device" in
  auto | cuda | cpu) ;;
  *) echo "train_glpft.sh: --device must be cuda, cpu or auto, not $device" >&2; exit 2 ;;
esac

py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python

gpus=0  # asked only where a default needs it (importing torch takes seconds)
if [ "$device" = auto ] || { [ "$device" = cuda ] && [ -z "$nproc" ]; }; then
  gpus=$("$py" -c 'import torch; print(torch.cuda.is_available() and torch.cuda.device_count())')
  [ "$gpus" = False ] && gpus=0
fi
if [ "$device" = auto ]; then
  device=cpu
  if [ "$gpus" -gt 0 ]; then device=cuda; fi
fi

# The GLPFT.train flags given after --, by name (--name, --name=value); a user flag replaces
# this script's flag of the same name, or of a conflicting one (fp16 / bf16, fsdp / deepspeed,
# α-UMi's names warmup_ratio and gradient_checkpointing / the current ones).
user_flags=" "
for arg in "${extra[@]}"; do
  case "$arg" in
    --*) name=${arg%%=*}; user_flags+="$name " ;;
  esac
done
given() {  # given NAME...: whether the user passed any of these flags after --
  local name
  for name in "$@"; do
    [[ "$user_flags" == *" $name "* ]] && return 0
  done
  return 1
}
user_value() {  # user_value NAME: the value the user gave NAME after -- (the last one)
  local k value=""
  for ((k = 0; k < ${#extra[@]}; k++)); do
    case "${extra[k]}" in
      "$1") value=${extra[k + 1]:-} ;;
      "$1="*) value=${extra[k]#*=} ;;
    esac
  done
  echo "$value"
}

if [ "$device" = cuda ]; then
  [ -n "$nproc" ] || nproc=$((gpus > 0 ? gpus : 1))
  [ "$bf16" = unset ] && bf16=1
  [ "$ckpt" = unset ] && ckpt=1
  [ "$ds1" = unset ] && ds1=ds_configs/zero3.json
  if [ "$ds2" = unset ]; then
    ds2=ds_configs/zero3.json
    [ "$lora" -gt 0 ] && ds2=ds_configs/zero2.json
  fi
  [ -n "$batch" ] || batch=6
else  # today's CPU behaviour: only what is asked for
  [ -n "$nproc" ] || nproc=1
  [ "$bf16" = unset ] && bf16=0
  [ "$ckpt" = unset ] && ckpt=0
  [ "$ds1" = unset ] && ds1=""
  [ "$ds2" = unset ] && ds2=""
fi
given --per_device_train_batch_size && batch=$(user_value --per_device_train_batch_size)
given --gradient_accumulation_steps && grad_accum=$(user_value --gradient_accumulation_steps)
world=$((nproc * nnodes))
if [ "$device" = cuda ] && [ -z "$grad_accum" ]; then  # α-UMi's 48 samples a step, rounded
  grad_accum=$(((48 + batch * world / 2) / (batch * world)))
  [ "$grad_accum" -ge 1 ] || grad_accum=1
fi
on() { if [ "$1" = 1 ]; then echo on; else echo off; fi; }
summary="device=$device, nproc=$nproc, bf16=$(on "$bf16"), ds1=${ds1:-none}, ds2=${ds2:-none}"
summary+=", activation_checkpointing=$(on "$ckpt"), batch=${batch:-GLPFT.train default}"
summary+=", grad_accum=${grad_accum:-GLPFT.train default}"
if [ -n "$batch" ]; then
  samples=$((batch * ${grad_accum:-1} * world))
  summary+=" (${batch}×${grad_accum:-1}×$world = $samples samples a step)"
fi
echo "train_glpft.sh defaults: $summary; each overridable by --device, --nproc, --no_bf16," \
  "--ds1/--ds2/--no_ds, --no_checkpointing, --batch, --grad_accum, or its GLPFT.train flag" \
  "after --" >&2

common=()  # this script's flags for every stage, unless the user gave their own after --
[ "$bf16" = 1 ] && ! given --bf16 --fp16 && common+=(--bf16)
# (--gradient_checkpointing is transformers' deprecated name, ignored when the new one is given)
[ "$ckpt" = 1 ] && ! given --activation_checkpointing --gradient_checkpointing &&
  common+=(--activation_checkpointing True)
[ -n "$batch" ] && ! given --per_device_train_batch_size &&
  common+=(--per_device_train_batch_size "$batch")
[ -n "$grad_accum" ] && ! given --gradient_accumulation_steps &&
  common+=(--gradient_accumulation_steps "$grad_accum")

own() {  # own NAME VALUE ...: the pairs whose NAME the user did not give after --
  local flags=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --warmup_ratio | --warmup_steps)
        given --warmup_ratio --warmup_steps || flags+=("$1" "$2") ;;
      --deepspeed) given --deepspeed --fsdp || flags+=("$1" "$2") ;;
      *) given "$1" || flags+=("$1" "$2") ;;
    esac
    shift 2
  done
  [ ${#flags[@]} -eq 0 ] || printf '%s\n' "${flags[@]}"
}

role_file() {  # the role's training file in the data folder, in either format
  local f
  for f in "$data/train_$1.json" "$data/train_$1.jsonl"; do
    [ -f "$f" ] && { echo "$f"; return; }
  done
  if [ "$dry_run" -eq 1 ]; then echo "$data/train_$1.json"; return; fi
  echo "train_glpft.sh: no train_$1.json(l) in $data" >&2
  exit 2
}

launch() {  # launch GLPFT.train-flags...
  local cmd=("$py" -m torch.distributed.run --nproc_per_node "$nproc" --nnodes "$nnodes"
             --node_rank "$node_rank" --master_addr "$master_addr" --master_port "$master_port"
             -m GLPFT.train "$@")
  [ "$nproc" -eq 1 ] && [ "$nnodes" -eq 1 ] && cmd=("$py" -m GLPFT.train "$@")
  echo "+ ${cmd[*]}" >&2
  [ "$dry_run" -eq 1 ] || "${cmd[@]}"
}

# every training file before anything trains (an assignment stops the script on failure)
declare -A files
[ "$skip1" -eq 1 ] || files[backbone]=$(role_file backbone)
for role in $roles; do files[$role]=$(role_file "$role"); done

if [ "$skip1" -eq 0 ]; then
  echo "== GLPFT stage 1: backbone ← $base" >&2
  mapfile -t flags < <(own --model_name_or_path "$base" --data_path "${files[backbone]}" \
    --output_dir "$out/backbone" --num_train_epochs 2 --learning_rate 5e-5 \
    --warmup_ratio 0.4 --lr_scheduler_type cosine --save_strategy steps --save_steps 500 \
    --save_total_limit 2 --logging_steps 2 --model_max_length 4096 \
    ${ds1:+--deepspeed "$ds1"})
  launch "${flags[@]}" "${common[@]}" "${extra[@]}"
fi

for role in $roles; do
  epochs=1; [ "$role" = summarizer ] && epochs=2
  lr=1e-5 lora_flags=() how="full weights"
  if [ "$lora" -gt 0 ]; then  # adapters side by side, all on the one backbone
    lr=2e-4 lora_flags=(--lora_r "$lora") how="LoRA r=$lora"
  fi
  echo "== GLPFT stage 2: $role ← $out/backbone ($how)" >&2
  mapfile -t flags < <(own --model_name_or_path "$out/backbone" \
    --data_path "${files[$role]}" --output_dir "$out/$role" \
    --num_train_epochs "$epochs" --learning_rate "$lr" --weight_decay 0.01 \
    --warmup_ratio 0.2 --lr_scheduler_type cosine --save_strategy steps \
    --save_steps 500 --save_total_limit 2 --logging_steps 2 --model_max_length 4096 \
    ${ds2:+--deepspeed "$ds2"} "${lora_flags[@]}")
  launch "${flags[@]}" "${common[@]}" "${extra[@]}"
done
echo "== GLPFT done: $out/{backbone,${roles// /,}}" >&2
