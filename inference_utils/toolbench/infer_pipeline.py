"""``python -m inference_utils.toolbench.infer_pipeline``: static step-level inference.

planner → its decision (caller, summarizer, or stop on a give-up; read by
``process_data.protocol.parse_decision``) → caller or summarizer, on every
gold step of a test file in the stage-2 conversation format; or, with
``--backbone_model_name_or_path``, the single-LLM backbone on the same steps, scored by the
same evaluator.

Outputs in ``--output_dir``:

* ``predictions.jsonl``: compact, written as each chunk of samples finishes; a run that is
  killed and started again with the same arguments continues from it, and ends with the
  same files as an uninterrupted run (chunks are fixed, so every batch is the same);
* ``predictions.json``: α-UMi's fields, in input order, for α-UMi's own evaluator.

Role models are local checkpoints (``--<role>_model_name_or_path``), LoRA adapters on one
base (``--<role>_use_lora``), or OpenAI-compatible endpoints (``--<role>_endpoint URL``). With
endpoints, each sample's planner → caller/summarizer chain is a small task graph; the graphs
run concurrently, so every role endpoint is busy at once and a sample is written as soon as
it finishes. A sample whose requests fail for good is reported, the others are kept, and the
exit code is 3: running the command again retries just the failed ones.

α-UMi's flags are accepted (``--planner_use_lora``, ``--per_device_eval_batch_size``,
``--bf16_full_eval``, ``--max_input_length``, the prompt types, and
``--assistant_prompt_type`` / ``--conclusion_prompt_type`` for the planner and summarizer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from inference_utils.backends import ModelRequest, RoleBackend, generate_texts
from inference_utils.dag import TaskGraph
from inference_utils.role_flags import (
    add_role_arguments,
    build_endpoints,
    build_models,
    generation_settings,
    prompt_types_of,
)
from inference_utils.toolbench.steps import step_samples
from process_data.jsonio import JsonArrayWriter
from process_data.protocol import (
    ASSISTANT,
    FOLLOW_UP_ROLES,
    MULTI_ROLES,
    PLACEHOLDER,
    TOOL_ROLES,
    build_prompt,
    chat_tools,
    format_action,
    format_plan,
    format_prediction,
    parse_action,
    parse_decision,
    render_turn,
)
from process_data.toolbench.formats import ChatEncoder

#: The role that answers after each planner decision.
FOLLOW_UP_ROLE = {"caller": "caller", "conclusion": "summarizer"}
#: The decision whose follow-up each role writes.
DECISION_OF_ROLE = {role: kind for kind, role in FOLLOW_UP_ROLE.items()}


def run_chunk(
    samples: list[dict], models: RoleBackend, prompt_types: dict[str, str], backbone: bool
) -> list[dict]:
    """Predictions for a chunk of step samples (the multi-LLM chain, or the backbone)."""
    done = [dict(s) for s in samples]
    if backbone:
        outputs = generate_texts(
            models, "backbone", [text_prompt(s, "backbone", prompt_types) for s in done]
        )
        for sample, output in zip(done, outputs, strict=True):
            finish(sample, "backbone", output)
        return done
    plans = generate_texts(
        models, "planner", [text_prompt(s, "planner", prompt_types) for s in done]
    )
    follow: dict[str, list[int]] = {role: [] for role in FOLLOW_UP_ROLES}
    for k, (sample, output) in enumerate(zip(done, plans, strict=True)):
        role = plan_step(sample, output, prompt_types)
        if role is not None:
            follow[role].append(k)
    for role in FOLLOW_UP_ROLES:
        if not follow[role]:
            continue
        outputs = generate_texts(
            models, role, [text_prompt(done[k], role, prompt_types) for k in follow[role]]
        )
        for k, text in zip(follow[role], outputs, strict=True):
            finish(done[k], role, text)
    return done


def plan_step(sample: dict, output: str, prompt_types: dict[str, str]) -> str | None:
    """Record the planner's output on the sample; the role that follows (None on a give-up)."""
    decision = parse_decision(output)
    sample["planner_output"] = output
    if decision.kind == "give up":
        sample["predictions"] = format_prediction(decision.turn, "give up")
        return None
    role = FOLLOW_UP_ROLE[decision.kind]
    sample["planner_prediction"] = decision.turn
    sample.update(follow_up_input(sample, role, prompt_types))
    return role


def finish(sample: dict, role: str, text: str) -> None:
    """Record the output of the role that ends a step: the backbone, caller or summarizer."""
    if role == "backbone":
        sample.update(predictions=backbone_prediction(text), backbone_output=text)
        return
    sample["predictions"] = format_prediction(
        sample["planner_prediction"], DECISION_OF_ROLE[role], text
    )


