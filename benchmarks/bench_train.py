"""Training benchmark: GLPFT against α-UMi's padding, TRL's ``SFTTrainer`` and a plain HF Trainer.

Four configurations train SmolLM2-135M (fp32 weights, bf16 autocast, CPU) on the same α-UMi
planner samples, batch 2, for the same number of optimizer steps, each in a child process:

* a: ours, ``GLPFT.train`` with its defaults (``parse_args`` + ``train``, what
  ``python -m GLPFT.train`` runs);
* b: α-UMi's behaviour: every sample right-padded to ``model_max_length``, random order, plain
  ``transformers.Trainer`` with the loss over the full logits;
* c: TRL's ``SFTTrainer`` with its defaults, on ``{prompt: "system: " + input, completion:
  target}`` records;
* d: a plain ``transformers.Trainer`` with dynamic padding (``DataCollatorForSeq2Seq``) and
  ``train_sampling_strategy="group_by_length"``: what a careful user writes without us.

The samples are ``2 * steps`` records of ``train_planner.json`` at evenly spaced quantiles of
its length: every configuration trains one epoch of them. (b) and (d) train on the token
sequences of (a). Each run's collator is wrapped to count the real (attention-mask) tokens of
the batches it trained on; the clock runs from ``on_train_begin`` to the last ``on_step_end``.
Peak RSS of the child process is polled every 50 ms.

    python benchmarks/bench_train.py [--steps 4] [--max_length 4096] [--configs abcd]
        [--repeat 1] [--keep] [--write_results]
    python benchmarks/bench_train.py --steps 2 --max_length 512    # smoke test, 3 minutes
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psutil
from bench_prepro import RESULTS, machine, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpha_umi" / "train-example" / "train_planner.json"
SECTION = "## Training (GLPFT)"
CONFIGS = {
    "a": "(a) ours: `GLPFT.train` defaults",
    "b": "(b) α-UMi: pad to `model_max_length`, random order",
    "c": "(c) TRL `SFTTrainer` defaults",
    "d": "(d) HF Trainer: dynamic padding, `group_by_length`",
}
TARGETS = {"b": 3.0, "c": 2.0, "d": 1.2}
LR, SEED, BATCH, GIB = 2e-5, 42, 2, 2**30


# --------------------------------------------------------------------------------------------
# Child process: one configuration
# --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Wraps a collator; records (real, trained, all) tokens and the rows of every batch."""

    collator: Any = None
    batches: list[tuple[int, int, int, int]] = field(default_factory=list)

    def wrap(self, collator: Any) -> Tally:
        self.collator = collator
        return self

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator(features)
        labels = batch["labels"]
        trained = int((labels[:, 1:] != -100).sum())
        real = int(batch["attention_mask"].sum())
        self.batches.append((real, trained, labels.numel(), len(labels)))
        return batch


