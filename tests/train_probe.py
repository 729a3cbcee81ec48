"""Run GLPFT.train with two test probes: a checksum of the final weights per rank, and
(with ``PROBE_STEP_SECONDS``) a pause after each step, so that a test can kill the run
between two checkpoints.

    [torchrun ...] python tests/train_probe.py <GLPFT.train flags>
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.integrations import is_deepspeed_zero3_enabled

from GLPFT.train import parse_args, train


class WeightChecksum(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        params = [p for _, p in sorted(model.named_parameters())]
        gather = contextlib.nullcontext()
        if is_deepspeed_zero3_enabled():
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(params)
        with gather, torch.no_grad():
            digest = hashlib.sha256()
            for p in params:
                digest.update(p.detach().float().cpu().numpy().tobytes())
        path = Path(args.output_dir) / f"rank{args.process_index}.json"
        path.write_text(json.dumps({"sha256": digest.hexdigest(), "world": args.world_size}))


class SlowSteps(TrainerCallback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        time.sleep(self.seconds)


if __name__ == "__main__":
    model_args, data_args, train_args = parse_args(sys.argv[1:])
    probes: list[TrainerCallback] = [WeightChecksum()]
    if os.environ.get("PROBE_STEP_SECONDS"):
        probes.append(SlowSteps(float(os.environ["PROBE_STEP_SECONDS"])))
    try:
        train(model_args, data_args, train_args, callbacks=probes)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
