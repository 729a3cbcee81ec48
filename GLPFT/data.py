"""Training samples: α-UMi records and chat records → token ids and labels.

The loss goes only where the model must learn to write:

* α-UMi format (``{input, target, ...}``): the target, then the tokenizer's EOS token. The
  prompt is α-UMi's ``"system: " + input``, tokenized on its own with the tokenizer's special
  tokens (a BOS where the tokenizer adds one), as the trained model is prompted at inference.
* chat format (``{messages, tools, train_turns}`` from ``process_data --format chat``): the
  turns listed in ``train_turns``, located by rendering the conversation with the tokenizer's
  own chat template up to each of them. A template that is not prefix-stable (an earlier
  turn renders differently once later turns exist) is an error.

  Tool turns: many chat templates (SmolLM2's among them) write only each message's
  ``content``, so an assistant message that holds a ``tool_calls`` entry renders empty and a
  caller sample would train on nothing but the end-of-turn token. A probe conversation shows
  what the template writes (or refuses): where it drops tool calls, each call is written into
  its assistant message's text as the caller's own text (``Action: <name>`` and ``Action
  Input: <arguments>`` lines), as the α-UMi format trains it; where it drops or refuses tool
  results, they become ``user`` messages ``observation: <result>``. These are the conversions
  the endpoint client applies for servers that refuse tool messages
  (:func:`process_data.toolbench.formats.plain_roles`). A template that renders tool calls
  trains them as it renders them. A one-line notice says when the fallback is used, and a
  trained turn whose call (name and arguments) does not appear in its rendered span is an
  error that names the template and the sample.

Over-long samples lose the start of their prompt (after any leading special tokens), never
their target. A sample with nothing to train is an error that names it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from process_data.jsonio import iter_json_array
from process_data.protocol import MODEL_INPUT_PREFIX, OBSERVATION, format_action
from process_data.toolbench.formats import arguments_text, plain_roles

IGNORE_INDEX = -100


class SampleError(ValueError):
    """A training sample that cannot be used; the message names it."""


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    cut: int = 0  # prompt tokens removed to fit max_length
    target_cut: int = 0  # target tokens removed (only when the target alone is too long)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def data_files(data_path: str) -> list[Path]:
    """α-UMi's ``--data_path``: comma-separated files or folders of ``.json``/``.jsonl``."""
    files: list[Path] = []
    for part in filter(None, (p.strip() for p in data_path.split(","))):
        path = Path(part)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl"))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{part}: no such training file or folder")
    if not files:
        raise FileNotFoundError(f"no .json or .jsonl files in {data_path!r}")
    return files


def iter_records(path: Path) -> Iterator[dict]:
    """The records of a JSON array file or a JSON lines file."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise SampleError(f"{path}:{number}: not JSON ({exc.msg})") from exc
    else:
        yield from iter_json_array(path)


def file_signature(paths: Sequence[Path]) -> list[tuple[str, int, int]]:
    """What identifies the content of the files for caching: path, size, mtime."""
    return [(str(p.resolve()), p.stat().st_size, int(p.stat().st_mtime_ns)) for p in paths]


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------


def _special_prefix(ids: list[int], special: set[int]) -> int:
    n = 0
    while n < len(ids) and ids[n] in special:
        n += 1
    return n


def fit(prompt: list[int], target: list[int], max_length: int, special: set[int]) -> Tokenized:
    """Concatenate with labels on the target; cut the prompt's start if too long.

    Leading special tokens of the prompt (a BOS) are kept. If even the target does not fit,
    the last ``max_length`` tokens are kept, as α-UMi does.
    """
    overflow = len(prompt) + len(target) - max_length
    keep = _special_prefix(prompt, special)
    if overflow <= 0:
        cut = 0
    elif overflow <= len(prompt) - keep:
        prompt, cut = prompt[:keep] + prompt[keep + overflow :], overflow
    else:
        ids = (prompt + target)[-max_length:]
        kept_target = min(len(target), max_length)
        labels = [IGNORE_INDEX] * (len(ids) - kept_target) + target[-kept_target:]
        return Tokenized(
            ids, labels, len(prompt) - (len(ids) - kept_target), len(target) - kept_target
        )
    return Tokenized(prompt + target, [IGNORE_INDEX] * len(prompt) + list(target), cut)


def tokenize_alpha_umi(record: dict, tokenizer: Any, max_length: int) -> Tokenized:
    if tokenizer.eos_token_id is None:
        raise SampleError("the tokenizer has no EOS token: set one before training")
    prompt = tokenizer(MODEL_INPUT_PREFIX + record["input"], verbose=False)["input_ids"]
    target = tokenizer(record["target"], add_special_tokens=False, verbose=False)["input_ids"]
    return fit(
        prompt, target + [tokenizer.eos_token_id], max_length, set(tokenizer.all_special_ids)
    )


def template_name(tokenizer: Any) -> str:
    """What names a chat template in messages: the tokenizer's name or path."""
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def render_chat(
    tokenizer: Any, messages: list[dict], tools: list | None, generation_prompt: bool = False
) -> str:
    """The conversation as the tokenizer's chat template writes it; a template that refuses
    it (``raise_exception``) is a :class:`SampleError` naming the template."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            messages, tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt
        )
    except TemplateError as exc:
        raise SampleError(
            f"the chat template of {template_name(tokenizer)} refuses the conversation: {exc}"
        ) from None


@dataclass(frozen=True)
class ToolSupport:
    """What a chat template writes of the chat format's tool turns."""

    calls: bool  # an assistant message's tool calls (name and arguments)
    results: bool  # ``tool`` messages


