"""Padding-free batches (each batch flattened into one row) and the full-logits LM head: the
same tokens, loss and gradient as the padded batch, on real samples and the tiny model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ALPHA_UMI, REPO, read_json, tiny_train_flags

from GLPFT.collate import FlatCollator, PadCollator
from GLPFT.data import IGNORE_INDEX, tokenize_record
from GLPFT.models import TINY_LLAMA, resolve_model
from GLPFT.train import TrainingArguments, choose_batching, parse_args
from GLPFT.trainer import GLPFTTrainer, full_lm_loss, sparse_lm_loss

PLANNER = ALPHA_UMI / "train-example" / "train_planner.json"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(TINY_LLAMA))


@pytest.fixture(scope="module")
def features(tokenizer, shared) -> list[dict]:
    """Four real planner samples, cut to different lengths (their prompts lose their start)."""
    out = []
    for k, record in enumerate(read_json(PLANNER)[:4]):
        t = tokenize_record(record, tokenizer, 240 + 70 * k, f"planner#{k}")
        out.append({"input_ids": t.input_ids, "labels": t.labels})
    assert len({len(f["input_ids"]) for f in out}) > 1
    return out


def tiny_model(attn: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        resolve_model(TINY_LLAMA), dtype=torch.float32, attn_implementation=attn
    )


def test_flat_collation(features: list[dict]) -> None:
    batch = FlatCollator(0)(features)
    assert "attention_mask" not in batch
    lengths = [len(f["input_ids"]) for f in features]
    assert batch["input_ids"].shape == (1, sum(lengths))
    assert batch["input_ids"][0].tolist() == [t for f in features for t in f["input_ids"]]
    # each sample's first label is never trained (it would be predicted across samples)
    labels = [x for f in features for x in [IGNORE_INDEX, *f["labels"][1:]]]
    assert batch["labels"][0].tolist() == labels
    assert all(f["labels"][0] == IGNORE_INDEX for f in features)  # nothing was lost here
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    starts = [sum(lengths[:k]) for k in range(len(lengths) + 1)]
    assert batch["cu_seq_lens_q"].tolist() == starts == batch["cu_seq_lens_k"].tolist()
    assert batch["max_length_q"] == batch["max_length_k"] == max(lengths)


def _step(attn: str, batch: dict, sparse: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step through the trainer, normalised by the padded batch's token count:
    the loss and the gradient."""
    torch.manual_seed(0)
    model = tiny_model(attn)
    args = TrainingArguments(output_dir="unused", use_cpu=True, report_to=[])
    trainer = GLPFTTrainer(model=model, args=args, sparse_lm_head=sparse)
    count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    loss = trainer.training_step(model, dict(batch), num_items_in_batch=count)
    return loss, torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_flat_batch_has_the_padded_batch_loss_and_gradient(features: list[dict], attn: str):
    padded = PadCollator(0)(features)
    flat = FlatCollator(0)(features)
    count = int((padded["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert int((flat["labels"][:, 1:] != IGNORE_INDEX).sum()) == count
    loss, grad = _step(attn, flat)
    ref_loss, ref_grad = _step(attn, padded)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)
    assert grad.abs().sum() > 0
    # the pitfall: with an attention mask of ones the samples attend to each other
    model = tiny_model(attn).eval()
    ones = torch.ones_like(flat["input_ids"])
    with torch.no_grad():
        isolated, n, _ = sparse_lm_loss(model, flat)
        reference, _, _ = sparse_lm_loss(model, padded)
        leaky, _, _ = sparse_lm_loss(model, {**flat, "attention_mask": ones})
    assert n == count and torch.allclose(isolated, reference, rtol=1e-6)
    # (random weights barely use the context: a small but certain difference)
    assert not torch.allclose(leaky, reference, rtol=1e-5)


@pytest.mark.parametrize("collator", [PadCollator, FlatCollator])
def test_full_lm_head_gives_the_sparse_heads_loss(features: list[dict], collator) -> None:
    """--sparse_lm_head false: logits everywhere, the same loss, count and gradient."""
    batch = collator(0)(features)
    model = tiny_model("sdpa").eval()
    with torch.no_grad():
        sparse, n_sparse, out_sparse = sparse_lm_loss(model, batch)
        full, n_full, out_full = full_lm_loss(model, batch)
    assert n_sparse == n_full > 0
    assert torch.allclose(sparse, full, rtol=1e-5)
    assert out_full.logits.shape[1] == batch["input_ids"].shape[1]
    assert out_sparse.logits.shape[1] < out_full.logits.shape[1]
    sparse_step, full_step = _step("sdpa", batch), _step("sdpa", batch, sparse=False)
    assert torch.allclose(sparse_step[0], full_step[0], rtol=1e-5)
    assert torch.allclose(sparse_step[1], full_step[1], rtol=1e-4, atol=1e-7)


def _choice(*flags: str) -> tuple[str, str | None]:
    model, data, args = parse_args(["--data_path", "x", "--output_dir", "o", *flags])
    return choose_batching(model, data, args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU choices")
def test_batching_choice_on_cpu() -> None:
    assert _choice() == ("row-by-row", None)
    assert _choice("--row_by_row", "false") == ("padded", None)
    assert _choice("--padding_free", "true") == ("padding-free", None)
    assert _choice("--padding_free", "true", "--attn_implementation", "eager") == (
        "padding-free",
        "eager",
    )
    assert _choice("--packing", "True") == ("packed", None)
    with pytest.raises(SystemExit):
        _choice("--packing", "True", "--padding_free", "true")


def test_padding_free_training_run(tmp_path: Path, shared) -> None:
    """GLPFT.train end to end with padding-free batches and the full LM head."""
    out = tmp_path / "flat"
    flags = tiny_train_flags(PLANNER, out, max_steps=5, model_max_length=256)
    cmd = [sys.executable, "-m", "GLPFT.train", *flags]
    cmd += ["--padding_free", "true", "--sparse_lm_head", "false"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "each batch flattened into one row (sdpa attention)" in proc.stderr
    assert "LM head on every position" in proc.stderr
    summary = read_json(out / "train_summary.json")
    assert summary["batching"] == "padding-free" and summary["sparse_lm_head"] is False
    assert summary["padding_share_estimate"] == 0.0
    losses = summary["loss_history"]["loss"]
    assert len(losses) == 5 and losses[-1] < losses[0]
