"""``python -m inference_utils.static.infer``: static step-level inference.

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
from collections.abc import Callable, Generator, Hashable, Sequence
from pathlib import Path

from inference_utils.backends import RoleBackend
from inference_utils.driver import run_searches
from inference_utils.role_flags import (
    add_role_arguments,
    build_endpoints,
    build_models,
    generation_settings,
    prompt_types_of,
)
from inference_utils.routing import route
from inference_utils.search_requests import Generate
from inference_utils.static.steps import step_samples
from process_data.jsonio import JsonArrayWriter
from process_data.protocol import (
    ASSISTANT,
    FOLLOW_UP_ROLE,
    FOLLOW_UP_ROLES,
    MULTI_ROLES,
    PLACEHOLDER,
    TOOL_ROLES,
    Decision,
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


def step_search(
    sample: dict, prompt_types: dict[str, str], chat: bool, backbone: bool
) -> Generator[Generate, str, dict]:
    """One step's chain as a search for the driver (:func:`run_searches`): the backbone, or
    α-UMi's roles as :func:`~inference_utils.routing.route` routes them. It records every
    output on ``sample`` and returns it. With ``chat`` the requests carry the chat format's
    messages (and tools) beside the text prompt."""
    if backbone:
        text = yield step_request(sample, "backbone", prompt_types, chat)
        sample.update(predictions=backbone_prediction(text), backbone_output=text)
        return sample

    def ask(role: str, decision: Decision | None) -> Generate:
        if decision is not None:  # α-UMi's pipeline keeps the planner's turn as it parsed it
            sample["planner_prediction"] = decision.turn
            sample.update(follow_up_input(sample, role, prompt_types))
        return step_request(sample, role, prompt_types, chat)

    routed = yield from route(ask)
    sample["planner_output"] = routed.plan
    turn = routed.decision.turn
    sample["predictions"] = format_prediction(turn, routed.decision.kind, routed.follow_up)
    return sample


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


def step_request(sample: dict, role: str, prompt_types: dict[str, str], chat: bool) -> Generate:
    """What a role is asked for a step: the α-UMi text prompt, and with ``chat`` the chat
    format's messages (and, for roles that call tools, the tools) beside it."""
    prompt = text_prompt(sample, role, prompt_types)
    if not chat:
        return Generate(role, prompt)
    turns = list(sample["history"])
    if role in FOLLOW_UP_ROLES:
        turns.append({"from": ASSISTANT, "value": sample["planner_prediction"]})
    # α-UMi's test sets hold only its tool documents: their schemas are converted back
    schemas = chat_tools(sample["tools"])
    messages = ChatEncoder("", schemas, turns).prompt(role, len(turns))
    tools = tuple(schemas) if role in TOOL_ROLES and schemas else None
    return Generate(role, prompt, tuple(messages), tools)


def run_steps(
    samples: dict[int, dict],
    backend: RoleBackend,
    prompt_types: dict[str, str],
    chat: bool,
    backbone: bool,
    on_sample: Callable[[int, dict], None],
) -> dict[int, BaseException]:
    """Each sample's chain, on the driver: a batched backend gets every sample at once (one
    batch per role, as α-UMi's pipeline asks them), one that takes a request per call
    ``backend.concurrency`` calls per role at once. ``on_sample(index, sample)`` as each
    finishes; returns the samples that failed, with their errors."""
    failed: dict[int, BaseException] = {}

    def done(index: Hashable, sample: dict | None, error: BaseException | None) -> None:
        if error is not None:
            failed[index] = error  # type: ignore[index]
        else:
            on_sample(index, sample)  # type: ignore[arg-type]

    roles = 1 if backbone else len(MULTI_ROLES)
    width = len(samples) if backend.batched else backend.concurrency
    searches = ((i, step_search(dict(s), prompt_types, chat, backbone)) for i, s in samples.items())
    run_searches(searches, backend, None, max(width * roles, 1), done, lane_width=width or 1)
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
        prog="python -m inference_utils.static.infer",
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

        # a batched backend runs a chunk at a time (a re-run batches as the first run did,
        # and saves whole chunks); endpoints run every step at once, each saved as it ends
        if endpoints:
            groups = [[i for i in range(len(samples)) if i not in done]]
        else:
            starts = range(0, len(samples), args.chunk_size)
            groups = [
                list(range(s, min(s + args.chunk_size, len(samples))))
                for s in starts
                if s not in done
            ]
        groups = [g for g in groups if g]
        backend = endpoints or (build_models(args, settings) if groups else None)
        failed: dict[int, BaseException] = {}
        for group in groups:
            finished: dict[int, dict] = {}
            failed |= run_steps(
                {i: samples[i] for i in group},
                backend,  # type: ignore[arg-type]
                prompt_types,
                args.endpoint_api == "chat" and endpoints is not None,
                bool(args.backbone_endpoint or args.backbone_model_name_or_path),
                (lambda i, s: save([compact(i, s)])) if endpoints else finished.__setitem__,
            )
            save([compact(i, finished[i]) for i in sorted(finished)])
        if backend is not None:
            backend.close()
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
    writer = JsonArrayWriter(out / "predictions.json")
    for i, sample in enumerate(samples):
        writer.write(full_record(sample, lines[i], prompt_types))
    writer.commit()
    print(f"infer_pipeline: {len(samples)} steps → {out / 'predictions.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
