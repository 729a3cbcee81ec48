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

import bisect
import hashlib
import json
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from process_data.jsonio import iter_json_array
from process_data.protocol import (
    MODEL_INPUT_PREFIX,
    OBSERVATION,
    arguments_text,
    format_action,
    plain_roles,
)

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


#: Records per Arrow record batch of the records file, and per tokenization batch (the
#: only samples held as Python lists at a time, per process). Opening an Arrow file maps a
#: few pages around each record batch's header, so record batches are not made too small.
RECORD_BATCH = 256
TOKENIZE_BATCH = 128
#: Fewest records worth a tokenization process of their own (a worker costs about a second).
ROWS_PER_PROCESS = 256
#: Records per tokenizing ``map`` (and pool of processes). The processes read the records
#: from a memory-mapped Arrow file, whose pages count in their RSS until they exit: a pool
#: per chunk keeps that to a chunk's records, whatever the size of the data.
MAP_CHUNK = 8192
#: Packed rows built per batch; their members are fetched from the Arrow cache together.
PACK_BATCH = 256


def subsample(count: int, limit: int, ratio: float, seed: int) -> list[int] | None:
    """α-UMi's ``--max_num_sample_per_data`` / ``--max_num_sample_ratio``: the sorted indices of
    the records a file of ``count`` records keeps, or None for all of them.

    A seeded shuffle of the indices, cut to ``limit`` (or ``count * ratio``), as the records
    themselves were shuffled before: only the count is needed, not the records.
    """
    if not (limit or ratio):
        return None
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return sorted(order[: limit or int(count * ratio)])


def _raw_rows(files: list[str], limit: int, ratio: float, seed: int) -> Iterator[dict]:
    """Rows ``{source, record}`` (the record as JSON text), streamed from the files.

    With subsampling, a first pass counts a file's records and a second keeps the chosen ones;
    only the kept indices are held, never the records.
    """
    for name in files:
        path = Path(name)
        keep, last = None, None
        if limit or ratio:
            keep = set(subsample(sum(1 for _ in iter_records(path)), limit, ratio, seed) or ())
            if not keep:
                continue
            last = max(keep)
        for index, record in enumerate(iter_records(path)):
            if keep is None or index in keep:
                yield {"source": f"{path}#{index}", "record": json.dumps(record)}
            if index == last:
                break  # the rest of the file holds no chosen record


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


def _features(lists: Sequence[str], ints: Sequence[str], strings: Sequence[str] = ()) -> Any:
    """Arrow columns of 32-bit ints (token ids fit), half the size of inferred int64."""
    from datasets import Features, List, Value

    return Features(
        {name: Value("string") for name in strings}
        | {name: List(Value("int32")) for name in lists}
        | {name: Value("int32") for name in ints}
    )


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, default=repr).encode("utf-8")).hexdigest()[:32]


def _code_version() -> str:
    """The sources of this module and of the ones whose text it trains (the protocol's
    markers and prefix, the chat format's tool-turn text): a change to how samples are read,
    written or tokenized is a new cache."""
    from process_data import protocol
    from process_data.toolbench import formats

    sources = [Path(m.__file__).read_text(encoding="utf-8") for m in (protocol, formats)]
    return _digest(Path(__file__).read_text(encoding="utf-8"), *sources)


