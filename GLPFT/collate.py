"""Batches without wasted compute: dynamic padding, padding-free rows, or best-fit packing.

Padding goes to the longest sample of the batch, never to ``model_max_length``. Packing puts
several samples in one row with ``position_ids`` restarting at 0 for each; transformers then
keeps packed samples from attending to each other, but only when no attention mask is passed
(and the KV cache is off), so the packed collators pass none. Padding at the end of a packed
row is harmless without a mask: no real token comes after it.

Padding-free batches (:class:`FlatCollator`) are packing done per batch: the batch's samples
are flattened into one row, so nothing is padded and nothing is planned ahead. With SDPA or
eager attention, transformers finds the samples from the restarting position ids and builds a
block-diagonal causal mask over the whole row (its memory and compute grow with the square of
the row's length); flash attention instead runs its variable-length kernel on each sample
alone, given the samples' boundaries (:func:`varlen_kwargs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from GLPFT.data import IGNORE_INDEX


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


@dataclass
class PadCollator:
    """Pads a batch to its longest sample; labels are ignored on padding.

    Padding goes on the left by default: targets sit at the end of every sample, so aligning
    the ends lines the trained positions up across the batch, and the LM head (which runs on
    the union of trained positions) sees little more than the longest target. Position ids
    count from each sample's first real token, so the padding changes nothing.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    padding_side: str = "left"

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = _round_up(max(len(f["input_ids"]) for f in features), self.pad_to_multiple_of)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        positions = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            span = slice(width - n, width) if self.padding_side == "left" else slice(0, n)
            ids[row, span] = torch.as_tensor(f["input_ids"])
            labels[row, span] = torch.as_tensor(f["labels"])
            mask[row, span] = 1
            positions[row, span] = torch.arange(n)
        return {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": mask,
            "position_ids": positions,
        }


def varlen_kwargs(position_ids: torch.Tensor) -> dict[str, Any]:
    """The samples' boundaries in a batch whose position ids restart at 0 per sample, for
    flash attention's variable-length kernel (``cu_seq_lens_*``, ``max_length_*``).

    Counted over the flattened batch, as the kernel sees it. Without them, transformers finds
    the boundaries from the position ids in every layer (a device sync each time), and only in
    one-row batches; SDPA and eager attention ignore them.
    """
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().view(-1)
    bounds = torch.cat([starts, torch.tensor([flat.numel()])]).to(torch.int32)
    longest = int(bounds.diff().max())
    return {
        "cu_seq_lens_q": bounds,
        "cu_seq_lens_k": bounds,
        "max_length_q": longest,
        "max_length_k": longest,
    }


@dataclass
class PackedCollator:
    """Batches packed rows: ``position_ids`` restart per sample, and there is no mask."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        width = _round_up(max(len(f["input_ids"]) for f in features), self.pad_to_multiple_of)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        positions = torch.zeros((len(features), width), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n] = torch.as_tensor(f["input_ids"])
            labels[row, :n] = torch.as_tensor(f["labels"])
            start = 0
            for length in [*f["seq_lengths"], width - n]:  # the padding is a run of its own
                positions[row, start : start + length] = torch.arange(length)
                start += length
        return {
            "input_ids": ids,
            "labels": labels,
            "position_ids": positions,
            **varlen_kwargs(positions),
        }


@dataclass
class FlatCollator:
    """Padding-free batches: the batch's samples flattened into one row, ``position_ids``
    restarting per sample, no attention mask.

    Each sample's first label is dropped, as in packed rows: in the flat row it would be
    predicted from the previous sample's last token. Nothing trainable is lost. A first label
    is trained only when the target alone fills ``model_max_length`` (a prompt precedes every
    other target: α-UMi's ``"system: "`` prefix, or the chat template's first turn); such a
    sample is ``model_max_length`` tokens long, the widest of any padded batch, so its first
    token sits in column 0, which no position predicts. The padded batch never trains it
    either, so both give the same loss and the same trained-token count.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        row = pack_features(features)
        return PackedCollator(self.pad_token_id, self.pad_to_multiple_of)([row])


def pack_features(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One packed row from tokenized samples. A sample's first label is dropped (it would be
    predicted from the previous sample's last token)."""
    ids: list[int] = []
    labels: list[int] = []
    for row in rows:
        ids += row["input_ids"]
        labels += [IGNORE_INDEX, *row["labels"][1:]]
    return {"input_ids": ids, "labels": labels, "seq_lengths": [len(r["input_ids"]) for r in rows]}
