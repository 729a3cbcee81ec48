"""Training benchmark: GLPFT against α-UMi's padding, TRL's ``SFTTrainer`` and a plain HF Trainer.

Seven configurations train SmolLM2-135M (fp32 weights, bf16 autocast where the CPU computes
bf16 in hardware, fp32 elsewhere; CPU) for one epoch of
the same α-UMi planner samples, with an effective batch of 2, each in a child process:

* a: ours, ``GLPFT.train`` with its defaults (``parse_args`` + ``train``, what
  ``python -m GLPFT.train`` runs);
* a-rbr, a-head: ours with one thing turned off, ``--row_by_row false`` (padded batches with an
  attention mask) or ``--sparse_lm_head false`` (logits at every position);
* b: α-UMi's behaviour: every sample right-padded to ``model_max_length``, random order, plain
  ``transformers.Trainer`` with the loss over the full logits;
* c: TRL's ``SFTTrainer`` with its defaults, on ``{prompt, completion}`` records: α-UMi's
  prompt (``MODEL_INPUT_PREFIX`` + input) and the target;
* d: a plain ``transformers.Trainer`` with dynamic padding (``DataCollatorForSeq2Seq``) and
  ``train_sampling_strategy="group_by_length"``: what a careful user writes without us;
* e: (d) with batch 1 and 2 gradient accumulation steps: no padding at all, what a careful
  user does on CPU.

The samples are ``--num_samples`` records of ``train_planner.json`` at evenly spaced quantiles
of its length. (b), (d) and (e) train on the token sequences of (a). A forward pre-hook on each
run's model counts what the model computed (rows, positions, and the real tokens among them:
attention-mask tokens, or every token of an unmasked call); the clock runs from
``on_train_begin`` to the last ``on_step_end``. After training, each run's model is evaluated
on all the samples, tokenized our way: the loss per trained token, the same measure for every
run. Peak RSS of the child's process tree is polled every 50 ms.

    python benchmarks/bench_train.py [--num_samples 64] [--max_length 4096] \\
        [--configs a,a-rbr,a-head,b,c,d,e] [--repeat 1] [--keep] [--write_results]
    python benchmarks/bench_train.py --model tiny-random-llama --num_samples 4 \\
        --max_length 512 --wait_idle 0    # smoke test: every configuration, ~4 minutes
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

sys.path.insert(0, str(ROOT))
from GLPFT.train import cpu_bf16_is_native  # noqa: E402

#: bf16 autocast where the CPU has bf16 instructions; elsewhere torch emulates bf16, tens of
#: times slower than fp32, so every run trains in fp32 there.
BF16 = cpu_bf16_is_native() is not False
PRECISION = "fp32 weights, bf16 autocast" if BF16 else "fp32: this CPU has no bf16 instructions"
CONFIGS = {
    "a": "(a) ours: `GLPFT.train` defaults",
    "a-rbr": "(a-rbr) ours, `--row_by_row false`",
    "a-head": "(a-head) ours, `--sparse_lm_head false`",
    "b": "(b) α-UMi: pad to `model_max_length`, random order",
    "c": "(c) TRL `SFTTrainer` defaults",
    "d": "(d) HF Trainer: dynamic padding, `group_by_length`",
    "e": "(e) HF Trainer: batch 1, 2 accumulation steps",
}
#: the flags each of our configurations adds to ``GLPFT.train``'s defaults
OURS = {"a": [], "a-rbr": ["--row_by_row", "false"], "a-head": ["--sparse_lm_head", "false"]}
PLAIN_HF = ("d", "e")  # ours must beat the better of the two
TARGETS = {"b": 3.0, "c": 2.0, PLAIN_HF: 1.2}
LR, SEED, BATCH, GIB = 2e-5, 42, 2, 2**30


# --------------------------------------------------------------------------------------------
# Child process: one configuration
# --------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """What a run's model computed (counted by a forward pre-hook), when each optimizer step
    ended, and the logged training losses."""

    rows: int = 0  # samples in the forward calls (a row-by-row step makes one call per row)
    positions: int = 0  # all positions computed, padding included
    real: int = 0  # attention-mask tokens; every token of a call without a mask
    stamps: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def count(self, module: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        mask = kwargs.get("attention_mask")
        self.rows += ids.shape[0]
        self.positions += ids.numel()
        self.real += ids.numel() if mask is None else int(mask.sum())


def make_callback(probe: Probe, on_end: Any) -> Any:
    """A ``TrainerCallback`` that feeds ``probe`` and calls ``on_end(model)`` after training."""
    import transformers

    class Callback(transformers.TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.hook = kwargs["model"].register_forward_pre_hook(probe.count, with_kwargs=True)
            probe.stamps.append(time.perf_counter())

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            probe.stamps.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                probe.losses.append(float(logs["loss"]))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.hook.remove()  # the evaluation's forward calls are not training
            on_end(kwargs["model"])

    return Callback()


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


def evaluate(model: Any, dataset: Any) -> tuple[float, int]:
    """Loss per trained token over ``dataset`` (one sample at a time, in the precision of
    training), and the number of trained tokens."""
    import torch

    from GLPFT.trainer import sparse_lm_loss

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
        for sample in dataset:
            inputs = {k: torch.tensor([sample[k]]) for k in ("input_ids", "labels")}
            loss, n, _ = sparse_lm_loss(model, inputs)
            total, count = total + float(loss), count + n
    return total / max(count, 1), count


def run_config(key: str, data: str, model_name: str, max_length: int, result: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    import transformers

    from GLPFT import train as glpft
    from GLPFT.data import build_dataset
    from GLPFT.models import resolve_model
    from process_data.protocol import MODEL_INPUT_PREFIX

    path = resolve_model(model_name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, padding_side="right")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset = build_dataset(data, tokenizer, max_length, seed=SEED)
    dataset = dataset.select_columns(["input_ids", "labels"])
    tokens = sum(len(ids) for ids in dataset["input_ids"])
    probe, after = Probe(), {}

    def on_end(model: Any) -> None:
        after["loss"], after["trained"] = evaluate(model, dataset)

    if key == "base":  # the model before training, evaluated the same way
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        on_end(model)
        result.write_text(json.dumps(after))
        return

    batch, accumulation = (1, 2) if key == "e" else (BATCH, 1)
    common: dict[str, Any] = {
        "output_dir": str(result.parent / f"out_{key}"),
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": accumulation,
        "num_train_epochs": 1,
        "learning_rate": LR,
        "seed": SEED,
        "bf16": BF16,
        "use_cpu": True,
        "save_strategy": "no",
        "logging_strategy": "steps",
        "logging_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
    }
    callback = make_callback(probe, on_end)
    if key in OURS:
        flags = ["--model_name_or_path", model_name, "--data_path", data]
        flags += ["--model_max_length", str(max_length), *OURS[key]]
        for name, value in common.items():
            flags += [f"--{name}", str(value)]
        glpft.train(*glpft.parse_args(flags), callbacks=[callback])
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model.config.use_cache = False
        if key == "c":
            from datasets import Dataset
            from trl import SFTConfig, SFTTrainer

            records = json.loads(Path(data).read_text(encoding="utf-8"))
            rows = [
                {"prompt": MODEL_INPUT_PREFIX + r["input"], "completion": r["target"]}
                for r in records
            ]
            trainer: Any = SFTTrainer(
                model=model,
                args=SFTConfig(**common, max_length=max_length),
                train_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
                callbacks=[callback],
            )
        else:
            if key == "b":
                strategy, collator = "random", PadToMax(tokenizer.pad_token_id, max_length)
            else:
                strategy = "group_by_length"
                collator = transformers.DataCollatorForSeq2Seq(tokenizer, padding=True)
            trainer = transformers.Trainer(
                model=model,
                args=transformers.TrainingArguments(**common, train_sampling_strategy=strategy),
                train_dataset=dataset,
                data_collator=collator,
                processing_class=tokenizer,
                callbacks=[callback],
            )
        trainer.train()
    if not probe.rows:
        sys.exit(f"bench_train: {key}: the forward hook saw no call; nothing was measured")
    if key != "c" and (probe.real, probe.rows) != (tokens, len(dataset)):
        sys.exit(
            f"bench_train: {key} trained {probe.rows} rows and {probe.real} real tokens, "
            f"not one epoch of the {len(dataset)} samples ({tokens} tokens)"
        )
    summary = {
        "step_seconds": [b - a for a, b in zip(probe.stamps, probe.stamps[1:], strict=False)],
        "tokens": [probe.real, probe.positions, probe.rows],
        "losses": probe.losses,
        **after,
    }
    result.write_text(json.dumps(summary))


# --------------------------------------------------------------------------------------------
# Parent process: samples, runs, report
# --------------------------------------------------------------------------------------------


@dataclass
class Measure:
    key: str
    step_seconds: list[float]  # the optimizer steps only
    real: int  # real tokens the model computed (each sample once in one epoch)
    positions: int  # all positions the model computed, padding included
    rows: int  # samples trained
    losses: list[float]  # the logged training loss of every step
    loss: float  # after training, per trained token, on all samples tokenized our way
    trained: int  # the tokens that loss is over
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
    if not 0 < count <= len(records):
        sys.exit(f"bench_train: {DATA} has {len(records)} samples; asked for {count}")
    size = [len(r["input"]) + len(r["target"]) for r in records]
    order = sorted(range(len(records)), key=size.__getitem__)
    picked = sorted(order[int((k + 0.5) * len(order) / count)] for k in range(count))
    return [records[i] for i in picked]


def _busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq


def run_child(key: str, data: Path, args: argparse.Namespace, work: Path) -> dict:
    """Run one configuration in a child process; its result, with ``rss`` and ``others``."""
    result, log = work / f"{key}.json", work / "log.txt"
    cmd = [sys.executable, __file__, "--run", key, "--data", str(data), "--result", str(result)]
    cmd += ["--model", args.model, "--max_length", str(args.max_length)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    deadline = time.monotonic() + args.wait_idle
    if args.wait_idle > 0 and psutil.cpu_percent(interval=5) > 15:
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
    return {**json.loads(result.read_text()), "rss": peak, "others": max(others, 0.0)}


def measure(key: str, r: dict) -> Measure:
    real, positions, rows = r["tokens"]
    return Measure(
        key,
        r["step_seconds"],
        real,
        positions,
        rows,
        r["losses"],
        r["loss"],
        r["trained"],
        r["rss"],
        r["others"],
    )


def best_plain(runs: dict[str, Measure]) -> Measure | None:
    """The faster of the plain HF Trainer configurations that ran."""
    plain = [runs[k] for k in PLAIN_HF if k in runs]
    return max(plain, key=lambda m: m.rate) if plain else None


def table(runs: dict[str, Measure]) -> str:
    lines = [
        "| configuration | rows | real tokens | padding computed | s/step | real tokens/s "
        "| peak RSS (GiB) | loss after | a / this |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in runs.values():
        ratio = f"{runs['a'].rate / m.rate:.2f}×" if "a" in runs else "–"
        lines.append(
            f"| {CONFIGS[m.key]} | {m.rows} | {m.real:,} | {m.padding:.0%} "
            f"| {m.seconds / len(m.step_seconds):.1f} | {m.rate:.0f} "
            f"| {m.rss / GIB:.1f} | {m.loss:.4f} | {ratio} |"
        )
    return "\n".join(lines)


def verdicts(runs: dict[str, Measure]) -> str:
    a, parts = runs["a"], []
    for keys, target in TARGETS.items():
        other = best_plain(runs) if keys == PLAIN_HF else runs.get(keys)
        if other is None:
            continue
        ratio = a.rate / other.rate
        met = "met" if ratio >= target else f"missed, {ratio / target:.0%} of it"
        best = " (the better plain HF Trainer)" if keys == PLAIN_HF else ""
        parts.append(f"a/{other.key}{best} = {ratio:.2f}× (target ≥ {target:g}×: {met})")
    if "c" in runs:
        met = "met" if a.rss <= runs["c"].rss else "missed"
        parts.append(
            f"peak RSS {a.rss / GIB:.1f} GiB against TRL's {runs['c'].rss / GIB:.1f} GiB "
            f"(target: no higher; {met})"
        )
    return "; ".join(parts) + "."


def ablation(runs: dict[str, Measure]) -> str:
    """Where ours gains over (e): the sparse LM head (a against a-head), and the rest
    (a-head against e), worded from the numbers."""
    a, head, rbr, e = (runs[k] for k in ("a", "a-head", "a-rbr", "e"))
    total, from_head, rest = a.rate / e.rate, a.rate / head.rate, head.rate / e.rate
    if rest < 1.05:
        where = (
            f"so the margin over (e) comes from the sparse LM head alone: without it, ours "
            f"runs at {rest:.2f}× (e), the same unpadded, mask-free rows"
        )
    else:
        where = (
            f"so the sparse LM head accounts for {from_head:.2f}× of the {total:.2f}× over (e) "
            f"and the rest of ours for {rest:.2f}× (a-head against e)"
        )
    return (
        f"The ablations: without row by row (a-rbr), ours computes the padded batches "
        f"({rbr.padding:.0%} of the positions are padding) under an attention mask, and "
        f"(a) is {a.rate / rbr.rate:.2f}× as fast; without the sparse LM head (a-head), "
        f"{from_head:.2f}×. Ours is {total:.2f}× (e), and a-head is {rest:.2f}× (e), {where}."
    )


def interpretation(runs: dict[str, Measure], base: dict, max_length: int) -> str:
    """What the numbers say, worded from the numbers themselves."""
    a, b, c, d, e = (runs[k] for k in "abcde")
    trl = (
        f"TRL keeps the start of over-long samples and drops those left without a target, so "
        f"it trained {c.rows} rows and {c.real:,} real tokens (ours {a.rows} and "
        f"{a.real:,}), without the costliest samples: a/c compares unequal work, in TRL's favour"
        if c.real < 0.95 * a.real
        else f"TRL trained {c.real:,} real tokens, ours {a.real:,}"
    )
    low, high = min(m.loss for m in runs.values()), max(m.loss for m in runs.values())
    change = abs(base["loss"] - statistics.mean(m.loss for m in runs.values()))
    alike = (
        "the runs train alike"
        if high - low <= max(0.2 * change, 0.005)
        else f"the spread is {(high - low) / max(change, 1e-9):.0%} of what training changed"
    )
    return (
        f"Against (b), the gain is padding: α-UMi pads every sample to {max_length} tokens "
        f"({b.padding:.0%} of the positions computed are padding) and computes the "
        "49k-vocabulary logits at all of them. (d) computes the batches that ours collates "
        f"({d.padding:.0%} padding, the same sampler), but on CPU ours trains each row alone "
        "(`--row_by_row auto`): no padding is computed, no attention mask is passed, so SDPA "
        "takes its causal fast path, where (d)'s padding mask makes it compute the masked "
        "triangle too and keep the score matrix for the backward pass; only one row's "
        "activations are alive at a time, which is where the memory goes. Ours also computes "
        "logits and loss only at the positions that predict a trained token "
        f"({a.trained / a.real:.0%} of the real tokens here), where (d) and (e) build the "
        "logits of every position and upcast them to fp32. (e) avoids padding the plain way, "
        f"one sample per forward pass ({e.padding:.0%} padding). {ablation(runs)} TRL's "
        "defaults (c) avoid the full logits too (a fused LM head), but turn gradient "
        "checkpointing on (one more forward pass per step, which lowers its peak memory) and "
        f"do not group by length ({c.padding:.0%} padding); {trl}. After training, the loss "
        f"on the samples is between {low:.4f} and {high:.4f} ({base['loss']:.4f} before): "
        f"{alike}. Targets: {verdicts(runs)}"
    )


def report(runs: dict[str, Measure], base: dict, args: argparse.Namespace, minutes: float) -> str:
    flags = f"--num_samples {args.num_samples} --max_length {args.max_length}"
    flags += f" --repeat {args.repeat}"
    others = max(m.others for m in runs.values())
    n = args.num_samples
    mega = max(min(n // (4 * BATCH), 50), 1) * BATCH  # transformers' get_length_grouped_indices
    grouping = (
        "so it does not group at all"
        if mega == BATCH
        else f"{n // mega} of them, sorted by length within each"
    )
    return (
        f"{SECTION}\n\n{datetime.date.today()}, {machine()}; torch {version('torch')}, "
        f"transformers {version('transformers')}, trl {version('trl')}.\n\n"
        f"```bash\npython benchmarks/bench_train.py {flags} --write_results\n```\n\n"
        f"SmolLM2-135M ({PRECISION}; CPU), batch {BATCH} (for (e), 1 with 2 "
        f"accumulation steps), `model_max_length` {args.max_length}, one epoch "
        f"({n // BATCH} optimizer steps), learning rate {LR:g}, seed {SEED}, no checkpoints, "
        f"the loss logged every step. The data are {n} samples of α-UMi's example "
        "`train_planner.json` (79 samples; process_data's output is byte-identical, so the "
        "file is read directly), taken at evenly spaced quantiles of its length, so every "
        "configuration trains one epoch of the same samples. (b), (d) and (e) train on our "
        "token sequences (over-long prompts lose their start); TRL (c) tokenizes on its own. "
        f"On {n} samples, the length grouping of (a) and (d) shuffles the samples and cuts "
        f"them into mega-batches of {mega} samples ({grouping}); transformers makes them "
        f"{50 * BATCH} samples long from {200 * BATCH} samples on, so a real training set "
        "loses more padding to grouping than this one. A forward pre-hook on each run's model "
        "counts what it computed: rows, positions, and the real tokens among them "
        "(attention-mask tokens, or every token of a call without a mask); padding computed "
        "is the rest. Times cover the optimizer steps only (no loading or tokenization); "
        "s/step is the mean. Loss after is each trained model's loss per trained token on "
        f"all {n} samples tokenized our way (as trained; {base['loss']:.4f} before "
        "training). Peak RSS is that of the child process, model loading and that evaluation "
        f"included. Other processes took at most {others:.0%} of the CPU during a run; the "
        f"benchmark took {minutes:.0f} minutes.\n\n{table(runs)}\n\n"
        f"{interpretation(runs, base, args.max_length)}\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_samples", type=int, default=64, help="samples (one epoch)")
    parser.add_argument("--max_length", type=int, default=4096, help="model_max_length")
    parser.add_argument(
        "--configs", default=",".join(CONFIGS), help=f"comma-separated, of {','.join(CONFIGS)}"
    )
    parser.add_argument("--model", default="smollm2-135m", help="a GLPFT.models alias or path")
    parser.add_argument("--repeat", type=int, default=1, help="runs per configuration (median)")
    parser.add_argument("--wait_idle", type=float, default=300, help="seconds, before each run")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--write_results", action="store_true", help=f"update {RESULTS.name}")
    parser.add_argument("--run", choices=[*CONFIGS, "base"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return run_config(args.run, args.data, args.model, args.max_length, args.result)
    keys = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown configurations {unknown}; choose from {','.join(CONFIGS)}")
    if args.write_results and (set(keys) != set(CONFIGS) or args.model != "smollm2-135m"):
        parser.error("--write_results needs every configuration and the default model")

    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    data = work / "train_planner_subset.json"
    data.write_text(json.dumps(pick_samples(args.num_samples)), encoding="utf-8")
    print(f"{args.num_samples} samples in {data}; log: {work / 'log.txt'}", file=sys.stderr)
    keys = [k for k in CONFIGS if k in keys]
    runs: dict[str, list[Measure]] = {k: [] for k in keys}
    try:
        base = run_child("base", data, args, work)
        print(f"before training: loss {base['loss']:.4f}", file=sys.stderr)
        for _ in range(args.repeat):  # round-robin: slow phases of the machine hit all alike
            for key in keys:
                m = measure(key, run_child(key, data, args, work))
                runs[key].append(m)
                print(
                    f"{key}: {m.rate:.0f} real tokens/s, {m.seconds / len(m.step_seconds):.1f} "
                    f"s/step, loss after {m.loss:.4f}; other processes took {m.others:.0%} "
                    "of the CPU",
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
    if {"a", "a-head", "a-rbr", "e"} <= set(best):
        print(ablation(best))
    print(f"bench_train: {minutes:.1f} minutes", file=sys.stderr)
    if args.write_results:
        write_results(report(best, base, args, minutes), SECTION)
        print(f"wrote {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