def tokenizer_signature(tokenizer: Any) -> str:
    """What fixes a tokenizer's output: a fast tokenizer's whole serialisation (vocabulary,
    merges, normalisation, pre- and post-processing), its special tokens and chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        body = backend.to_str()
    else:  # a slow tokenizer: its pickled state
        from datasets.fingerprint import Hasher

        body = Hasher.hash(tokenizer)
    return _digest(
        type(tokenizer).__name__,
        body,
        tokenizer.all_special_ids,
        tokenizer.eos_token_id,
        getattr(tokenizer, "chat_template", None),
    )


def build_dataset(
    data_path: str,
    tokenizer: Any,
    max_length: int,
    seed: int = 42,
    max_num_sample_per_data: int = 0,
    max_num_sample_ratio: float = 0.0,
    num_proc: int | None = None,
    cache_dir: str | None = None,
    chunk_size: int = MAP_CHUNK,
) -> Any:
    """Tokenized samples as a ``datasets.Dataset``, memory-mapped from an on-disk cache.

    The files are streamed into an Arrow file of records, then tokenized by ``num_proc``
    processes, ``chunk_size`` records at a time. Both steps are cached under ``cache_dir``
    (default: the ``datasets`` cache), keyed by the files' signature (path, size,
    modification time), the subsampling settings, the tokenizer, ``max_length`` and this
    module's code: the same inputs are read back without tokenizing again, and a changed
    file or setting is tokenized anew.

    Columns: ``source`` (file#index), ``input_ids``, ``labels``, ``length``, ``trained`` (the
    number of trained tokens), ``cut`` and ``target_cut`` (tokens removed to fit
    ``max_length``).
    """
    from datasets import Dataset, concatenate_datasets

    files = data_files(data_path)
    limit, ratio = max_num_sample_per_data, max_num_sample_ratio
    picked = (limit, ratio, seed) if limit or ratio else None  # the seed matters only then
    raw_key = _digest("records", _code_version(), file_signature(files), picked)
    raw = Dataset.from_generator(
        _raw_rows,
        features=_features((), (), ("source", "record")),
        gen_kwargs={"files": [str(f) for f in files], "limit": limit, "ratio": ratio, "seed": seed},
        cache_dir=cache_dir,
        fingerprint=raw_key,
        writer_batch_size=RECORD_BATCH,
    )
    key = _digest("tokenized", raw_key, tokenizer_signature(tokenizer), max_length)
    parts = []
    for start in range(0, len(raw), chunk_size):
        chunk = raw.select(range(start, min(start + chunk_size, len(raw))))  # a slice, no copy
        processes = min(num_proc or 1, len(chunk) // ROWS_PER_PROCESS)
        parts.append(
            chunk.map(
                _tokenize_rows,
                batched=True,
                batch_size=TOKENIZE_BATCH,
                writer_batch_size=TOKENIZE_BATCH,
                num_proc=processes if processes > 1 else None,
                fn_kwargs={"tokenizer": tokenizer, "max_length": max_length},
                remove_columns=["record"],
                features=_features(
                    ("input_ids", "labels"),
                    ("length", "trained", "cut", "target_cut"),
                    ("source",),
                ),
                new_fingerprint=_digest(key, start, len(chunk)),
                desc="tokenizing",
            )
        )
    if not parts:
        raise SampleError(f"{data_path}: no training sample (empty files, or none kept)")
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def int_column(dataset: Any, name: str) -> Any:
    """An integer column as a NumPy array, read through Arrow: no Python object per row."""
    import numpy as np

    return np.asarray(dataset.with_format("arrow")[name], dtype=np.int64)


def _pack_rows(batch: dict, samples: Any) -> Any:
    """Packed rows for a batch of bins, built on the Arrow buffers of their members.

    Row by row it is :func:`GLPFT.collate.pack_features` (members concatenated in index
    order, each member's first label dropped), plus the row's ``length`` and ``trained``.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    bins = batch["members"]
    sizes = np.array([len(members) for members in bins])
    rows = samples[[i for members in bins for i in members]]  # Arrow, the bins one after another
    lengths = pc.list_value_length(rows["input_ids"]).to_numpy()
    starts = np.cumsum(lengths) - lengths  # each member's first token in the flat buffers
    labels = pc.list_flatten(rows["labels"]).to_numpy().copy()
    first_trained = labels[starts] != IGNORE_INDEX
    labels[starts] = IGNORE_INDEX  # as pack_features does
    first_members = np.cumsum(sizes) - sizes
    row_lengths = np.add.reduceat(lengths, first_members)
    token_offsets = np.append(0, np.cumsum(row_lengths)).astype(np.int32)
    member_offsets = np.append(0, np.cumsum(sizes)).astype(np.int32)
    trained = np.add.reduceat(rows["trained"].to_numpy() - first_trained, first_members)
    return pa.table(
        {
            "input_ids": pa.ListArray.from_arrays(
                token_offsets, pc.list_flatten(rows["input_ids"]).combine_chunks()
            ),
            "labels": pa.ListArray.from_arrays(token_offsets, pa.array(labels, pa.int32())),
            "seq_lengths": pa.ListArray.from_arrays(member_offsets, pa.array(lengths, pa.int32())),
            "length": pa.array(row_lengths, pa.int32()),
            "trained": pa.array(trained, pa.int32()),
        }
    )


def best_fit_bins(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sample indices into rows of at most ``capacity`` tokens (best-fit decreasing).

    Deterministic: ties are broken by index. Samples longer than ``capacity`` (there are none
    after tokenization, which truncates) get a row of their own.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin number), kept sorted
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k == len(free):
            bins.append([i])
            space, number = capacity - n, len(bins) - 1
        else:
            space, number = free.pop(k)
            bins[number].append(i)
            space -= n
        if space > 0:
            bisect.insort(free, (space, number))
    return bins


def pack_dataset(dataset: Any, max_length: int) -> Any:
    """Best-fit packing of a tokenized dataset into rows of at most ``max_length`` tokens.

    The bins come from the ``length`` column alone; the rows are then built by a batched
    ``map`` over the bins, a batch's members fetched from the tokenized Arrow file together,
    and written next to it (cached, as the tokenized dataset is).
    """
    from datasets import Dataset

    bins = best_fit_bins(int_column(dataset, "length").tolist(), max_length)
    members = Dataset.from_dict(
        {"members": [sorted(b) for b in bins]}, features=_features(("members",), ())
    )
    # the dataset's fingerprint names its content (build_dataset keys it as said there)
    key = _digest("packed", dataset._fingerprint, max_length, _code_version())
    cache_file = None
    if dataset.cache_files:  # else an in-memory dataset: packed in memory too
        folder = os.path.dirname(dataset.cache_files[0]["filename"])
        cache_file = os.path.join(folder, f"packed-{key}.arrow")
    samples = dataset.select_columns(["input_ids", "labels", "trained"]).with_format("arrow")
    return members.map(
        _pack_rows,
        batched=True,
        batch_size=PACK_BATCH,
        writer_batch_size=PACK_BATCH,
        fn_kwargs={"samples": samples},
        remove_columns=["members"],
        features=_features(("input_ids", "labels", "seq_lengths"), ("length", "trained")),
        cache_file_name=cache_file,
        new_fingerprint=key,
        desc="packing",
    )


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
        """From the integer columns alone: no token list is read."""

        def nonzero(name: str) -> int:
            if name not in dataset.column_names:
                return 0
            return int((int_column(dataset, name) != 0).sum())

        return cls(
            samples=len(dataset),
            tokens=int(int_column(dataset, "length").sum()),
            trained_tokens=int(int_column(dataset, "trained").sum()),
            cut_samples=nonzero("cut"),
            target_cut_samples=nonzero("target_cut"),
        )
