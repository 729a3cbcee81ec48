"""The HF Trainer with the LM head and the loss computed only where labels are trained.

On planner data only about 7% of the tokens carry a label; a 49k-vocabulary head on every
position spends most of its compute and memory on logits nobody uses. The model is called
with ``logits_to_keep`` set to the positions that predict a trained token in any row of the
batch, so wrappers (DDP, DeepSpeed, peft) see an ordinary forward call.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from GLPFT.data import IGNORE_INDEX


def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions ``t`` whose next token is trained in some row (logits at ``t`` predict it)."""
    return (labels[:, 1:] != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)


def sparse_lm_loss(model: Any, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, Any]:
    """Summed cross-entropy over trained tokens, their count, and the model outputs."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    keep = trained_positions(labels)
    outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
    targets = labels[:, 1:][:, keep]
    logits = outputs.logits
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, int((targets != IGNORE_INDEX).sum()), outputs


class GLPFTTrainer(Trainer):
    """:class:`transformers.Trainer` whose loss only looks at trained positions."""

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        loss, count, outputs = sparse_lm_loss(model, inputs)
        if num_items_in_batch is None:
            loss = loss / max(count, 1)
        else:
            # normalised over the whole (accumulated, all-rank) batch, as the Trainer expects
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss
