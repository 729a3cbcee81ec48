"""The HF Trainer with the LM head and the loss computed only where labels are trained.

On planner data only about 7% of the tokens carry a label; a 49k-vocabulary head on every
position spends most of its compute and memory on logits nobody uses. The model is called
with ``logits_to_keep`` set to the positions that predict a trained token in any row of the
batch, so wrappers (DDP, DeepSpeed, peft) see an ordinary forward call.

With ``row_by_row``, each row of a padded batch runs forward and backward on its own, without
its padding and without an attention mask. Attention then takes the causal fast path (a
padding mask makes SDPA compute the masked upper triangle as well, and keep the whole score
matrix for the backward pass), and only one row's activations are alive at a time. The
gradients are those of the whole batch: each row's loss is normalised by the batch's trained
token count, and DDP synchronises only after the last row.

``sparse_lm_head=False`` computes every position's logits instead (the plain causal-LM loss,
normalised the same way), so that the sparse head can be measured against it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from GLPFT.data import IGNORE_INDEX


def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions ``t`` whose next token is trained in some row (logits at ``t`` predict it)."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)


def sparse_lm_loss(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, int, Any]:
    """Summed cross-entropy over trained tokens, their count, and the model outputs."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = trained_positions(labels)
    outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
    return _summed_loss(outputs.logits, labels[:, 1:][:, keep]), _count(labels), outputs


def full_lm_loss(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, int, Any]:
    """:func:`sparse_lm_loss` with the LM head on every position."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    outputs = model(**inputs, use_cache=False)
    return _summed_loss(outputs.logits[:, :-1], labels[:, 1:]), _count(labels), outputs


def _summed_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def _count(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


class GLPFTTrainer(Trainer):
    """:class:`transformers.Trainer` whose loss only looks at trained positions (with
    ``sparse_lm_head``, the default) and is normalised by the trained-token count."""

    def __init__(self, *args: Any, sparse_lm_head: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lm_loss = sparse_lm_loss if sparse_lm_head else full_lm_loss

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        loss, count, outputs = self.lm_loss(model, inputs)
        if num_items_in_batch is None:
            loss = loss / max(count, 1)
        else:
            # normalised over the whole (accumulated, all-rank) batch, as the Trainer expects
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


def unpadded_rows(inputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Each row of a padded batch without its padding (and without an attention mask)."""
    mask = inputs["attention_mask"].bool()
    rest = {k: v for k, v in inputs.items() if k != "attention_mask"}
    return [{k: v[row : row + 1, mask[row]] for k, v in rest.items()} for row in range(len(mask))]


class RowByRowTrainer(GLPFTTrainer):
    """Trains each row of a padded batch separately (see the module docstring); batches
    without padding, and calls without a token count, take the usual path."""

    def training_step(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        mask = inputs.get("attention_mask")
        if num_items_in_batch is None or mask is None or bool(mask.all()):
            return super().training_step(model, inputs, num_items_in_batch)
        rows = unpadded_rows(inputs)
        total = None
        for k, row in enumerate(rows):
            last = k == len(rows) - 1
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
            with sync:
                loss = super().training_step(model, row, num_items_in_batch)
            total = loss if total is None else total + loss
        return total