@dataclass
class PadToMax:
    """α-UMi's batches: every sample right-padded to ``model_max_length``."""

    pad_token_id: int
    width: int

    def __call__(self, features: list[dict]) -> dict:
        import torch

        shape = (len(features), self.width)
        ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, -100, dtype=torch.long)
        mask = torch.zeros(shape, dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            ids[row, :n], labels[row, :n] = torch.tensor(f["input_ids"]), torch.tensor(f["labels"])
            mask[row, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def run_config(key: str, data: str, steps: int, max_length: int, result: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    import transformers

    from GLPFT import train as glpft
    from GLPFT.collate import PadCollator
    from GLPFT.data import build_dataset
    from GLPFT.models import resolve_model

    tally, stamps = Tally(), []

    class Clock(transformers.TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    common: dict[str, Any] = {
        "output_dir": str(result.parent / f"out_{key}"),
        "per_device_train_batch_size": BATCH,
        "max_steps": steps,
        "learning_rate": LR,
        "seed": SEED,
        "bf16": True,
        "use_cpu": True,
        "save_strategy": "no",
        "logging_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
    }
    if key == "a":
        flags = ["--data_path", data, "--model_max_length", str(max_length)]
        for name, value in common.items():
            flags += [f"--{name}", str(value)]
        # the one change to what `python -m GLPFT.train` runs: count the tokens of its batches
        glpft.PadCollator = lambda pad_token_id: tally.wrap(PadCollator(pad_token_id))
        glpft.train(*glpft.parse_args(flags), callbacks=[Clock()])
    else:
        path = resolve_model("smollm2-135m")
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, padding_side="right")
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.config.use_cache = False
        if key == "c":
            from datasets import Dataset
            from trl import SFTConfig, SFTTrainer

            records = json.loads(Path(data).read_text(encoding="utf-8"))
            rows = [{"prompt": "system: " + r["input"], "completion": r["target"]} for r in records]
            trainer: Any = SFTTrainer(
                model=model,
                args=SFTConfig(**common, max_length=max_length),
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                callbacks=[Clock()],
            )
            trainer.data_collator = tally.wrap(trainer.data_collator)
        else:
            dataset = build_dataset(data, tokenizer, max_length, seed=SEED)
            dataset = dataset.select_columns(["input_ids", "labels"])
            if key == "b":
                strategy, collator = "random", PadToMax(tokenizer.pad_token_id, max_length)
            else:
                strategy = "group_by_length"
                collator = transformers.DataCollatorForSeq2Seq(tokenizer, padding=True)
            trainer = transformers.Trainer(
                model=model,
                args=transformers.TrainingArguments(**common, train_sampling_strategy=strategy),
                train_dataset=dataset,
                data_collator=tally.wrap(collator),
                processing_class=tokenizer,
                callbacks=[Clock()],
            )
        trainer.train()
    trained = tally.batches[:steps]  # a look-ahead batch past the last step is not trained
    summary = {
        "step_seconds": [b - a for a, b in zip(stamps, stamps[1:], strict=False)],
        "tokens": [sum(b[k] for b in trained) for k in range(4)],
    }
    result.write_text(json.dumps(summary))


# --------------------------------------------------------------------------------------------
# Parent process: samples, runs, report
# --------------------------------------------------------------------------------------------


@dataclass
class Measure:
    key: str
    step_seconds: list[float]  # the training steps only
    real: int  # non-pad tokens of the trained batches
    trained: int  # tokens that carry a label
    positions: int  # all positions of the batches, padding included
    rows: int  # samples in the trained batches
    rss: int  # peak RSS of the child's process tree, bytes
    others: float  # share of the CPU that other processes took during the run

    @property
    def seconds(self) -> float:
        return sum(self.step_seconds)

    @property
    def rate(self) -> float:
        return self.real / self.seconds

    @property
    def padding(self) -> float:
        return 1 - self.real / self.positions


def pick_samples(count: int) -> list[dict]:
    """``count`` records at evenly spaced quantiles of the file's length (in characters)."""
    records = json.loads(DATA.read_text(encoding="utf-8"))
    if count > len(records):
        sys.exit(f"bench_train: {DATA} has only {len(records)} samples")
    size = [len(r["input"]) + len(r["target"]) for r in records]
    order = sorted(range(len(records)), key=size.__getitem__)
    picked = sorted(order[int((k + 0.5) * len(order) / count)] for k in range(count))
    return [records[i] for i in picked]


def _busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def run_child(key: str, data: Path, args: argparse.Namespace, work: Path) -> Measure:
    result, log = work / f"{key}.json", work / "log.txt"
    cmd = [sys.executable, __file__, "--run", key, "--data", str(data), "--result", str(result)]
    cmd += ["--steps", str(args.steps), "--max_length", str(args.max_length)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    deadline = time.monotonic() + args.wait_idle
    if psutil.cpu_percent(interval=5) > 15:
        print("bench_train: waiting for the other processes to leave the CPU", file=sys.stderr)
        while psutil.cpu_percent(interval=5) > 15 and time.monotonic() < deadline:
            pass
    peak, cpu, busy, start = 0, 0.0, _busy(), time.perf_counter()
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree))
                cpu = sum(sum(p.cpu_times()[:4]) for p in tree)  # user, system, children's
            except psutil.Error:  # a process ended between listing and reading
                pass
            time.sleep(0.05)
    others = (_busy() - busy - cpu) / ((time.perf_counter() - start) * psutil.cpu_count())
    if proc.returncode:
        sys.exit(f"bench_train: configuration {key} exited {proc.returncode}; see {log}")
    r = json.loads(result.read_text())
    return Measure(key, r["step_seconds"], *r["tokens"], peak, max(others, 0.0))


def table(runs: dict[str, Measure]) -> str:
    lines = [
        "| configuration | rows | real tokens | padding | s/step | real tokens/s "
        "| trained tokens/s | peak RSS (GiB) | a / this |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in runs.values():
        ratio = f"{runs['a'].rate / m.rate:.2f}×" if "a" in runs else "–"
        lines.append(
            f"| {CONFIGS[m.key]} | {m.rows} | {m.real:,} | {m.padding:.0%} "
            f"| {m.seconds / len(m.step_seconds):.1f} | {m.rate:.0f} "
            f"| {m.trained / m.seconds:.1f} | {m.rss / GIB:.1f} | {ratio} |"
        )
    return "\n".join(lines)


def verdicts(runs: dict[str, Measure]) -> str:
    a, parts = runs["a"], []
    for key, target in TARGETS.items():
        if key in runs:
            ratio = a.rate / runs[key].rate
            met = "met" if ratio >= target else f"missed, {ratio / target:.0%} of it"
            parts.append(f"a/{key} = {ratio:.2f}× (target ≥ {target:g}×: {met})")
    if "c" in runs:
        met = "met" if a.rss <= runs["c"].rss else "missed"
        parts.append(
            f"peak RSS {a.rss / GIB:.1f} GiB against TRL's {runs['c'].rss / GIB:.1f} GiB "
            f"(target: no higher; {met})"
        )
    return "; ".join(parts) + "."


def interpretation(runs: dict[str, Measure], max_length: int) -> str:
    """What the numbers say, worded from the numbers themselves."""
    a, b, c, d = (runs[k] for k in "abcd")
    trl = (
        f"TRL keeps the start of over-long samples and drops those left without a target, so "
        f"its steps trained {c.rows} rows and {c.real:,} real tokens (ours {a.rows} and "
        f"{a.real:,}), without the costliest sample: a/c compares unequal work, in TRL's favour"
        if c.real < 0.95 * a.real
        else f"TRL trained {c.real:,} real tokens, ours {a.real:,}"
    )
    return (
        f"Against (b), the gain is padding: α-UMi pads every sample to {max_length} tokens "
        f"({b.padding:.0%} of the positions are padding) and computes the 49k-vocabulary "
        "logits at all of them. (a) and (d) collate the same batches "
        f"({a.padding:.0%} and {d.padding:.0%} padding, the same sampler), but on CPU ours "
        "trains each row alone (`--row_by_row auto`): no padding is computed, no attention "
        "mask is passed, so SDPA takes its causal fast path, where (d)'s padding mask makes it "
        "compute the masked triangle too and keep the score matrix for the backward pass; "
        "only one row's activations are alive at a time, which is where the memory goes. "
        "Ours also computes logits and loss only at the positions that predict a trained "
        f"token ({a.trained / a.real:.0%} of the real tokens here), where (d) builds the "
        "logits of every position and upcasts them to fp32. TRL's defaults (c) avoid the "
        "full logits too (a chunked LM head), but turn gradient checkpointing on (one more "
        "forward pass per step, which lowers its peak memory) and do not group by length "
        f"({c.padding:.0%} padding); {trl}. Targets: {verdicts(runs)}"
    )


def report(runs: dict[str, Measure], args: argparse.Namespace, minutes: float) -> str:
    flags = f"--steps {args.steps} --max_length {args.max_length} --repeat {args.repeat}"
    others = max(m.others for m in runs.values())
    samples = BATCH * args.steps
    mega = max(min(samples // (4 * BATCH), 50), 1) * BATCH  # transformers' LengthGroupedSampler
    return (
        f"{SECTION}\n\n{datetime.date.today()}, {machine()}; torch {version('torch')}, "
        f"transformers {version('transformers')}, trl {version('trl')}.\n\n"
        f"```bash\npython benchmarks/bench_train.py {flags} --write_results\n```\n\n"
        f"SmolLM2-135M (fp32 weights, bf16 autocast, CPU), batch {BATCH}, `model_max_length` "
        f"{args.max_length}, {args.steps} optimizer steps, learning rate {LR:g}, seed {SEED}, "
        f"no checkpoints, no logging. The data are {samples} samples of α-UMi's "
        "example `train_planner.json` (79 samples; process_data's output is byte-identical, so "
        "the file is read directly), taken at evenly spaced quantiles of its length, so every "
        "configuration trains one epoch of the same samples. (b) and (d) train on our token "
        "sequences (over-long prompts lose their start); TRL (c) tokenizes on its own. On so "
        f"few samples the length grouping of (a) and (d) sorts mega-batches of {mega} samples "
        f"({'so it does not group at all; ' if mega == BATCH else ''}{50 * BATCH} on 400 "
        "samples or more), and removes less padding than on a real training set. Real "
        "tokens are the attention-mask tokens of the trained batches, counted by wrapping each "
        "run's collator; times cover the training steps only (no loading or tokenization); "
        "s/step is the mean; peak RSS is that of the child process, model loading included. "
        f"Other processes took at most {others:.0%} of the CPU during a run; the benchmark "
        f"took {minutes:.0f} minutes.\n\n{table(runs)}\n\n"
        f"{interpretation(runs, args.max_length)}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per configuration")
    parser.add_argument("--max_length", type=int, default=4096, help="model_max_length")
    parser.add_argument("--configs", default="abcd", help="the configurations to run")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (median)")
    parser.add_argument("--wait_idle", type=float, default=300, help="seconds, before each run")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--write_results", action="store_true", help=f"update {RESULTS.name}")
    parser.add_argument("--run", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return run_config(args.run, args.data, args.steps, args.max_length, args.result)
    if args.write_results and set(args.configs) != set(CONFIGS):
        parser.error("--write_results needs all four configurations")

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    data = work / "train_planner_subset.json"
    data.write_text(json.dumps(pick_samples(BATCH * args.steps)), encoding="utf-8")
    print(f"{BATCH * args.steps} samples in {data}; log: {work / 'log.txt'}", file=sys.stderr)
    keys = [k for k in CONFIGS if k in args.configs]
    runs: dict[str, list[Measure]] = {k: [] for k in keys}
    try:
        for _ in range(args.repeat):  # round-robin: slow phases of the machine hit all alike
            for key in keys:
                m = run_child(key, data, args, work)
                runs[key].append(m)
                steps = ", ".join(f"{s:.1f}" for s in m.step_seconds)
                print(
                    f"{key}: {m.rate:.0f} real tokens/s; steps {steps} s; "
                    f"other processes took {m.others:.0%} of the CPU",
                    file=sys.stderr,
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    best: dict[str, Measure] = {}
    for key, ms in runs.items():  # the median run, with the highest peak RSS of all runs
        median = statistics.median_low(m.rate for m in ms)
        best[key] = next(m for m in ms if m.rate == median)
        best[key].rss = max(m.rss for m in ms)
    minutes = (time.perf_counter() - start) / 60
    print(table(best))
    if "a" in best:
        print(verdicts(best))
    print(f"bench_train: {minutes:.1f} minutes", file=sys.stderr)
    if args.write_results:
        write_results(report(best, args, minutes), SECTION)
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
