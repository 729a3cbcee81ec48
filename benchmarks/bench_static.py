"""Static inference benchmark: our pipeline against the α-UMi way, and the LoRA memory saving.

Throughput (step samples/s, end to end, model loading included), on the step samples of the
first ``--num_trajectories`` dev trajectories, with the same model in all three roles (three
paths, so that each role is a checkpoint of its own) and the same ``max_new_tokens``:

* ours: ``HFModels`` + ``run_steps`` as ``infer_pipeline`` runs them, with its defaults: the
  three role models stay loaded, greedy, each prompt prefilled once reusing the KV cache of
  the prefix it shares with the previous one, then decoded in batches of 16 (``--padded``:
  classic batches sorted by length, left-padded, prefilled together);
* the α-UMi way (its ``infer_pipeline.py``): batch 1, sampling, and each role model loaded,
  used on all of its samples, and unloaded in turn (planner, then caller, then summarizer).

Both use the same prompts and truncation (our ``generate_batched``), so the difference is the
batching, the decoding and the model lifecycle. Each runs in a child process, which also
reports its peak RSS.

Memory (``--memory``): peak RSS after loading the three roles and answering one prompt each,
as three checkpoints (``HFModels``) and as one base with three LoRA adapters
(``LoRAModels``, GLPFT stage 2 with ``--lora_r 8 --lora_target_modules all-linear``).

    python benchmarks/bench_static.py [--num_trajectories 40] [--max_new_tokens 32]
        [--batch_size 16] [--padded] [--dtype auto|bf16|fp32] [--memory] [--write_results]
    python benchmarks/bench_static.py --num_trajectories 3 --max_new_tokens 8   # smoke test
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_prepro import machine, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEV = ROOT.parent / "shared" / "data" / "alpha_umi" / "static_eval" / "out_of_domain_dev.json"
SECTION = "## Static inference (inference_utils)"
ROLES = ("planner", "caller", "summarizer")
PROMPT_TYPES = {
    "planner": "toolbench_planner",
    "caller": "toolbench_caller",
    "summarizer": "toolbench_summarizer",
}
TARGET = 5.0


# --------------------------------------------------------------------------------------------
# Child process: one way of running
def samples(num_trajectories: int) -> list[dict]:
    from inference_utils.static.steps import step_samples

    records = json.loads(DEV.read_text())[:num_trajectories]
    return list(step_samples(records))


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ours(args: argparse.Namespace, paths: dict[str, str]) -> dict:
    from inference_utils.generation import GenerationSettings, HFModels

    steps = samples(args.num_trajectories)
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        reuse_prefixes=not args.padded,
        dtype=args.dtype,
    )
    start = time.perf_counter()
    done = run_all(steps, HFModels(paths, settings))
    return {"seconds": time.perf_counter() - start, "outputs": outputs(done)}


def run_all(steps: list[dict], backend) -> list[dict]:
    """Every step's chain on the pipeline's driver, as one batch per role."""
    from inference_utils.static.infer import run_steps

    done: dict[int, dict] = {}
    todo = dict(enumerate(steps))
    failed = run_steps(todo, backend, PROMPT_TYPES, False, False, done.__setitem__)
    if failed:
        raise RuntimeError(f"{len(failed)} steps failed: {next(iter(failed.values()))}")
    return [done[i] for i in range(len(steps))]


class LoadPerRole:
    """A batched role backend the α-UMi way: each call loads the role's model, answers its
    prompts one at a time, and unloads it."""

    batched, concurrency = True, 1

    def __init__(self, paths: dict[str, str], settings) -> None:
        self.paths, self.settings = paths, settings

    def generate(self, role: str, requests):
        from inference_utils.backends import ModelResult
        from inference_utils.generation import _load, generate_batched

        model, tokenizer = _load(self.paths[role], self.settings)
        prompts = [r.prompt for r in requests]
        texts = generate_batched(model, tokenizer, prompts, self.settings)
        del model, tokenizer
        gc.collect()
        return [ModelResult(t) for t in texts]  # cleaned as α-UMi cleans them

    def release(self, sessions) -> None:
        pass

    def close(self) -> None:
        pass


def child_alpha(args: argparse.Namespace, paths: dict[str, str]) -> dict:
    from inference_utils.generation import GenerationSettings

    steps = samples(args.num_trajectories)
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        batch_size=1,
        reuse_prefixes=False,
        do_sample=True,
        dtype=args.dtype,
    )
    start = time.perf_counter()
    done = run_all(steps, LoadPerRole(paths, settings))  # planner, then caller, then summarizer
    return {"seconds": time.perf_counter() - start, "outputs": outputs(done)}


def outputs(done: list[dict]) -> dict:
    """How much was generated: step samples, model calls, output characters."""
    calls = len(done) + sum("planner_prediction" in s for s in done)
    chars = sum(len(s.get("planner_output", "")) + len(s["predictions"]) for s in done)
    return {"steps": len(done), "calls": calls, "output_chars": chars}


def child_memory(args: argparse.Namespace, paths: dict[str, str], adapters: dict) -> dict:
    from inference_utils.backends import ModelRequest
    from inference_utils.generation import GenerationSettings, HFModels, LoRAModels

    settings = GenerationSettings(max_new_tokens=4, dtype=args.dtype)
    prompt = samples(1)[0]["model_input"]
    models = LoRAModels(adapters, settings) if args.child == "lora" else HFModels(paths, settings)
    for role in ROLES:
        models.generate(role, [ModelRequest(prompt=prompt)])
    return {"peak_mib": peak_mib()}


# --------------------------------------------------------------------------------------------
# Parent
def role_paths(model: str, where: Path) -> dict[str, str]:
    """Three paths to the same checkpoint, so that each role is loaded as its own model."""
    from GLPFT.models import resolve_model

    local = Path(resolve_model(model)).resolve()
    paths = {}
    for role in ROLES:
        link = where / f"{role}_model"
        link.symlink_to(local, target_is_directory=True)
        paths[role] = str(link)
    return paths


def make_adapters(base: str, where: Path) -> dict[str, str]:
    """A random (non-zero) LoRA adapter per role, as GLPFT stage 2 saves them."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = {}
    for k, role in enumerate(ROLES):
        torch.manual_seed(k)
        model = AutoModelForCausalLM.from_pretrained(base)
        config = LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)
        get_peft_model(model, config).save_pretrained(where / role)
        out[role] = str(where / role)
    return out


