"""Training that visibly teaches: the four α-UMi roles trained on CPU on a larger toy sample,
untrained against trained, on held-out steps and held-out queries.

Data: ``process_data.sample_data`` writes a training sample (``--train_per_group`` DFS
answers per group, seed 0) and a held-out one (``--heldout_per_group``, seed 1): the same toy
tools, new draws (cities, amounts, currencies, the tools' outputs). A held-out query whose text
is also a training query is dropped with its answer file (the one-call queries of the joke and
recipe tools have a handful of wordings, so they repeat); the counts are reported.
``process_data`` turns the training answers into α-UMi's training sets and the held-out answers
into stage-2 steps.

Training: ``scripts/train_glpft.sh``, GLPFT's two stages: the backbone on every role's data
(full weights), then the planner, caller and summarizer as LoRA adapters on it. The optimizer
steps of each (``--steps``) are this benchmark's, sized so that the four take at most 30
minutes on 2 cores; each training's time and loss curve are recorded.

Held-out steps: static evaluation (``inference_utils.static.infer`` and ``evaluate``) of every
held-out step, with untrained roles (the base model in each role) and with the trained ones.

Held-out queries: our tool server, with the held-out queries' tool outputs imported as a
StableToolBench cache (a call with other arguments gets the offline simulator's answer), and
the real-time agent (α-UMi's roles, ``CoT@1``) on every held-out query. An answer is correct
when it ends in ``Finish`` with ``give_answer`` and its final answer holds every fact the tools
returned (``sample_data.reference_steps``). ToolEval's pass rate comes from ``--judge``:
``gguf`` (the default GGUF, SmolLM2-135M-Instruct, on a llama.cpp server: its verdicts mean
little), ``none``, or an OpenAI-compatible URL with ``--judge_model``.

    python benchmarks/bench_learning.py [--out outputs/bench_learning] [--write_results]
    python benchmarks/bench_learning.py --smoke      # a few steps of everything, minutes

A run resumes in ``--out``: finished trainings, evaluations and agent answers are kept;
``--fresh`` starts over. A run with other settings in the same folder is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_agent import gguf_judge
from bench_prepro import free_port, machine, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SECTION = "## Training that visibly teaches (benchmarks/bench_learning.py)"
PY = sys.executable
STEPS = {"backbone": 60, "planner": 72, "caller": 15, "summarizer": 28}
SMOKE_STEPS = {"backbone": 2, "planner": 1, "caller": 1, "summarizer": 1}
TARGETS = {"plan_em": 0.9, "action_em": 0.8, "correct_finish": 0.5}
STATIC_METRICS = {  # metrics.json's keys (α-UMi's names), as the paper's tables name them
    "plan_em": "Plan ACC",
    "action_em": "Act EM",
    "f1": "Arg F1",
    "hallu_rate": "hallucination rate",
    "rouge": "R-L",
}
CALL_PLAN, GIVE_UP_PLAN = "call", "give up"  # the static metrics' names of two gold plans
LABELS = {"untrained": "untrained (the base model in each role)", "trained": "trained (GLPFT)"}
CHART = "learning_heldout.png"
LOSS_CHART = "learning_loss.png"

from inference_utils.run_report import loss_chart  # noqa: E402
from process_data.protocol import (  # noqa: E402
    CALLER,
    GIVE_ANSWER,
    HALLUCINATED_NAME,
    MULTI_ROLES,
    ROLES,
    api_name_of,
    read_finish,
    standardize,
)
from process_data.sample_data import generate, reference_steps  # noqa: E402

MODELS = ROLES  # the backbone (stage 1), then the three roles (stage 2)


def run(cmd: list[str], log: Path) -> None:
    """Run ``cmd`` with its output in ``log``; on failure, stop with the log's end."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        code = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"bench_learning: {' '.join(cmd[:4])} ... exited with {code}\n{tail}")


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def heldout_queries(work: Path) -> list[dict]:
    """The held-out queries (group, id, text), as written by :func:`make_data`."""
    return json.loads((work / "heldout_queries.json").read_text())


def make_data(work: Path, train_per_group: int, heldout_per_group: int) -> dict:
    """Both samples, the overlap dropped, and process_data's output for each."""
    done = work / "data_counts.json"
    if done.exists():
        return json.loads(done.read_text())
    train_src, heldout_src = work / "train_src", work / "heldout_src"
    for folder in (train_src, heldout_src):
        shutil.rmtree(folder, ignore_errors=True)
    generate(train_src, seed=0, per_group=train_per_group)
    generate(heldout_src, seed=1, per_group=heldout_per_group)

    def query_of(answer: Path) -> str:
        return json.loads(answer.read_text())["answer_generation"]["query"]

    seen = {query_of(answer) for answer in sorted((train_src / "answer").rglob("*.json"))}
    for answer in sorted((heldout_src / "answer").rglob("*.json")):
        if query_of(answer) in seen:  # no step of a query seen in training is held out
            answer.unlink()
    kept, dropped = [], 0
    for file in sorted((heldout_src / "test_instruction").glob("*.json")):
        group = file.stem.split("_")[0]
        queries = json.loads(file.read_text())
        fresh = [q for q in queries if q["query"] not in seen]
        dropped += len(queries) - len(fresh)
        file.write_text(json.dumps(fresh, indent=2))
        kept += [{"group": group, "query_id": q["query_id"], "query": q["query"]} for q in fresh]
    # the CoT answers (ids past the DFS ones) have no test-instruction record: steps only
    (work / "heldout_queries.json").write_text(json.dumps(kept, indent=2))
    for src, name in ((train_src, "train_data"), (heldout_src, "heldout_data")):
        cmd = [PY, "-m", "process_data.toolbench", "all", "--answer_dir", str(src / "answer")]
        cmd += ["--output_dir", str(work / name), "--num_workers", "2"]
        code = subprocess.call(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if code not in (0, 3):  # 3: some answers rejected (the sample holds invalid ones)
            raise SystemExit(f"bench_learning: process_data on {src} exited with {code}")
    train = json.loads((work / "train_data" / "summary.json").read_text())
    steps = json.loads((work / "heldout_data" / "raw_data" / "raw_data_stage_2.json").read_text())
    counts = {
        "train_answers": len(list((train_src / "answer").rglob("*.json"))),
        "train_samples": {m: len(json.loads((work / "train_data" / f"train_{m}.json").read_text()))
                          for m in MODELS},
        "train_summary": train.get("stages", train),
        "heldout_queries": len(kept),
        "heldout_dropped_as_seen": dropped,
        "heldout_answers": len(list((heldout_src / "answer").rglob("*.json"))),
        "heldout_conversations": len(steps),
    }  # fmt: skip
    done.write_text(json.dumps(counts, indent=2))
    return counts


def served_steps(work: Path) -> dict[tuple[str, int], list[dict]]:
    """Each held-out query's reference steps as the tool server answers them. Queries that
    make the same call (one API, the same arguments) drew their outputs apart, but a server
    has one answer per call: the last such query's, in file order. A correct final answer
    states the facts of the answer served."""
    from inference_utils.toolserver.cache import canonical

    def call(step: dict) -> tuple[str, str]:
        return step["name"], canonical(json.loads(step["args"]))

    steps = {
        (q["group"], q["query_id"]): reference_steps(q["group"], q["query_id"], seed=1)
        for q in heldout_queries(work)
    }
    served = {call(step): step for query in steps.values() for step in query}
    return {key: [served[call(step)] for step in query] for key, query in steps.items()}


def write_tool_cache(work: Path, root: Path) -> int:
    """The held-out queries' tool outputs in StableToolBench's cache layout; the number of
    answers written."""
    from inference_utils.toolserver.cache import stb_file
    from inference_utils.toolserver.tools import ApiKey

    files: dict[Path, dict[str, dict]] = {}
    for query in served_steps(work).values():
        for step in query:
            key = ApiKey("Toy", standardize(step["tool"]), api_name_of(step["api"]))
            answer = {"error": "", "response": step["out"]}
            files.setdefault(stb_file(root, key), {})[str(json.loads(step["args"]))] = answer
    for path, records in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=2))
    return sum(len(r) for r in files.values())


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train(work: Path, steps: dict[str, int], batch: int, bf16: bool) -> dict[str, dict]:
    """GLPFT's two stages, one training at a time (so each has its own number of steps)."""
    out = work / "glpft"
    common = ["--per_device_train_batch_size", str(batch), "--save_strategy", "no"]
    common += ["--logging_steps", "2", "--model_max_length", "1024", *(["--bf16"] * bf16)]
    for model in MODELS:
        if (out / model / "train_summary.json").exists():
            continue
        print(f"-- training {model}: {steps[model]} steps of {batch}", flush=True)
        cmd = ["scripts/train_glpft.sh", "--data", str(work / "train_data"), "--out", str(out)]
        if model == "backbone":
            cmd += ["--roles", ""]
            lr = ["--learning_rate", "1e-4", "--warmup_ratio", "0.1"]
        else:
            cmd += ["--lora", "16", "--roles", model, "--skip_stage1"]
            lr = ["--learning_rate", "1e-3", "--warmup_ratio", "0.1"]
            lr += ["--lora_target_modules", "all-linear"]
        run(
            [*cmd, "--", "--max_steps", str(steps[model]), *lr, *common],
            work / f"train_{model}.log",
        )
    return {m: json.loads((out / m / "train_summary.json").read_text()) for m in MODELS}


