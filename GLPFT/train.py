"""GLPFT: one training recipe for the backbone (stage 1) and each role (stage 2).

    torchrun --nproc_per_node=8 -m GLPFT.train --model_name_or_path BASE \\
        --data_path data/train_backbone.json --output_dir ckpt/backbone \\
        --deepspeed ds_configs/zero3.json --bf16 ...                         # stage 1
    torchrun --nproc_per_node=8 -m GLPFT.train --model_name_or_path ckpt/backbone \\
        --data_path data/train_planner.json --output_dir ckpt/planner ...   # stage 2, per role

The role is a setting of the data, not of the code: the same recipe trains every stage. Every
flag of α-UMi's ``train_mem.py`` command lines is accepted as it is, and ``--config x.yaml``
supplies defaults that command-line flags override.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import HfArgumentParser, TrainerCallback

from GLPFT.collate import FlatCollator, PackedCollator, PadCollator
from GLPFT.data import DataStats, build_dataset, cpu_count, int_column, pack_dataset
from GLPFT.models import resolve_model
from GLPFT.trainer import GLPFTTrainer, RowByRowTrainer
from process_data.exits import describe_exit


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="smollm2-135m",
        metadata={"help": "a path, a hub id, or an alias: smollm2-135m, tiny-random-llama"},
    )
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 trains all weights"})
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str = field(
        default="q_proj,v_proj", metadata={"help": "comma-separated module names, or all-linear"}
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "also write the merged weights to OUTPUT_DIR/merged"}
    )
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, eager"})


@dataclass
class DataArguments:
    data_path: str = field(
        default=None, metadata={"help": "comma-separated .json (α-UMi) / .jsonl (chat) files"}
    )
    lazy_preprocess: bool = field(
        default=False, metadata={"help": "accepted for α-UMi; tokenization is cached anyway"}
    )
    max_num_sample_per_data: int = field(default=0, metadata={"help": "samples per file; 0: all"})
    max_num_sample_ratio: float = field(default=0.0, metadata={"help": "share per file; 0: all"})
    packing: bool = field(default=False, metadata={"help": "best-fit packing with position_ids"})
    preprocessing_num_workers: int | None = None


def _auto_switch(help: str) -> Any:
    """A flag taking ``auto`` (decided from the run's setup, the default), ``true`` or
    ``false``."""
    return field(default="auto", metadata={"help": help, "choices": ["auto", "true", "false"]})


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    model_max_length: int = field(
        default=4096, metadata={"help": "longer samples lose the start of their prompt"}
    )
    source_model_max_length: int = field(
        default=0, metadata={"help": "α-UMi's RoPE condensing; only 0 (off) is supported"}
    )
    cache_dir: str | None = None
    optim: str = "adamw_torch"
    remove_unused_columns: bool = False
    row_by_row: str = _auto_switch(
        "train each row of a padded batch on its own, unpadded and mask-free (faster and "
        "lighter where batching buys little); auto: on CPU without DeepSpeed or FSDP"
    )
    padding_free: str = _auto_switch(
        "flatten each batch into one row (position ids restarting per sample, no padding, no "
        "attention mask); auto: on CUDA with a flash attention kernel, unless --packing or "
        "--row_by_row true"
    )
    sparse_lm_head: bool = field(
        default=True,
        metadata={"help": "run the LM head and the loss only where a token is trained"},
    )
    train_sampling_strategy: str | None = field(
        default=None,
        metadata={
            "help": "random, sequential, group_by_length or batch_rebalance; "
            "default: group_by_length (batches of similar lengths need less padding)",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )

    def on_cuda(self) -> bool:
        return not self.use_cpu and torch.cuda.is_available()

    def use_row_by_row(self) -> bool:
        if self.row_by_row != "auto":
            return self.row_by_row == "true"
        return not self.on_cuda() and not (self.deepspeed or self.fsdp)


#: α-UMi flags renamed since transformers 4.28, and their current names
#: (``--warmup_steps`` now takes a float in [0, 1) as a ratio of the total steps).
RENAMED_FLAGS = {"--evaluation_strategy": "--eval_strategy", "--warmup_ratio": "--warmup_steps"}


def _translate(argv: Sequence[str]) -> list[str]:
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out.append(RENAMED_FLAGS.get(name, name) + eq + value)
    return out


def parse_args(
    argv: Sequence[str] | None = None,
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Command line (α-UMi's flags included) over ``--config`` YAML over the defaults."""
    argv = _translate(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    # Without CUDA, DDP over gloo (and bf16 autocast) need use_cpu; without it every rank
    # would silently train a model of its own.
    parser.set_defaults(use_cpu=not torch.cuda.is_available())
    if "--config" in argv:
        k = argv.index("--config")
        config, argv = argv[k + 1], argv[:k] + argv[k + 2 :]
        import yaml

        with open(config, encoding="utf-8") as fh:
            defaults = yaml.safe_load(fh) or {}
        parser.set_defaults(**defaults)
        if "output_dir" in defaults and "--output_dir" not in argv:
            argv += ["--output_dir", str(defaults["output_dir"])]
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    if data_args.data_path is None:
        parser.error("--data_path is required")
    if train_args.source_model_max_length:
        parser.error("--source_model_max_length (RoPE condensing) is not supported; use 0")
    if data_args.packing and train_args.padding_free == "true":
        parser.error("--packing and --padding_free true both flatten samples: choose one")
    return model_args, data_args, train_args


def _distributed_defaults(args: TrainingArguments) -> None:
    if args.use_cpu and args.ddp_backend is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        args.ddp_backend = "gloo"
    if args.deepspeed and args.use_cpu:
        # The Trainer sets up torch.distributed (gloo) but not DeepSpeed's own communication
        # layer on CPU; ZeRO-3's model construction needs it before the model is loaded.
        import deepspeed

        _ = args.device  # initialises torch.distributed
        deepspeed.init_distributed(dist_backend="gloo")
    if args.train_sampling_strategy is None:  # not given on the command line or in --config
        args.train_sampling_strategy = "group_by_length"


#: flash attention 2 (the ``flash-attn`` package): variable-length attention for flat rows
FLASH_ATTENTION = "flash_attention_2"


def choose_batching(
    model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments
) -> tuple[str, str | None]:
    """How batches are made (packed, padding-free, row-by-row or padded), and the attention
    implementation to ask for (None: the model's default, SDPA).

    Padding-free rows pay off only with a variable-length kernel: SDPA and eager attention run
    on the whole flat row with a block-diagonal mask, which costs the square of the row's
    length (several samples) where a padded batch of similar lengths costs about the sum of
    each sample's square. So ``auto`` flattens on CUDA when flash attention is asked for, or
    is installed and the weights are half precision (the kernel needs fp16/bf16).
    """
    attn = model_args.attn_implementation
    if data_args.packing:
        return "packed", attn
    if args.padding_free == "auto":
        from transformers.utils import is_flash_attn_2_available

        if args.on_cuda() and args.row_by_row != "true":
            if attn is None and (args.bf16 or args.fp16) and is_flash_attn_2_available():
                attn = FLASH_ATTENTION
            if attn is not None and "flash" in attn:
                return "padding-free", attn
    elif args.padding_free == "true":
        return "padding-free", attn
    return ("row-by-row" if args.use_row_by_row() else "padded"), attn


def save_merged(
    base_path: str, adapter_dir: Path, dest: Path, tokenizer: Any, args: TrainingArguments
) -> None:
    """Write base + the saved adapter, merged, to ``dest``; call it on one process.

    Merging from the files (after ``save_model``) rather than from the trained model works the
    same under ZeRO-3, where every rank holds only a shard of each weight (peft's merge sees
    empty tensors) and a gather would need every rank. The merge runs in fp32, so that the
    small LoRA update is not rounded away before it is added; the result keeps the base's
    stored dtype.
    """
    from transformers.integrations.deepspeed import (
        is_deepspeed_zero3_enabled,
        set_hf_deepspeed_config,
        unset_hf_deepspeed_config,
    )

    # Under ZeRO-3 (still set up for this process), from_pretrained would partition the
    # weights across the ranks: a collective call that the other ranks are not part of.
    hf_deepspeed_config = args.hf_deepspeed_config if is_deepspeed_zero3_enabled() else None
    if hf_deepspeed_config is not None:
        unset_hf_deepspeed_config()
    try:
        _merge(base_path, adapter_dir, dest, tokenizer)
    finally:
        if hf_deepspeed_config is not None:
            set_hf_deepspeed_config(hf_deepspeed_config)


def _merge(base_path: str, adapter_dir: Path, dest: Path, tokenizer: Any) -> None:
    from peft import PeftModel

    config = transformers.AutoConfig.from_pretrained(base_path)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    stored = getattr(config, "dtype", None)
    if isinstance(stored, torch.dtype) and stored.is_floating_point:
        merged = merged.to(stored)
    merged.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


# A bf16 matrix product under autocast, in a child process: where oneDNN picks a kernel the
# machine cannot run (AMX listed by a VM that does not enable it), the child dies, not us.
_BF16_PROBE = """
import torch
a = torch.randn(256, 256)
with torch.autocast("cpu", dtype=torch.bfloat16):
    b = torch.nn.functional.linear(a, a)
assert b.dtype == torch.bfloat16 and bool(torch.isfinite(b).all())
print(torch.backends.cpu.get_cpu_capability())
"""


@dataclass(frozen=True)
class Bf16Check:
    """Whether bf16 autocast is worth using on this CPU (``None``: unknown), and why;
    ``crashed``: a bf16 matrix product killed (or hung) the process that tried it."""

    native: bool | None
    reason: str
    crashed: bool = False


@functools.cache
def cpu_bf16_check(probe: str = _BF16_PROBE) -> Bf16Check:
    """Decide whether this CPU computes bf16 in hardware. The CPU flags must list
    ``avx512_bf16`` or ``amx_bf16`` (without them torch emulates bf16 matrix products, tens
    of times slower than fp32 ones on an AVX2 CPU), and a bf16 matrix product must run in a
    child process (a CPU can list instructions its VM does not enable); ``probe`` is that
    product's script."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line.split() for line in fh if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None:
        return Bf16Check(None, "the CPU flags cannot be read")
    listed = sorted({"avx512_bf16", "amx_bf16"} & set(flags))
    if not listed:
        return Bf16Check(False, "the CPU flags list neither avx512_bf16 nor amx_bf16")
    cmd = [sys.executable, "-c", probe]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        reason = f"the CPU lists {', '.join(listed)}, but a bf16 matrix product hung"
        return Bf16Check(False, reason, crashed=True)
    if done.returncode != 0:
        return Bf16Check(
            False,
            f"the CPU lists {', '.join(listed)}, but a bf16 matrix product in a child process "
            + describe_exit(done.returncode),
            crashed=True,
        )
    capability = done.stdout.strip().splitlines()[-1]
    return Bf16Check(
        True,
        f"the CPU lists {', '.join(listed)} and a bf16 matrix product runs "
        f"(torch's CPU kernels: {capability})",
    )


def cpu_bf16_is_native() -> bool | None:
    """``cpu_bf16_check().native``: True, False, or None where the CPU flags can't be read."""
    return cpu_bf16_check().native


def loss_history(log_history: list[dict]) -> dict[str, list]:
    """Logged training losses by step; after a resume, the checkpoint's earlier logs too."""
    logs = [e for e in log_history if "loss" in e and "step" in e]
    return {"steps": [e["step"] for e in logs], "loss": [float(e["loss"]) for e in logs]}


def plot_losses(history: dict[str, list], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    steps, losses = history["steps"], history["loss"]
    ax.plot(steps, losses, marker="." if len(steps) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _padding_estimate(lengths: list[int], batch: int, grouped: bool) -> float:
    """The share of padding the batches will have (grouped: sorted within mega-batches)."""
    if not lengths:
        return 0.0
    if grouped:  # transformers' mega-batches: 50 batches, or a quarter of the samples if less
        mega = max(min(len(lengths) // (batch * 4), 50), 1) * batch
        lengths = [
            n
            for k in range(0, len(lengths), mega)
            for n in sorted(lengths[k : k + mega], reverse=True)
        ]
    padded = sum(
        max(lengths[k : k + batch]) * len(lengths[k : k + batch])
        for k in range(0, len(lengths), batch)
    )
    return 1 - sum(lengths) / padded


def _log(args: TrainingArguments, text: str) -> None:
    if args.process_index == 0:
        print(text, file=sys.stderr, flush=True)


def cpu_bf16_decision(args: TrainingArguments, check: Bf16Check | None = None) -> None:
    """Keep ``--bf16`` on a CPU that runs bf16, say so, and say why otherwise: where a bf16
    matrix product kills the process, train in fp32 instead; where bf16 is only emulated, keep
    it (as asked) with a warning that it is slow. ``check`` defaults to this CPU's."""
    check = check or cpu_bf16_check()
    if check.native is not False:
        _log(args, f"GLPFT: --bf16 on the CPU: bf16 autocast ({check.reason})")
    elif check.crashed:
        args.bf16 = False
        _log(args, f"GLPFT: warning: --bf16 dropped, training in fp32: {check.reason}")
    else:
        _log(
            args,
            f"GLPFT: warning: --bf16 on the CPU: bf16 autocast, emulated ({check.reason}): "
            "training runs tens of times slower than in fp32; drop --bf16 on this machine",
        )


def load_model(path: str, model_args: ModelArguments, args: TrainingArguments) -> Any:
    # Half-precision weights only where something else keeps fp32: DeepSpeed (its master
    # weights) or LoRA (the base is frozen). Otherwise fp32 weights under autocast.
    half = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
    use_half = (
        half is not None
        and torch.cuda.is_available()
        and (model_args.lora_r > 0 or bool(args.deepspeed))
    )
    kwargs: dict[str, Any] = {"dtype": half if use_half else torch.float32}
    if model_args.attn_implementation:
        kwargs["attn_implementation"] = model_args.attn_implementation
    model = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.config.use_cache = False
    if model_args.lora_r:
        from peft import LoraConfig, get_peft_model

        targets = model_args.lora_target_modules
        model = get_peft_model(
            model,
            LoraConfig(
                r=model_args.lora_r,
                lora_alpha=model_args.lora_alpha,
                lora_dropout=model_args.lora_dropout,
                target_modules=targets if targets == "all-linear" else targets.split(","),
                task_type="CAUSAL_LM",
            ),
        )
    if args.activation_checkpointing:
        model.enable_input_require_grads()
    return model


def train(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: TrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, Any]:
    """Run one GLPFT stage; returns the training summary (also written to the output dir)."""
    _distributed_defaults(args)
    if args.bf16 and not args.on_cuda():
        cpu_bf16_decision(args)
    transformers.set_seed(args.seed)
    start = time.perf_counter()
    with args.main_process_first(desc="model alias"):
        model_path = resolve_model(model_args.model_name_or_path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(
        model_path, model_max_length=args.model_max_length, cache_dir=args.cache_dir
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is never trained on
    with args.main_process_first(desc="tokenizing"):
        dataset = build_dataset(
            data_args.data_path,
            tokenizer,
            args.model_max_length,
            seed=args.seed,
            max_num_sample_per_data=data_args.max_num_sample_per_data,
            max_num_sample_ratio=data_args.max_num_sample_ratio,
            num_proc=data_args.preprocessing_num_workers or min(cpu_count(), 8),
            cache_dir=args.cache_dir,
        )
        stats = DataStats.of(dataset)
        if data_args.packing:
            dataset = pack_dataset(dataset, args.model_max_length)
    batching, attn = choose_batching(model_args, data_args, args)
    collator = {"packed": PackedCollator, "padding-free": FlatCollator}.get(batching, PadCollator)(
        tokenizer.pad_token_id
    )

    model = load_model(model_path, replace(model_args, attn_implementation=attn), args)
    trainer = (RowByRowTrainer if batching == "row-by-row" else GLPFTTrainer)(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=list(callbacks),
        sparse_lm_head=args.sparse_lm_head,
    )
    attn = getattr(model.config, "_attn_implementation", None) or attn
    batch = args.per_device_train_batch_size
    world = args.world_size
    per_step = batch * world * args.gradient_accumulation_steps
    steps = (
        args.max_steps
        if args.max_steps > 0
        else math.ceil(math.ceil(len(dataset) / (batch * world)) / args.gradient_accumulation_steps)
        * math.ceil(args.num_train_epochs)
    )
    padding = _padding_estimate(
        int_column(dataset, "length").tolist(),
        batch,
        args.train_sampling_strategy == "group_by_length",
    )
    how = {
        "packed": f"packed into {len(dataset):,} rows",
        "padding-free": f"each batch flattened into one row ({attn} attention)",
        "row-by-row": "rows trained one by one, unpadded",
        "padded": f"padded batches ({attn} attention)",
    }[batching]
    if batching in ("padding-free", "row-by-row"):
        padding = 0.0
    if not args.sparse_lm_head:
        how += ", LM head on every position"
    _log(
        args,
        (
            f"GLPFT: {stats.samples:,} samples from {data_args.data_path}, "
            f"{stats.tokens:,} tokens, {stats.trained_tokens / max(stats.tokens, 1):.1%} of them "
            f"trained; {how}, padding ≈ {padding:.1%}; {stats.cut_samples:,} prompts cut to "
            f"{args.model_max_length} tokens ({stats.target_cut_samples:,} targets); "
            f"{steps:,} steps of {per_step} {'rows' if batching == 'packed' else 'samples'} on "
            f"{world} process(es)"
        ),
    )
    resume = args.resume_from_checkpoint
    if resume is None and os.path.isdir(args.output_dir):
        resume = transformers.trainer_utils.get_last_checkpoint(args.output_dir)
        if resume:
            _log(args, f"GLPFT: resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    summary = {
        "model": model_args.model_name_or_path,
        "data_path": data_args.data_path,
        "samples": stats.samples,
        "tokens": stats.tokens,
        "trained_tokens": stats.trained_tokens,
        "trained_share": stats.trained_tokens / max(stats.tokens, 1),
        "padding_share_estimate": padding,
        "prompts_cut": stats.cut_samples,
        "targets_cut": stats.target_cut_samples,
        "packing": data_args.packing,
        "batching": batching,
        "attn_implementation": attn,
        "sparse_lm_head": args.sparse_lm_head,
        "rows": len(dataset),
        "steps": trainer.state.global_step,
        "world_size": world,
        "train_loss": result.training_loss,
        "loss_history": loss_history(trainer.state.log_history),
        "lora": asdict(model_args) if model_args.lora_r else None,
        "resumed_from": resume,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out = Path(args.output_dir)
    if model_args.lora_r and model_args.merge_lora:
        trainer.accelerator.wait_for_everyone()  # every rank's part of the adapter is saved
        if trainer.is_world_process_zero():
            save_merged(model_path, out, out / "merged", tokenizer, args)
    if trainer.is_world_process_zero():
        (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if summary["loss_history"]["steps"]:
            plot_losses(
                summary["loss_history"],
                out / "loss.png",
                f"{Path(args.output_dir).name}: training loss",
            )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    model_args, data_args, train_args = parse_args(argv)
    try:
        train(model_args, data_args, train_args)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # else gloo may abort at exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