def run_child(args: argparse.Namespace, child: str, paths: dict, adapters: dict | None = None):
    cmd = [sys.executable, __file__, "--child", child, "--paths", json.dumps(paths)]
    cmd += ["--adapters", json.dumps(adapters or {})]
    cmd += ["--num_trajectories", str(args.num_trajectories)]
    cmd += ["--max_new_tokens", str(args.max_new_tokens), "--batch_size", str(args.batch_size)]
    cmd += ["--dtype", args.dtype] + (["--padded"] if args.padded else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"bench_static: {child} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, ours: dict, alpha: dict, memory: dict | None) -> str:
    rate = {k: r["outputs"]["steps"] / r["seconds"] for k, r in (("ours", ours), ("alpha", alpha))}
    ratio = rate["ours"] / rate["alpha"]
    lines = [
        SECTION,
        "",
        f"Measured {datetime.date.today()} on {machine()}.",
        "",
        "```bash",
        "python benchmarks/bench_static.py "
        f"--num_trajectories {args.num_trajectories} --max_new_tokens {args.max_new_tokens} "
        f"--batch_size {args.batch_size}"
        + (" --padded" if args.padded else "")
        + f" --dtype {args.dtype}"
        + (" --memory" if memory else "")
        + " --write_results",
        "```",
        "",
        f"SmolLM2-135M-Instruct in all three roles, {ours['outputs']['steps']} step samples "
        f"of the first {args.num_trajectories} dev trajectories, max_new_tokens "
        f"{args.max_new_tokens}, dtype {args.dtype}; model loading included.",
        "",
        "| run | step samples/s | seconds | model calls | peak RSS |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, key, r in (
        (f"ours ({_batching(args)}, greedy, roles stay loaded)", "ours", ours),
        ("α-UMi way (batch 1, sampling, load/use/unload per role)", "alpha", alpha),
    ):
        lines.append(
            f"| {name} | {rate[key]:.2f} | {r['seconds']:.0f} | {r['outputs']['calls']} | "
            f"{r['peak_mib'] / 1024:.2f} GiB |"
        )
    verdict = "met" if ratio >= TARGET else "not met"
    lines += [
        "",
        f"Ratio ours / α-UMi way: **{ratio:.2f}×** (target {TARGET:.0f}×: {verdict}).",
        "",
        f"Of the planner's prompt tokens, {shared_fraction(args):.0%} repeat "
        "the start of the previous step's prompt (tool documents and history): ours computes "
        "them once, the α-UMi way for every step. On CPU, prefilling is compute-bound and "
        "takes most of the α-UMi way's time; decoding in batches then amortises reading the "
        "weights for each new token. Ours peaks higher in memory because its three role "
        "models stay loaded and a run of prompts decodes from one cache, bounded by "
        "`--max_batch_tokens`.",
    ]
    if memory:
        saving = 1 - memory["lora"] / memory["hf"]
        lines += [
            "",
            "| three roles as | peak RSS |",
            "|---|---:|",
            f"| three checkpoints (`HFModels`) | {memory['hf']:.0f} MiB |",
            f"| one base + three LoRA adapters (`LoRAModels`) | {memory['lora']:.0f} MiB |",
            "",
            f"LoRA adapters on one base use {saving:.0%} less memory than three checkpoints.",
        ]
    return "\n".join(lines) + "\n"


def _batching(args: argparse.Namespace) -> str:
    if args.padded:
        return f"batches of {args.batch_size} sorted by length, left-padded"
    return f"shared prefixes prefilled once, decoded in batches of {args.batch_size}"


def shared_fraction(args: argparse.Namespace) -> float:
    """Share of the planner's prompt tokens that start the previous step's prompt too."""
    from transformers import AutoTokenizer

    from GLPFT.models import resolve_model
    from inference_utils.generation import common_prefix
    from process_data.protocol import MODEL_INPUT_PREFIX

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    ids = [
        tokenizer(MODEL_INPUT_PREFIX + s["model_input"])["input_ids"]
        for s in samples(args.num_trajectories)
    ]
    shared = sum(common_prefix(a, b) for a, b in zip(ids, ids[1:], strict=False))
    return shared / sum(len(x) for x in ids)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_trajectories", type=int, default=40)
    p.add_argument("--max_new_tokens", type=int, default=32)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--padded", action="store_true", help="ours with classic padded batches")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"))
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--only", choices=("ours", "alpha"), help="run one way only")
    p.add_argument("--memory", action="store_true", help="also measure the LoRA saving")
    p.add_argument("--write_results", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--paths", help=argparse.SUPPRESS)
    p.add_argument("--adapters", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        paths, adapters = json.loads(args.paths), json.loads(args.adapters)
        if args.child in ("hf", "lora"):
            result = child_memory(args, paths, adapters)
        else:
            result = (child_ours if args.child == "ours" else child_alpha)(args, paths)
            result["peak_mib"] = peak_mib()
        print(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="bench_static_") as tmp:
        paths = role_paths(args.model, Path(tmp))
        results = {}
        for way in ("ours", "alpha"):
            if args.only in (None, way):
                results[way] = run_child(args, way, paths)
                r = results[way]
                print(
                    f"{way}: {r['outputs']['steps']} steps in {r['seconds']:.1f} s, "
                    f"peak {r['peak_mib']:.0f} MiB",
                    file=sys.stderr,
                )
        memory = None
        if args.memory:
            adapters = make_adapters(paths["planner"], Path(tmp) / "adapters")
            memory = {
                kind: run_child(args, kind, paths, adapters)["peak_mib"] for kind in ("hf", "lora")
            }
            print(f"memory: {memory}", file=sys.stderr)
    if len(results) == 2:
        text = report(args, results["ours"], results["alpha"], memory)
        print(text)
        if args.write_results:
            write_results(text, SECTION)


if __name__ == "__main__":
    main()