# --------------------------------------------------------------------------------------------
# Held-out steps
# --------------------------------------------------------------------------------------------


def role_flags(work: Path, label: str) -> list[str]:
    flags = []
    for role in MULTI_ROLES:
        model = "smollm2-135m" if label == "untrained" else str(work / "glpft" / role)
        flags += [f"--{role}_model_name_or_path", model]
        if label == "trained":
            flags += [f"--{role}_use_lora", "True"]
    return flags


def static_eval(work: Path, label: str, bf16: bool, limit: int | None) -> dict:
    out = work / "static" / label
    metrics = out / "metrics.json"
    if not metrics.exists():
        print(f"-- static evaluation, {label} roles", flush=True)
        data = work / "heldout_data" / "raw_data" / "raw_data_stage_2.json"
        cmd = [PY, "-m", "inference_utils.static.infer", "--data_path", str(data)]
        cmd += ["--output_dir", str(out), "--max_new_tokens", "96", "--max_input_length", "1024"]
        cmd += ["--per_device_eval_batch_size", "8", *role_flags(work, label)]
        cmd += ["--bf16_full_eval", str(bf16)]
        if limit:
            cmd += ["--num_infer_samples", str(limit)]
        t0 = time.monotonic()
        run(cmd, work / f"static_{label}.log")
        seconds = time.monotonic() - t0
        run(
            [PY, "-m", "inference_utils.static.evaluate", "--input_path",
             str(out / "predictions.json"), "--output_path", str(metrics)],
            work / f"evaluate_{label}.log",
        )  # fmt: skip
        (out / "seconds.json").write_text(json.dumps({"seconds": round(seconds, 1)}))
    result = json.loads(metrics.read_text())
    result["seconds"] = json.loads((out / "seconds.json").read_text())["seconds"]
    records = json.loads((out / "predictions.json").read_text())
    result["steps"] = len(records)
    per_step = json.loads((out / "metrics_per_step.json").read_text())
    calls_before = [sum(t["from"] == CALLER for t in r["history"]) for r in records]
    gold_calls = [s for s in per_step if s["ref_plan"] == CALL_PLAN]
    blind = [s for s in per_step if s["ref_plan"] == GIVE_UP_PLAN and not calls_before[s["index"]]]
    result["give_ups_before_any_call"] = len(blind)
    result["give_ups_before_any_call_right"] = sum(s["plan_correct"] for s in blind)
    result["errors"] = {  # the gold call steps missed, by why
        "concluded_early": sorted(
            calls_before[s["index"]] for s in gold_calls if s["pred_plan"] != CALL_PLAN
        ),
        "hallucination_gold": sum(s["ref_action"] == HALLUCINATED_NAME for s in gold_calls),
        "other_api": sum(
            s["pred_plan"] == CALL_PLAN
            and not s["action_correct"]
            and s["ref_action"] != HALLUCINATED_NAME
            for s in gold_calls
        ),
    }
    result["by_plan"] = {
        plan: {"steps": m["steps"], "predicted_as": m["predicted_as"]}
        for plan, m in json.loads((out / "metrics_by_plan.json").read_text()).items()
    }
    return result


# --------------------------------------------------------------------------------------------
# Held-out queries
# --------------------------------------------------------------------------------------------


