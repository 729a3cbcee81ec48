"""``python -m inference_utils.tooleval.convert`` (``umi-tooleval-convert``): ToolBench answer
files → ToolEval's converted-answer format, as ToolBench's ``convert_to_answer_format.py`` does.

Per query id (the answer file's name up to its first ``_``)::

    {"query": ..., "available_tools": [...], "answer": {"method": ..., "total_steps": N,
     "final_answer": ..., "answer_details": [{"role": "system", "message": "", "next": [
         {"role": "user", "message": "", "next": [{"role": "tool", "message": {"name": ...,
          "arguments": ..., "response": ...}, "next": [...]}]}]}]}}

The rules are ToolBench's:

* a valid answer is the last of its ``train_messages``: each function call becomes a ``tool``
  step with the following message as its response (``Finish`` has none), each other assistant
  message an ``assistant`` step, and system, user and function messages are skipped (OpenAI
  ``tool_calls`` are read too, as StableToolBench reads them: an empty list adds no step; a
  ``function_call`` key whose value names no function stops the conversion with the file and
  the message, where theirs fails with a ``KeyError`` or ``TypeError``);
* an invalid CoT answer is one of its ``trys`` chosen at random, read from its chain;
* an invalid DFS answer is its whole tree, each ``Action`` merged with its first ``Action
  Input`` child; a random walk from the root to a leaf chooses the branch.

The random choices come from one generator seeded with 42 that runs across the files in order,
as ToolBench's does; ToolBench draws once per step of every walk, also where there is one way
on, and so does this module, so a file's choice depends only on the files before it. ToolBench
visits files in ``os.listdir`` order, which the file system decides; here the order is sorted
by file name, so a conversion is the same on every machine. The output is written as ToolBench
writes it (``json.dump`` with its defaults).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from process_data.protocol import ACTION_INPUT_NODE, ACTION_NODE, FINISH, THOUGHT_NODE

SEED = 42
SYSTEM, USER, TOOL, ASSISTANT = "system", "user", "tool", "assistant"


class ConvertError(ValueError):
    """An answer file that cannot be converted; the message names the file and the reason."""


@dataclass
class Step:
    role: str
    message: Any
    next: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> Step:
        self.next.append(step)
        return step


def _root() -> tuple[Step, Step]:
    system = Step(SYSTEM, "")
    return system, system.add(Step(USER, ""))


def _tool(name: str, arguments: Any, response: Any) -> Step:
    return Step(TOOL, {"name": name, "arguments": arguments, "response": response})


def valid_steps(generation: dict) -> Step:
    """The step chain of a valid answer's last training conversation."""
    conversation = generation["train_messages"][-1]
    root, last = _root()
    index = 2  # after the system prompt and the query
    while index < len(conversation):
        message = conversation[index]
        role = message["role"]
        if role == ASSISTANT and "function_call" in message:
            call = message["function_call"]
            if not isinstance(call, dict) or not call.get("name"):
                # theirs fails here too (``message['function_call']['name']``)
                raise ConvertError(f"message {index}: function_call {call!r} names no function")
            response = "" if call["name"] == FINISH else conversation[index + 1]["content"]
            last = last.add(_tool(call["name"], call["arguments"], response))
            index += 1
        elif role == ASSISTANT and message.get("tool_calls") is not None:
            # an empty list adds no step (and drops the message's text), as StableToolBench's
            # loop over no calls adds none
            for call in message["tool_calls"]:
                name, arguments = call["function"]["name"], call["function"]["arguments"]
                if name == FINISH:
                    last = last.add(_tool(name, arguments, ""))
                    break
                response = next(
                    (
                        m["content"]
                        for m in conversation[index + 1 :]
                        if m["role"] == "tool" and m.get("tool_call_id") == call["id"]
                    ),
                    None,
                )
                if response is not None:  # a call without its result is left out, as there
                    last = last.add(_tool(name, arguments, response))
        elif role == ASSISTANT:
            last = last.add(Step(ASSISTANT, message["content"]))
        elif role not in (SYSTEM, USER, "function", "tool"):
            raise ConvertError(f"unknown role {role!r} in message {index}")
        index += 1
    return root


def cot_steps(answer: dict, rng: random.Random) -> Step:
    """The step chain of a try of an invalid CoT answer, chosen with ``rng``."""
    chain = rng.choice(answer["trys"])["chain"]
    root, last = _root()
    index = 0
    while index < len(chain):
        node = chain[index]
        if node["node_type"] == ACTION_NODE:
            given = chain[index + 1]
            last = last.add(_tool(node["description"], given["description"], given["observation"]))
            index += 1
        elif node["node_type"] == THOUGHT_NODE:
            last = last.add(Step(ASSISTANT, node["description"]))
        else:
            raise ConvertError(f"unknown node_type {node['node_type']!r} in a CoT chain")
        index += 1
    return root


