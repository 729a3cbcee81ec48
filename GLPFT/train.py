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

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import HfArgumentParser, TrainerCallback

from GLPFT.collate import PackedCollator, PadCollator
from GLPFT.data import DataStats, build_dataset, cpu_count, pack_dataset
from GLPFT.models import resolve_model
from GLPFT.trainer import GLPFTTrainer, RowByRowTrainer


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
    row_by_row: str = field(
        default="auto",
        metadata={
            "help": "train each row of a padded batch on its own, unpadded and mask-free "
            "(faster and lighter where batching buys little); auto: on CPU without "
            "DeepSpeed or FSDP",
            "choices": ["auto", "true", "false"],
        },
    )

    def use_row_by_row(self) -> bool:
        if self.row_by_row != "auto":
            return self.row_by_row == "true"
        return (self.use_cpu or not torch.cuda.is_available()) and not (self.deepspeed or self.fsdp)


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
    if not args.train_sampling_strategy or args.train_sampling_strategy == "random":
        args.train_sampling_strategy = "group_by_length"


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
    if grouped:
        mega = batch * 50
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
    if args.gradient_checkpointing:
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
    collator = (PackedCollator if data_args.packing else PadCollator)(tokenizer.pad_token_id)

    model = load_model(model_path, model_args, args)
    row_by_row = args.use_row_by_row() and not data_args.packing
    trainer = (RowByRowTrainer if row_by_row else GLPFTTrainer)(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )
    batch = args.per_device_train_batch_size
    world = args.world_size
    per_step = batch * world * args.gradient_accumulation_steps
    steps = (
        args.max_steps
        if args.max_steps > 0
        else math.ceil(math.ceil(len(dataset) / (batch * world)) / args.gradient_accumulation_steps)
        * math.ceil(args.num_train_epochs)
    )
    padding = _padding_estimate(dataset["length"], batch, not data_args.packing)
    packed = f"packed into {len(dataset):,} rows, " if data_args.packing else ""
    if row_by_row:
        packed, padding = "rows trained one by one, unpadded, ", 0.0
    _log(
        args,
        (
            f"GLPFT: {stats.samples:,} samples from {data_args.data_path}, "
            f"{stats.tokens:,} tokens, {stats.trained_tokens / max(stats.tokens, 1):.1%} of them "
            f"trained; {packed}padding ≈ {padding:.1%}; {stats.cut_samples:,} prompts cut to "
            f"{args.model_max_length} tokens ({stats.target_cut_samples:,} targets); "
            f"{steps:,} steps of {per_step} rows on {world} process(es)"
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
        "rows": len(dataset),
        "steps": trainer.state.global_step,
        "world_size": world,
        "train_loss": result.training_loss,
        "loss_history": loss_history(trainer.state.log_history),
        "lora": asdict(model_args) if model_args.lora_r else None,
        "resumed_from": resume,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if trainer.is_world_process_zero():
        out = Path(args.output_dir)
        if model_args.lora_r and model_args.merge_lora:
            merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
            merged.save_pretrained(out / "merged")
            tokenizer.save_pretrained(out / "merged")
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