def agents(work: Path, labels: list[str], bf16: bool, limit: int | None) -> dict[str, dict]:
    """The α-UMi agent (CoT@1) with each label's roles on every held-out query, one run per
    group (ids repeat across groups), against one tool server."""
    from inference_utils.server_process import ServerProcess

    cache_dir = work / "stb_cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    served = write_tool_cache(work, cache_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (work / "tools.sqlite").unlink(missing_ok=True)  # a fresh cache: imported answers only
    cmd = [PY, "-m", "inference_utils.toolserver", "--port", str(port)]
    cmd += ["--queries", str(work / "heldout_src" / "test_instruction")]
    cmd += ["--cache", str(work / "tools.sqlite"), "--import_stb_cache", str(cache_dir)]
    groups = sorted({q["group"] for q in heldout_queries(work)})
    results = {}
    with ServerProcess("tool server", cmd, f"{url}/health", work / "toolserver.log") as server:
        for label in labels:
            stats = work / "agents" / label / "run.json"
            if not stats.exists():  # a resumed agent would count no calls: run a label once
                t0 = time.monotonic()
                for group in groups:
                    print(f"-- agent, {label} roles, {group}", flush=True)
                    queries = (
                        work / "heldout_src" / "test_instruction" / f"{group}_instruction.json"
                    )
                    argv = [PY, "-m", "inference_utils.agent.run", "--queries", str(queries)]
                    argv += ["--toolserver", f"{url}/virtual", "--method", "CoT@1"]
                    argv += ["--output_dir", str(work / "agents" / label / group)]
                    argv += ["--max_new_tokens", "96", "--max_input_length", "1024"]
                    argv += ["--single_chain_max_step", "12", *role_flags(work, label)]
                    argv += ["--bf16_full_eval", str(bf16)]
                    if limit:
                        argv += ["--num_queries", str(limit)]
                    run(argv, work / f"agent_{label}_{group}.log")
                    server.check_alive()
                summaries = [
                    json.loads((work / "agents" / label / g / "summary.json").read_text())
                    for g in groups
                ]
                stats.write_text(json.dumps({
                    "llm_calls": sum(x["llm_calls"] for x in summaries),
                    "tool_calls": sum(x["tool_calls"] for x in summaries),
                    "seconds": round(time.monotonic() - t0, 1),
                }, indent=2))  # fmt: skip
            results[label] = score_answers(work, label, limit) | json.loads(stats.read_text())
            queries_run = max(1, results[label]["queries"])
            results[label]["llm_calls_per_query"] = results[label]["llm_calls"] / queries_run
            results[label]["tool_calls_per_query"] = results[label]["tool_calls"] / queries_run
    results["served_answers"] = served
    return results


def score_answers(work: Path, label: str, limit: int | None) -> dict:
    """Each held-out query's answer: ``Finish`` with ``give_answer``, and every fact of the
    tool answers served in it."""
    rows = []
    served = served_steps(work)
    held_out = heldout_queries(work)
    for group in sorted({q["group"] for q in held_out}):
        folder = work / "agents" / label / group
        queries = [q for q in held_out if q["group"] == group]
        for q in queries[:limit] if limit else queries:
            facts = [f for step in served[group, q["query_id"]] for f in step["facts"]]
            path = folder / f"{q['query_id']}_CoT@1.json"
            final = {}
            if path.exists():
                text = json.loads(path.read_text())["answer_generation"]["final_answer"]
                final = read_finish(text) if text else {}
            answer = final.get("final_answer", "") if isinstance(final, dict) else ""
            gave = isinstance(final, dict) and final.get("return_type") == GIVE_ANSWER
            found = [f for f in facts if str(f).lower() in str(answer).lower()]
            rows.append(
                {"group": group, "query_id": q["query_id"], "finish": gave,
                 "facts": len(facts), "facts_found": len(found),
                 "correct": gave and len(found) == len(facts), "answer": answer}
            )  # fmt: skip
    return {
        "queries": len(rows),
        "finish": sum(r["finish"] for r in rows),
        "correct": sum(r["correct"] for r in rows),
        "facts_found": sum(r["facts_found"] for r in rows),
        "facts": sum(r["facts"] for r in rows),
        "rows": rows,
    }