def text_prompt(sample: dict, role: str, prompt_types: dict[str, str]) -> str:
    """A role's α-UMi text prompt for a step (the caller's and summarizer's once planned)."""
    if role == "backbone":
        return build_prompt(
            "backbone",
            sample["tools"],
            sample["backbone_history"],
            prompt_type=prompt_types.get("backbone"),
        )
    return sample["model_input" if role == "planner" else f"model_input_for_{role}"]


def model_request(sample: dict, role: str, prompt_types: dict[str, str], chat: bool):
    """What a role is asked for a step: the α-UMi text prompt, and with ``chat`` the chat
    format's messages (and, for roles that call tools, the tools) instead."""
    if not chat:
        return ModelRequest(prompt=text_prompt(sample, role, prompt_types))
    turns = list(sample["history"])
    if role in FOLLOW_UP_ROLES:
        turns.append({"from": ASSISTANT, "value": sample["planner_prediction"]})
    messages = ChatEncoder("", sample["tools"], turns).prompt(role, len(turns))
    tools = chat_tools(sample["tools"]) if role in TOOL_ROLES else None
    return ModelRequest(messages=tuple(messages), tools=tuple(tools) if tools else None)


def run_endpoints(
    samples: dict[int, dict],
    backend: RoleBackend,
    prompt_types: dict[str, str],
    chat: bool,
    backbone: bool,
    on_sample,
) -> dict[int, BaseException]:
    """Each sample's chain as a task graph on the role backend, one request per call and
    ``backend.concurrency`` calls per role at once; ``on_sample(index, sample)`` as each
    finishes. Returns the samples that failed, with their errors."""
    concurrency = backend.concurrency

    def ask(role: str, sample: dict) -> str:
        return backend.generate(role, [model_request(sample, role, prompt_types, chat)])[0].text

    def done(graph: TaskGraph, key: tuple[int, str], output: str) -> None:
        index, role = key
        sample = samples[index]
        if role == "planner":
            follow = plan_step(sample, output, prompt_types)
            if follow is not None:
                graph.add((index, follow), lambda: ask(follow, sample), lane=follow)
                return
        else:
            finish(sample, role, output)
        on_sample(index, sample)

    failed: dict[int, BaseException] = {}
    roles = ("backbone",) if backbone else MULTI_ROLES
    first = roles[0]
    graph = TaskGraph(
        max_workers=concurrency * len(roles),
        lanes={role: concurrency for role in roles},
        on_done=done,
        on_error=lambda graph, key, error: failed.setdefault(key[0], error),
        keep_results=False,
    )
    for index, sample in samples.items():
        graph.add((index, first), lambda s=sample: ask(first, s), lane=first)
    graph.run()
    return failed


def follow_up_input(sample: dict, role: str, prompt_types: dict[str, str]) -> dict[str, str]:
    """The caller's or summarizer's prompt after the planner's turn (labelled ``assistant:``
    as in training, where α-UMi's pipeline writes ``planner:``)."""
    plan = sample["planner_prediction"]
    history = sample["dispath"] + render_turn(ASSISTANT, plan)
    thought = plan if role == "caller" else None
    return {
        f"model_input_for_{role}": build_prompt(
            role, sample["tools"], history, thought, prompt_types.get(role)
        )
    }


def full_record(sample: dict, line: dict, prompt_types: dict[str, str]) -> dict:
    """A ``predictions.json`` record (α-UMi's fields), from the step sample and its line."""
    record = {
        k: sample[k]
        for k in ("tools", "instruction", "history", "dispath", "model_input", "reference")
    }
    record["predictions"] = line["predictions"]
    if "planner_prediction" in line:
        record["planner_prediction"] = line["planner_prediction"]
        role = FOLLOW_UP_ROLE[parse_decision(line["planner_prediction"]).kind]
        record.update(follow_up_input(record, role, prompt_types))
    if "backbone_output" in line:
        record["backbone_output"] = line["backbone_output"]
    return record


def backbone_prediction(output: str) -> str:
    """A backbone output in the multi-LLM prediction format, so one evaluator scores both:
    its thought becomes the planner turn, its call (normalised when it parses) the caller's
    output, its final answer the summarizer's. An output that decides nothing is a call of
    ``none``."""
    decision = parse_decision(output, "backbone")
    turn = format_plan(decision.thought or None, decision.kind)
    follow = decision.follow_up
    if decision.kind == "caller":
        parsed = parse_action(follow or "")
        follow = format_action(*parsed) if parsed else (follow or PLACEHOLDER)
    return format_prediction(turn, decision.kind, follow)