def dfs_steps(answer: dict) -> Step:
    """The whole search tree of an invalid DFS answer, as steps: each ``Action`` takes the
    response of its first ``Action Input`` child and that child's children, after its own."""
    root, user = _root()
    for child in (answer.get("tree", {}).get("tree") or {}).get("children", []):
        user.add(_tree_step(child))
    return root


def _tree_step(node: dict) -> Step:
    children = [_tree_step(child) for child in node.get("children") or []]
    kind = node["node_type"]
    if kind == THOUGHT_NODE:
        return Step(ASSISTANT, node["description"], children)
    if kind == ACTION_NODE:
        inputs = [
            k
            for k, child in enumerate(node["children"] or [])
            if child["node_type"] == ACTION_INPUT_NODE
        ]
        if inputs:
            given = node["children"][inputs[0]]
            merged = children[: inputs[0]] + children[inputs[0] + 1 :] + children[inputs[0]].next
            return Step(
                TOOL,
                {
                    "name": node["description"],
                    "arguments": given["description"],
                    "response": given["observation"],
                },
                merged,
            )
    elif kind != ACTION_INPUT_NODE:
        raise ConvertError(f"unknown node_type {kind!r} in a DFS tree")
    # an Action without input, or an Action Input without its Action: kept as ToolBench keeps
    # them, with the tree node itself as the message
    raw = {k: (None if children else v) if k == "children" else v for k, v in node.items()}
    return Step(kind, raw, children)


def walk(root: Step, rng: random.Random) -> list[Step]:
    """A random walk from ``root`` to a leaf: one draw per step, as ToolBench draws."""
    path = [root]
    while path[-1].next:
        path.append(rng.choice(path[-1].next))
    return path


def details(path: Sequence[Step]) -> list[dict]:
    """A path as ToolEval's nested ``answer_details`` (system and user messages left empty)."""
    node: dict | None = None
    for step in reversed(path):
        message = "" if step.role in (SYSTEM, USER) else step.message
        node = {"role": step.role, "message": message, "next": [] if node is None else [node]}
    return [node] if node is not None else []


def convert_answer(answer: dict, method: str, rng: random.Random) -> dict:
    """One answer file's converted form (``rng`` is the run's generator, advanced here)."""
    generation = answer["answer_generation"]
    if generation.get("valid_data"):
        root = valid_steps(generation)
    elif "cot" in method.lower():
        root = cot_steps(answer, rng)
    elif "dfs" in method.lower():
        root = dfs_steps(answer)
    elif "trys" in answer:  # a method named neither (LLMCompiler): the file's own shape
        root = cot_steps(answer, rng)
    elif "tree" in answer:
        root = dfs_steps(answer)
    else:
        raise ConvertError(
            f"method {method!r} is neither CoT nor DFS, and the answer has neither trys nor a "
            "tree: cannot read an invalid answer"
        )
    path = walk(root, rng)
    return {
        "query": generation["query"],
        "available_tools": generation["function"],
        "answer": {
            "method": method,
            "total_steps": len(path),
            "final_answer": generation["final_answer"],
            "answer_details": details(path),
        },
    }


def answer_files(answer_dir: Path, method: str) -> Iterator[Path]:
    """The method's answer files in a folder, sorted by name (ToolBench: ``method in name``)."""
    for path in sorted(answer_dir.iterdir()):
        if path.name.endswith(".json") and method in path.name:
            yield path


def convert_dir(answer_dir: str | Path, method: str, seed: int = SEED) -> dict[str, dict]:
    """Every answer of ``method`` in ``answer_dir``, by query id."""
    answer_dir = Path(answer_dir)
    if not answer_dir.is_dir():
        raise ConvertError(f"{answer_dir}: not a folder")
    rng, converted = random.Random(seed), {}
    for path in answer_files(answer_dir, method):
        try:
            with open(path, encoding="utf-8") as fh:
                answer = json.load(fh)
            converted[path.name.split("_")[0]] = convert_answer(answer, method, rng)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            reason = exc if isinstance(exc, ConvertError) else f"{type(exc).__name__}: {exc}"
            raise ConvertError(f"{path}: {reason}") from exc
    return converted


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="umi-tooleval-convert", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--answer_dir",
        required=True,
        type=Path,
        help="a folder of <qid>_<method>.json answer files",
    )
    parser.add_argument(
        "--method", required=True, help="e.g. CoT@1 or DFS_woFilter_w2 (files whose name holds it)"
    )
    parser.add_argument("--output", type=Path, default=Path("converted_answers.json"))
    parser.add_argument(
        "--seed", type=int, default=SEED, help="ToolBench's seed for the random choices"
    )
    args = parser.parse_args(argv)
    try:
        converted = convert_dir(args.answer_dir, args.method, args.seed)
    except ConvertError as exc:
        print(f"umi-tooleval-convert: {exc}", file=sys.stderr)
        return 1
    if not converted:
        print(
            f"umi-tooleval-convert: no {args.method} answer files in {args.answer_dir}",
            file=sys.stderr,
        )
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(converted, fh)
    tmp.replace(args.output)
    print(f"converted {len(converted)} answers to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