def pass_rates(work: Path, labels: list[str], judge: str, judge_model: str | None) -> dict:
    """ToolEval's pass rate (toolbench mode, one round) of each label's answers, over every
    held-out query (a query without an answer counts as unsolved)."""
    from inference_utils.tooleval.convert import convert_dir
    from inference_utils.tooleval.pass_rate import main as pass_rate

    held_out = heldout_queries(work)
    groups = sorted({q["group"] for q in held_out})
    ids = work / "tooleval" / "test_ids"
    ids.mkdir(parents=True, exist_ok=True)
    rates = {}
    with contextlib.ExitStack() as stack:
        if judge == "gguf":
            judge, judge_model = stack.enter_context(gguf_judge(work))
        for label in labels:
            converted = work / "tooleval" / "converted" / label
            converted.mkdir(parents=True, exist_ok=True)
            for group in groups:
                data = convert_dir(work / "agents" / label / group, "CoT@1")
                (converted / f"{group}_instruction.json").write_text(json.dumps(data))
                queries = [q["query_id"] for q in held_out if q["group"] == group]
                (ids / f"{group}_instruction.json").write_text(
                    json.dumps(dict.fromkeys(map(str, queries), 0))
                )
            save = work / "tooleval" / "pass" / label
            print(f"-- ToolEval pass rate, {label} roles", flush=True)
            code = pass_rate(
                [
                    "--converted_answer_path", str(converted), "--test_ids", str(ids),
                    "--save_path", str(save), "--model", label, "--evaluate_times", "1",
                    "--evaluator", f"openai:{judge_model}", "--api_base", judge,
                    "--max_eval_threads", "1", "--request_timeout", "600",
                    "--verdict_cache", str(work / "tooleval" / "verdicts.sqlite"),
                ]
            )  # fmt: skip
            if code != 0:
                raise SystemExit(f"bench_learning: the {label} roles' pass rate exited {code}")
            solved = total = 0
            for group in groups:
                summary = save / f"{group}_instruction_{label}.summary.json"
                summary = json.loads(summary.read_text())
                solved += summary["pass_rate"] / 100 * summary["denominator"]  # a percentage
                total += summary["denominator"]
            rates[label] = solved / total if total else None
    return rates


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def chart(static: dict[str, dict], agent: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["Plan ACC", "Act EM", "Arg F1", "R-L", "correct Finish"]
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    width = 0.38
    for k, label in enumerate(("untrained", "trained")):
        m = static[label]
        a = agent[label]
        values = [m["plan_em"], m["action_em"], m["f1"], m["rouge"],
                  a["correct"] / max(1, a["queries"])]  # fmt: skip
        xs = [i + (k - 0.5) * width for i in range(len(names))]
        ax.bar(xs, values, width, label=label, color=("#c8c8c8", "#4c72b0")[k])
    for i, key in enumerate(("plan_em", "action_em", None, None, "correct_finish")):
        if key:
            ax.hlines(TARGETS[key], i - 0.45, i + 0.45, colors="#c44e52", linestyles="dashed")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("held-out steps and queries (dashed: targets)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def report(
    args, counts: dict, trainings: dict, static: dict, agent: dict, rates: dict, bf16: bool
) -> str:
    train_seconds = sum(t["seconds"] for t in trainings.values())
    lines = [
        SECTION,
        "",
        f"{datetime.date.today()}, {machine()}; CPU only.",
        "",
        "```bash",
        " ".join(["python benchmarks/bench_learning.py", *sys.argv[1:]]),
        "```",
        "",
        f"Data: {counts['train_answers']} training answer files (`sample_data`, "
        f"{args.train_per_group} DFS answers per group, seed 0) and a held-out sample "
        f"({args.heldout_per_group} per group, seed 1): {counts['heldout_queries']} held-out "
        f"queries after dropping {counts['heldout_dropped_as_seen']} whose text is also a "
        f"training query, and {static['trained']['steps']} held-out steps from their "
        f"{counts['heldout_conversations']} conversations. Training samples: "
        + ", ".join(f"{m} {n}" for m, n in counts["train_samples"].items())
        + ".",
        "",
        f"Training (`scripts/train_glpft.sh`, one call per model): batch {args.batch}, "
        f"{'bf16 autocast (this CPU computes bf16)' if bf16 else 'fp32'}, longest sample 1024 "
        "tokens, cosine schedule with 10% warmup; the backbone's full weights at 1e-4, then "
        "each role as a LoRA adapter (r=16, every linear layer) at 1e-3. Evaluation: greedy, "
        f"{'bf16' if bf16 else 'fp32'}, at most 96 new tokens.",
        "",
        "| training | samples seen | steps | first loss | last loss | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for model in MODELS:
        t = trainings[model]
        loss = (t.get("loss_history") or {}).get("loss") or [None]
        lines.append(
            f"| {model} | {t['steps'] * args.batch} | {t['steps']} | {fmt(loss[0])} | "
            f"{fmt(loss[-1])} | {t['seconds']:.0f} |"
        )
    lines += [
        f"| **all four** | | | | | **{train_seconds:.0f}** ({train_seconds / 60:.1f} min) |",
        "",
        f"![training loss]({LOSS_CHART})",
        "",
        "Held-out steps (static evaluation, greedy) and held-out queries (the real-time agent, "
        "α-UMi's roles, `CoT@1`); the static evaluation took "
        + " and ".join(f"{static[k]['seconds']:.0f} s" for k in ("untrained", "trained"))
        + ", the agent "
        + " and ".join(f"{agent[k]['seconds']:.0f} s" for k in ("untrained", "trained"))
        + " (untrained and trained):",
        "",
        "| roles | " + " | ".join(STATIC_METRICS.values())
        + " | correct Finish | Finish | facts found | pass rate | LLM calls/query |",
        "|---|" + "---:|" * (len(STATIC_METRICS) + 5),
    ]  # fmt: skip
    for label in ("untrained", "trained"):
        m, a = static[label], agent[label]
        lines.append(
            f"| {LABELS[label]} | "
            + " | ".join(fmt(m.get(k)) for k in STATIC_METRICS)
            + f" | {a['correct']}/{a['queries']} | {a['finish']}/{a['queries']} | "
            f"{a['facts_found']}/{a['facts']} | {percent(rates.get(label))} | "
            f"{a['llm_calls_per_query']:.1f} |"
        )
    for label in ("untrained", "trained"):
        plans = static[label]["by_plan"]
        only_calls = all(set(m["predicted_as"]) == {CALL_PLAN} for m in plans.values())
        lines.append(
            f"\nThe {label} planner's decisions, gold → predicted: "
            + "; ".join(
                f"{plan} ({m['steps']} steps) → "
                + ", ".join(f"{k} {v}" for k, v in sorted(m["predicted_as"].items()))
                for plan, m in plans.items()
            )
            + (
                " (an output without a decision is a call, α-UMi's rule, so its Plan ACC is "
                "the share of gold calls)."
                if only_calls
                else "."
            )
        )
    trained, a = static["trained"], agent["trained"]
    errors = trained["errors"]
    early = errors["concluded_early"]
    lines.append(
        f"\nThe trained roles' misses on gold call steps: {len(early)} routed to a conclusion "
        f"(after {', '.join(map(str, early)) or 'no'} calls made: a call still owed), "
        f"{errors['other_api']} calls of another API than the gold one, and "
        f"{errors['hallucination_gold']} gold step(s) whose call is the sample's hallucinated "
        f"name (`{HALLUCINATED_NAME}`, which no query foretells)."
    )
    blind, n = trained["give_ups_before_any_call"], trained["steps"]
    if blind:
        lines.append(
            f"\n{blind} of the {trained['by_plan'].get(GIVE_UP_PLAN, {}).get('steps', 0)} gold "
            "give-up steps come before any call (the sample's trajectories that give up at "
            "once): nothing in the query foretells them, so a planner that does not guess "
            f"reaches at most a Plan ACC of {(n - blind) / n:.3f} here."
        )
    verdicts = [
        ("Plan ACC", trained["plan_em"], TARGETS["plan_em"]),
        ("Act EM", trained["action_em"], TARGETS["action_em"]),
        ("correct Finish", a["correct"] / max(1, a["queries"]), TARGETS["correct_finish"]),
    ]
    lines += [
        "",
        f"![held-out results]({CHART})",
        "",
        "Targets: "
        + "; ".join(
            f"{name} {value:.3f} (target ≥ {target}: {'met' if value >= target else 'missed'})"
            for name, value, target in verdicts
        )
        + ".",
    ]
    if any(value < target for _, value, target in verdicts):
        plans = trained["by_plan"]
        right = sum(m["predicted_as"].get(plan, 0) for plan, m in plans.items())
        right -= trained["give_ups_before_any_call_right"]
        gold_calls = plans.get(CALL_PLAN, {}).get("steps", 0)
        hits = round(trained["action_em"] * gold_calls)
        seen = (trainings["planner"]["steps"] * args.batch) / counts["train_samples"]["planner"]
        lines += [
            "",
            f"Why a target is missed, and what it would take: the budget. The four trainings "
            f"took {train_seconds / 60:.1f} of the 30 minutes allowed on this CPU, and the "
            f"planner saw its {counts['train_samples']['planner']} samples {seen:.1f} times "
            f"over. The trained roles write their formats (hallucination rate "
            f"{trained['hallu_rate']:.3f}); what is left is what takes the most data for a "
            "135M model: counting a third call, telling two APIs of one tool apart, and (for "
            "the agent) copying every fact into the answer. Without the steps no model can "
            "foresee (the give-ups "
            "before any call, the hallucinated call), Plan ACC would be "
            f"{right}/{n - blind} = {right / max(1, n - blind):.3f} and Act EM "
            f"{hits}/{gold_calls - errors['hallucination_gold']} = "
            f"{hits / max(1, gold_calls - errors['hallucination_gold']):.3f}. More optimizer "
            "steps (`--steps`), which a GPU runs in seconds, or a larger model are what the "
            "remaining errors need; on this CPU, twice the steps take twice the time.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_learning")
    p.add_argument("--train_per_group", type=int, default=30)
    p.add_argument("--heldout_per_group", type=int, default=6)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument(
        "--steps",
        default=",".join(f"{m}={n}" for m, n in STEPS.items()),
        help="optimizer steps per training (default: %(default)s)",
    )
    p.add_argument("--judge", default="gguf", help="gguf, none, or an OpenAI-compatible URL")
    p.add_argument("--judge_model", default=None)
    p.add_argument("--smoke", action="store_true", help="a few steps, queries and samples")
    p.add_argument("--fresh", action="store_true", help="delete --out first")
    p.add_argument("--write_results", action="store_true")
    args = p.parse_args()
    steps = dict(STEPS)
    for part in filter(None, args.steps.split(",")):
        name, _, value = part.partition("=")
        if name not in steps or not value.isdigit() or int(value) < 1:
            p.error(f"--steps: {part!r} is not MODEL=N with MODEL in {', '.join(MODELS)}")
        steps[name] = int(value)
    if args.smoke:
        steps, args.train_per_group, args.heldout_per_group = SMOKE_STEPS, 4, 4
    if args.smoke and args.write_results:
        p.error("--smoke checks that every phase runs; its figures do not go into RESULTS.md")
    if args.judge not in ("gguf", "none") and not args.judge_model:
        p.error("--judge URL needs --judge_model")
    limit = 2 if args.smoke else None

    from GLPFT.train import cpu_bf16_is_native

    bf16 = cpu_bf16_is_native()
    work = args.out
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    config = {"train_per_group": args.train_per_group, "heldout_per_group": args.heldout_per_group,
              "batch": args.batch, "steps": steps, "smoke": args.smoke}  # fmt: skip
    saved = work / "config.json"
    if saved.exists() and json.loads(saved.read_text()) != config:
        raise SystemExit(
            f"bench_learning: {work} holds a run with other settings ({saved}); "
            "pass --fresh to start over or another --out"
        )
    saved.write_text(json.dumps(config, indent=2))

    t0 = time.monotonic()
    counts = make_data(work, args.train_per_group, args.heldout_per_group)
    print(f"-- data: {counts['heldout_queries']} held-out queries", flush=True)
    trainings = train(work, steps, args.batch, bf16)
    labels = ["untrained", "trained"]
    static = {label: static_eval(work, label, bf16, limit) for label in labels}
    agent = agents(work, labels, bf16, limit)
    rates = {} if args.judge == "none" else pass_rates(work, labels, args.judge, args.judge_model)
    results = {"config": config, "data": counts, "trainings": trainings, "static": static,
               "agent": agent, "pass_rate": rates, "bf16": bf16,
               "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
    (work / "results.json").write_text(json.dumps(results, indent=2))
    charts = ROOT / "benchmarks" if args.write_results else work
    curves = {m: ((t.get("loss_history") or {}).get("steps") or [],
                  (t.get("loss_history") or {}).get("loss") or [])
              for m, t in trainings.items()}  # fmt: skip
    loss_chart(curves, charts / LOSS_CHART)
    chart(static, agent, charts / CHART)
    text = report(args, counts, trainings, static, agent, rates, bf16)
    print(text)
    if args.write_results:
        write_results(text, SECTION)


if __name__ == "__main__":
    main()