#: The probe conversation's call, result and question: strings no template writes by itself.
_PROBE_ARGUMENT = ("probe_key_7c1e", "probe value 7c1e")
_PROBE_CALL = {"name": "probe_function_7c1e", "arguments": json.dumps(dict([_PROBE_ARGUMENT]))}
_PROBE_RESULT = "probe result 7c1e"
_PROBE_QUESTION = "probe question 7c1e"


def tool_support(tokenizer: Any) -> ToolSupport:
    """Render a probe conversation (system, user, a tool call, its result) and see what of the
    call and the result appears after the user's question: one render (under a millisecond),
    more only when the template refuses the conversation, to find which turn it refuses."""
    schema = {"type": "object", "properties": {}}
    tools = [{"type": "function", "function": {"name": _PROBE_CALL["name"], "parameters": schema}}]
    head = [{"role": "system", "content": "probe"}, {"role": "user", "content": _PROBE_QUESTION}]
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_probe", "type": "function", "function": _PROBE_CALL}],
    }
    result = {"role": "tool", "tool_call_id": "call_probe", "content": _PROBE_RESULT}

    def written(messages: list[dict]) -> str:
        """What the template writes after the question; nothing if it refuses."""
        try:
            return render_chat(tokenizer, messages, tools).partition(_PROBE_QUESTION)[2]
        except SampleError:
            return ""

    def has_call(text: str) -> bool:
        return all(mark in text for mark in (_PROBE_CALL["name"], *_PROBE_ARGUMENT))

    text = written([*head, call, result])
    if text:
        return ToolSupport(calls=has_call(text), results=_PROBE_RESULT in text)
    calls = has_call(written([*head, call]))
    results = _PROBE_RESULT in written([*head, *plain_roles([call], calls=not calls), result])
    return ToolSupport(calls=calls, results=results)


def _notice(tokenizer: Any, support: ToolSupport) -> None:
    """Say once per process that tool turns are written as text, and how."""
    from transformers.utils import logging

    dropped = []
    if not support.calls:
        dropped.append(f"tool calls (written as {format_action('<name>', '<arguments>')!r})")
    if not support.results:
        dropped.append(f"tool results (written as user messages {OBSERVATION + ': <result>'!r})")
    logging.get_logger(__name__).warning_once(
        f"chat format: the chat template of {template_name(tokenizer)} does not render "
        + " or ".join(dropped)
        + "; they are trained as text (see GLPFT/data.py)"
    )