def compact(index: int, sample: dict) -> dict:
    """The ``predictions.jsonl`` line of a sample: what evaluation needs, and the outputs."""
    keep = ("reference", "predictions", "planner_output", "planner_prediction", "backbone_output")
    return {
        "index": index,
        "tools": [{"Name": t["Name"]} for t in sample["tools"]],
        **{k: sample[k] for k in keep if k in sample},
    }


def completed_chunks(path: Path, chunk: int, total: int) -> dict[int, dict]:
    """Lines of complete chunks in an earlier run's ``predictions.jsonl`` (by index)."""
    lines: dict[int, dict] = {}
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    item = json.loads(line)
                except json.JSONDecodeError:
                    break  # the run was killed while writing this line
                lines[item["index"]] = item
    complete = {}
    for start in range(0, total, chunk):
        members = range(start, min(start + chunk, total))
        if all(i in lines for i in members):
            complete.update({i: lines[i] for i in members})
    return complete


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m inference_utils.toolbench.infer_pipeline",
        description=__doc__.splitlines()[0],
    )
    add_role_arguments(p)
    p.add_argument("--data_path", required=True, help="stage-2 test file(s), comma-separated")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_infer_samples", type=int, default=-1)
    p.add_argument(
        "--chunk_size",
        type=int,
        default=64,
        help="samples per unit of work saved to predictions.jsonl",
    )
    args, unknown = p.parse_known_args(argv)
    if unknown:  # α-UMi passes TrainingArguments that do not matter here
        print(f"infer_pipeline: ignoring {' '.join(unknown)}", file=sys.stderr)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from process_data.jsonio import iter_json_array
    from process_data.progress import progress

    records = [r for path in args.data_path.split(",") if path for r in iter_json_array(path)]
    samples = list(step_samples(records, args.planner_prompt_type))
    if args.num_infer_samples > 0:
        samples = samples[: args.num_infer_samples]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "output_dir"}
    config_path = out / "run_config.json"
    jsonl = out / "predictions.jsonl"
    if config_path.exists() and json.loads(config_path.read_text()) != config:
        raise SystemExit(
            f"infer_pipeline: {out} holds a run with other arguments; use "
            "another --output_dir or remove it"
        )
    config_path.write_text(json.dumps(config, indent=2))
    endpoints = build_endpoints(args)
    done = completed_chunks(jsonl, 1 if endpoints else args.chunk_size, len(samples))
    settings = generation_settings(args)
    prompt_types = prompt_types_of(args)
    # keep only complete chunks, then append
    with open(jsonl, "w", encoding="utf-8") as fh:
        for i in sorted(done):
            fh.write(json.dumps(done[i], ensure_ascii=False) + "\n")
    lines = dict(done)
    with (
        open(jsonl, "a", encoding="utf-8") as fh,
        progress(len(samples), "step", initial=len(done)) as bar,
    ):

        def save(new: list[dict]) -> None:
            fh.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in new))
            fh.flush()
            os.fsync(fh.fileno())
            lines.update({x["index"]: x for x in new})
            bar.update(len(new))

        if endpoints:
            todo = {i: dict(s) for i, s in enumerate(samples) if i not in done}
            failed = run_endpoints(
                todo,
                endpoints,
                prompt_types,
                args.endpoint_api == "chat",
                bool(args.backbone_endpoint),
                lambda i, sample: save([compact(i, sample)]),
            )
            endpoints.close()
            if failed:
                for i, error in sorted(failed.items())[:5]:
                    print(f"infer_pipeline: step {i} failed: {error}", file=sys.stderr)
                print(
                    f"infer_pipeline: {len(failed)} of {len(samples)} steps failed and "
                    f"{len(lines)} are saved in {jsonl}; run the same command again to retry "
                    "the failed ones",
                    file=sys.stderr,
                )
                return 3
        else:
            todo = [s for s in range(0, len(samples), args.chunk_size) if s not in done]
            models = build_models(args, settings) if todo else None
            for start in todo:
                chunk = samples[start : start + args.chunk_size]
                predicted = run_chunk(
                    chunk,
                    models,  # type: ignore[arg-type]
                    prompt_types,
                    bool(args.backbone_model_name_or_path),
                )
                save([compact(start + k, s) for k, s in enumerate(predicted)])
    writer = JsonArrayWriter(out / "predictions.json")
    for i, sample in enumerate(samples):
        writer.write(full_record(sample, lines[i], prompt_types))
    writer.commit()
    print(f"infer_pipeline: {len(samples)} steps → {out / 'predictions.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
