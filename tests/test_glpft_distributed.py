"""torchrun on CPU: DDP (gloo) and DeepSpeed ZeRO-3 with 2 processes (full weights, and a LoRA
adapter merged into the base), and the DeepSpeed presets."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ALPHA_UMI, REPO, read_json, tiny_train_flags

from GLPFT.models import TINY_LLAMA, resolve_model
from GLPFT.train import parse_args

CALLER = ALPHA_UMI / "train-example" / "train_caller.json"
PRESETS = sorted((REPO / "ds_configs").glob("*.json"))


@pytest.mark.parametrize("preset", PRESETS, ids=[p.stem for p in PRESETS])
def test_deepspeed_presets_validate(preset: Path) -> None:
    """Each preset, with the Trainer's "auto" values resolved, passes DeepSpeed's own check."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import AutoConfig

    _, _, args = parse_args(
        [
            "--data_path",
            "x",
            "--output_dir",
            "/tmp/o",
            "--bf16",
            "--per_device_train_batch_size",
            "3",
            "--gradient_accumulation_steps",
            "2",
            "--deepspeed",
            str(preset),
        ]
    )
    hf = args.hf_deepspeed_config
    model_config = AutoConfig.from_pretrained(resolve_model(TINY_LLAMA))
    hf.trainer_config_finalize(args, type("M", (), {"config": model_config})(), 100)
    assert '"auto"' not in json.dumps(hf.config)
    ds = DeepSpeedConfig(hf.config)
    assert ds.train_micro_batch_size_per_gpu == 3 and ds.gradient_accumulation_steps == 2
    assert ds.zero_optimization_stage == (2 if "zero2" in preset.stem else 3)
    assert (ds.zero_config.offload_optimizer is not None) == ("offload" in preset.stem)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for _, p in sorted(model.named_parameters()):
        digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize(
    ("deepspeed", "lora"),
    [(None, 0), ("zero3", 0), ("zero3", 4)],
    ids=["ddp", "zero3", "zero3-lora-merged"],
)
def test_two_processes_train_one_model(
    tmp_path: Path, deepspeed: str | None, lora: int, shared
) -> None:
    out = tmp_path / (deepspeed or "ddp")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(REPO / "tests" / "train_probe.py"),
        *tiny_train_flags(CALLER, out, max_steps=8),
    ]
    if deepspeed:
        cmd += ["--deepspeed", str(REPO / "ds_configs" / f"{deepspeed}.json")]
    if lora:
        cmd += ["--lora_r", str(lora), "--learning_rate", "3e-2", "--merge_lora", "True"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [read_json(out / f"rank{r}.json") for r in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["sha256"] == ranks[1]["sha256"]
    summary = read_json(out / "train_summary.json")
    assert summary["world_size"] == 2
    losses = summary["loss_history"]["loss"]
    margin = 0.05 if lora else 0.3  # an adapter on q/v of a tiny model moves less
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - margin
    # the saved checkpoint holds the trained weights (ZeRO-3 gathers its shards on save)
    if lora:
        from safetensors.torch import load_file

        adapter = load_file(out / "adapter_model.safetensors")
        assert adapter and all(t.numel() > 0 for t in adapter.values())
        assert any(k.endswith("lora_B.weight") and t.abs().sum() > 0 for k, t in adapter.items())
        check_merged(out, ranks[0]["sha256"])
        return
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert checksum(saved) == ranks[0]["sha256"]


def check_merged(out: Path, trained_sha256: str) -> None:
    """``OUTPUT_DIR/merged`` computes what base + adapter compute, the adapter being the one
    trained (its checksum is the trained model's), and not what the base alone computes."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def load(path: Path | str) -> torch.nn.Module:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    base = resolve_model(TINY_LLAMA)
    with_adapter = PeftModel.from_pretrained(load(base), out).eval()
    assert checksum(with_adapter) == trained_sha256
    ids = torch.tensor([list(range(100, 164))])
    with torch.no_grad():
        expected = with_adapter(input_ids=ids).logits
        merged = load(out / "merged")(input_ids=ids).logits
        original = load(base)(input_ids=ids).logits
    assert torch.allclose(merged, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(merged, original, atol=1e-3, rtol=0)
    assert (out / "merged" / "tokenizer.json").is_file()