def _check_calls(
    tokenizer: Any, messages: list[dict], turns: Sequence[int], text: str, spans: list
) -> None:
    """Every tool call of a trained turn must appear in the turn's span: its name, and its
    arguments as they are or JSON-escaped (templates that apply ``tojson`` to them)."""
    for k, (a, b) in zip(sorted(turns), spans, strict=True):
        for call in messages[k].get("tool_calls") or []:
            name = call["function"]["name"]
            arguments = arguments_text(call["function"]["arguments"])
            escaped = json.dumps(arguments, ensure_ascii=False)[1:-1]
            span = text[a:b]
            if name not in span or (arguments not in span and escaped not in span):
                raise SampleError(
                    f"the chat template of {template_name(tokenizer)} does not write the tool "
                    f"call {name!r} of message {k} into its turn: the turn would train nothing "
                    "of the call"
                )


def trained_spans(
    tokenizer: Any, messages: list[dict], tools: list | None, turns: Sequence[int]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the trained turns.

    A turn's span runs from the end of the conversation before it (with the generation
    prompt, i.e. the assistant header) to the end of the conversation including it.
    """
    full = render_chat(tokenizer, messages, tools)
    spans = []
    for k in sorted(turns):
        if not 0 <= k < len(messages) or messages[k].get("role") != "assistant":
            raise SampleError(f"train_turns names message {k}, which is not an assistant turn")
        before = render_chat(tokenizer, messages[:k], tools, generation_prompt=True)
        upto = render_chat(tokenizer, messages[: k + 1], tools)
        if not (upto.startswith(before) and full.startswith(upto)):
            raise SampleError(
                f"the chat template is not prefix-stable at message {k}: rendering the "
                "conversation up to a turn does not give a prefix of the whole conversation"
            )
        spans.append((len(before), len(upto)))
    return full, spans


def tokenize_chat(record: dict, tokenizer: Any, max_length: int) -> Tokenized:
    """A chat record rendered by the tokenizer's chat template, with the tool turns the
    template would drop or refuse written as text (see the module docstring)."""
    messages, tools = record["messages"], record.get("tools")
    turns = record.get("train_turns")
    if turns is None:  # plain chat data: every assistant turn
        turns = [k for k, m in enumerate(messages) if m.get("role") == "assistant"]
    rendered = messages
    if any(m.get("tool_calls") or m.get("role") in ("tool", "function") for m in messages):
        support = tool_support(tokenizer)
        if not (support.calls and support.results):
            _notice(tokenizer, support)
            rendered = plain_roles(messages, calls=not support.calls, results=not support.results)
    text, spans = trained_spans(tokenizer, rendered, tools, turns)
    _check_calls(tokenizer, messages, turns, text, spans)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    trained = [any(a <= start < b for a, b in spans) for start, _ in offsets]
    if not any(trained):
        return Tokenized(ids, [IGNORE_INDEX] * len(ids))
    first = trained.index(True)
    prompt = ids[:first]
    result = fit(prompt, ids[first:], max_length, set(tokenizer.all_special_ids))
    # labels inside the tail follow the spans (several trained turns, prompts in between)
    tail = trained[first:][result.target_cut :]
    result.labels = result.labels[: len(result.labels) - len(tail)] + [
        tok if keep else IGNORE_INDEX
        for tok, keep in zip(
            result.input_ids[len(result.input_ids) - len(tail) :], tail, strict=True
        )
    ]
    return result


def tokenize_record(record: Any, tokenizer: Any, max_length: int, where: str) -> Tokenized:
    """Tokenize an α-UMi or a chat record; errors name ``where`` (file and record)."""
    try:
        if not isinstance(record, dict):
            raise SampleError("not a JSON object")
        if "messages" in record:
            result = tokenize_chat(record, tokenizer, max_length)
        elif isinstance(record.get("input"), str) and isinstance(record.get("target"), str):
            result = tokenize_alpha_umi(record, tokenizer, max_length)
        else:
            raise SampleError(
                "expected α-UMi fields 'input' and 'target' (strings), or chat 'messages'"
            )
    except SampleError as exc:
        raise SampleError(f"{where}: {exc}") from None
    if all(label == IGNORE_INDEX for label in result.labels):
        raise SampleError(f"{where}: no token to train (empty target, or it was cut away)")
    return result


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


def _raw_rows(files: list[str], signature: list, limit: int, ratio: float, seed: int):
    """Rows ``{source, record}`` of the files; ``signature`` only keys the cache."""
    import random

    for name in files:
        path = Path(name)
        records = list(iter_records(path))
        order = list(range(len(records)))
        if limit or ratio:  # α-UMi's --max_num_sample_per_data / --max_num_sample_ratio
            random.Random(seed).shuffle(order)
            order = sorted(order[: limit or int(len(records) * ratio)])
        for index in order:
            yield {"source": f"{path}#{index}", "record": json.dumps(records[index])}


def _tokenize_rows(batch: dict, tokenizer: Any, max_length: int) -> dict:
    out: dict[str, list] = {
        "input_ids": [],
        "labels": [],
        "length": [],
        "trained": [],
        "cut": [],
        "target_cut": [],
    }
    for source, text in zip(batch["source"], batch["record"], strict=True):
        t = tokenize_record(json.loads(text), tokenizer, max_length, source)
        out["input_ids"].append(t.input_ids)
        out["labels"].append(t.labels)
        out["length"].append(len(t.input_ids))
        out["trained"].append(sum(1 for x in t.labels if x != IGNORE_INDEX))
        out["cut"].append(t.cut)
        out["target_cut"].append(t.target_cut)
    return out


def build_dataset(
    data_path: str,
    tokenizer: Any,
    max_length: int,
    seed: int = 42,
    max_num_sample_per_data: int = 0,
    max_num_sample_ratio: float = 0.0,
    num_proc: int | None = None,
    cache_dir: str | None = None,
) -> Any:
    """Tokenized samples as a ``datasets.Dataset`` (cached on disk by content and settings).

    Columns: ``source`` (file#index), ``input_ids``, ``labels``, ``length``, ``trained`` (the
    number of trained tokens), ``cut`` and ``target_cut`` (tokens removed to fit
    ``max_length``).
    """
    from datasets import Dataset

    files = data_files(data_path)
    raw = Dataset.from_generator(
        _raw_rows,
        gen_kwargs={
            "files": [str(f) for f in files],
            "signature": file_signature(files),
            "limit": max_num_sample_per_data,
            "ratio": max_num_sample_ratio,
            "seed": seed,
        },
        cache_dir=cache_dir,
    )
    return raw.map(
        _tokenize_rows,
        batched=True,
        batch_size=64,
        num_proc=num_proc if num_proc and num_proc > 1 and len(raw) > 256 else None,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
        remove_columns=["record"],
        desc="tokenizing",
    )


def _packed_rows(dataset: Any, bins: list[list[int]]):
    from GLPFT.collate import pack_features

    for members in bins:
        rows = [dataset[i] for i in sorted(members)]
        packed = pack_features(rows)
        packed["length"] = len(packed["input_ids"])
        packed["trained"] = sum(r["trained"] for r in rows) - sum(
            1 for r in rows if r["labels"][0] != IGNORE_INDEX
        )
        yield packed


def pack_dataset(dataset: Any, max_length: int) -> Any:
    """Best-fit packing of a tokenized dataset into rows of at most ``max_length`` tokens."""
    from datasets import Dataset

    from GLPFT.collate import best_fit_bins

    bins = best_fit_bins(dataset["length"], max_length)
    columns = dataset.select_columns(["input_ids", "labels", "trained"])
    return Dataset.from_generator(_packed_rows, gen_kwargs={"dataset": columns, "bins": bins})


@dataclass
class DataStats:
    """What the start-of-training summary reports about the data."""

    samples: int
    tokens: int
    trained_tokens: int
    cut_samples: int
    target_cut_samples: int

    @classmethod
    def of(cls, dataset: Any) -> DataStats:
        cut = dataset["cut"] if "cut" in dataset.column_names else []
        target_cut = dataset["target_cut"] if "target_cut" in dataset.column_names else []
        return cls(
            samples=len(dataset),
            tokens=sum(dataset["length"]),
            trained_tokens=sum(dataset["trained"]),
            cut_samples=sum(1 for c in cut if c),
            target_cut_samples=sum(1 for c in target_cut if c),
        )
