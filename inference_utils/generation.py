"""Local role models behind the role-backend interface (:mod:`inference_utils.backends`):
``generate(role, requests) -> results``, ``stream(role, request)``, ``release(sessions)``.

* :class:`HFModels`: one local checkpoint per role (a path may serve several roles and is
  then loaded once);
* :class:`LoRAModels`: one base model and one LoRA adapter per role, switched per call, so
  only one base is ever in memory.

Generation is greedy by default (sampling is optional, seeded) and batched, with the KV
cache; a batch holds at most ``batch_size`` prompts and ``max_batch_tokens`` padded prompt
tokens. Prompts are ``"system: " + input``, as in training, and lose their start (after
leading special tokens) beyond ``max_input_length`` tokens. Two ways to batch:

* ``reuse_prefixes=True`` (the default): prompts are prefilled one by one, in input order,
  unpadded, and each reuses the KV cache of the longest prefix it shares with the previous
  one. The steps of a trajectory repeat the tool documents and the history so far, so most
  of a prompt is often already computed (58% of the planner's tokens on 40 dev
  trajectories). Runs of consecutive prompts then decode together from a left-padded
  static cache.
* ``reuse_prefixes=False``: batches sorted by length, left-padded, prefilled together.

An agent asks each role for a new output every turn, with a prompt that starts with most of
the previous turn's (the α-UMi templates put their fixed instructions after the history, so
the shared part ends inside it). ``generate(role, requests)`` therefore keeps, per
(role, session), the KV cache of the session's last prompt, and the next prompt of that
session is prefilled from it where it is longer than the prefix shared with the previous
prompt of the call. The kept caches are bounded (``max_sessions``, ``max_session_bytes``,
least recently used first out); ``release(sessions)`` drops them when a query ends. Sessions
apply with ``reuse_prefixes=True`` on models whose cache can be cropped, and are ignored
otherwise.

Either way a call's outputs depend only on its prompts and settings: earlier calls of a
session only save work.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Generator, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from GLPFT.data import fit
from GLPFT.models import resolve_model
from inference_utils.backends import Decoding, ModelRequest, ModelResult, cut_stream
from process_data.protocol import MODEL_INPUT_PREFIX, ask_for_json, clean_output


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    max_input_length: int = 4096
    batch_size: int = 16
    reuse_prefixes: bool = True
    max_batch_tokens: int = 32768
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    max_sessions: int = 256  # KV caches kept between calls, one per (role, session)
    max_session_bytes: int = 4 * 2**30  # and the memory they may hold together
    stop: tuple[str, ...] = ()  # generation of a row ends once its text holds one of these

    def with_decoding(self, decoding: Decoding | None) -> GenerationSettings:
        """These settings under a request's own (temperature 0: greedy)."""
        if decoding is None:
            return self
        changes: dict[str, Any] = {"stop": decoding.stop}
        if decoding.max_new_tokens is not None:
            changes["max_new_tokens"] = decoding.max_new_tokens
        if decoding.temperature is not None:
            changes["do_sample"] = decoding.temperature > 0
            if decoding.temperature > 0:
                changes["temperature"] = decoding.temperature
        if decoding.top_p is not None:
            changes["top_p"] = decoding.top_p
        if decoding.seed is not None:
            changes["seed"] = decoding.seed
        return replace(self, **changes)


@dataclass
class PrefillStats:
    """Prompt tokens the model computed, and those taken from a KV cache computed before
    instead: what prefix reuse saves. Together they count every prompt token."""

    prefilled_tokens: int = 0
    reused_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prefilled: int, reused: int) -> None:
        with self._lock:
            self.prefilled_tokens += prefilled
            self.reused_tokens += reused


@dataclass(frozen=True)
class KeptCache:
    """The states of ``ids``: each layer's (keys, values), batch 1, never written to."""

    ids: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    nbytes: int


class SessionCaches:
    """The KV cache of each session's last prompt, kept between calls, so that a prompt that
    grows turn after turn is prefilled only where it is new.

    Beyond ``max_sessions`` caches or ``max_bytes`` in all, the least recently used go first;
    a session whose cache is gone just prefills from scratch."""

    def __init__(self, max_sessions: int, max_bytes: int):
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._kept: OrderedDict[Hashable, KeptCache] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._kept

    def get(self, key: Hashable) -> KeptCache | None:
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
            return kept

    def put(
        self, key: Hashable, ids: Sequence[int], layers: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        """Keep ``layers`` as the states of ``ids`` for ``key``. A cropped view is copied, so
        that the memory held is what is counted."""
        layers = tuple((_owned(k), _owned(v)) for k, v in layers)
        nbytes = sum(k.nbytes + v.nbytes for k, v in layers)
        with self._lock:
            self._drop(key)
            if nbytes > self.max_bytes or self.max_sessions < 1:
                return
            self._kept[key] = KeptCache(tuple(ids), layers, nbytes)
            self.nbytes += nbytes
            while len(self._kept) > self.max_sessions or self.nbytes > self.max_bytes:
                self._drop(next(iter(self._kept)))

    def release(self, keys: Iterable[Hashable]) -> None:
        with self._lock:
            for key in keys:
                self._drop(key)

    def _drop(self, key: Hashable) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self.nbytes -= kept.nbytes


def _owned(t: torch.Tensor) -> torch.Tensor:
    """``t``, or a copy of it where it is a view into a larger block of memory."""
    if t.untyped_storage().nbytes() == t.nbytes:
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def runs(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Consecutive indices grouped in input order, each group within both limits (counting
    its width as that of its longest prompt), so that neighbours keep sharing prefixes."""
    out: list[list[int]] = []
    width = 0
    for i, n in enumerate(lengths):
        if out and len(out[-1]) < batch_size and (len(out[-1]) + 1) * max(width, n) <= max_tokens:
            out[-1].append(i)
            width = max(width, n)
        else:
            out.append([i])
            width = n
    return out


def batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped longest first, each batch within both limits (at least one prompt)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [
        [order[j] for j in run] for run in runs([lengths[i] for i in order], batch_size, max_tokens)
    ]


def _decoding(settings: GenerationSettings, tokenizer: Any, pad: int) -> dict[str, Any]:
    """``generate`` arguments: greedy, or seeded sampling; stop at the tokenizer's EOS."""
    return {
        "max_new_tokens": settings.max_new_tokens,
        "do_sample": settings.do_sample,
        "temperature": settings.temperature if settings.do_sample else None,
        "top_p": settings.top_p if settings.do_sample else None,
        "top_k": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": pad,
        "use_cache": True,
        **({"stop_strings": list(settings.stop), "tokenizer": tokenizer} if settings.stop else {}),
    }


def generate_batched(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    settings: GenerationSettings,
    sessions: Sequence[Hashable | None] | None = None,
    kept: SessionCaches | None = None,
    stats: PrefillStats | None = None,
) -> list[str]:
    """Greedy (or seeded sampling) generation for many prompts, in input order; a prompt
    with a session starts from, and leaves, that session's cache in ``kept``."""
    special = set(tokenizer.all_special_ids)
    ids = [
        fit(
            tokenizer(MODEL_INPUT_PREFIX + p, verbose=False)["input_ids"],
            [],
            settings.max_input_length,
            special,
        ).input_ids
        for p in prompts
    ]
    new = generate_ids(model, tokenizer, ids, settings, sessions, kept, stats)
    return [clean_output(tokenizer.decode(x, skip_special_tokens=True)) for x in new]


def generate_ids(
    model: Any,
    tokenizer: Any,
    ids: Sequence[list[int]],
    settings: GenerationSettings,
    sessions: Sequence[Hashable | None] | None = None,
    kept: SessionCaches | None = None,
    stats: PrefillStats | None = None,
) -> list[list[int]]:
    """The token ids generated after each prompt (token ids), in input order."""
    if sessions is not None and len(sessions) != len(ids):
        raise ValueError(f"{len(sessions)} sessions for {len(ids)} prompts")
    pad = _pad_id(tokenizer)
    if settings.reuse_prefixes and _croppable(model):
        return generate_reusing_prefixes(
            model, tokenizer, ids, settings, pad, sessions, kept, stats
        )
    if stats is not None:
        stats.add(sum(len(x) for x in ids), 0)
    return generate_padded(model, tokenizer, ids, settings, pad)


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generate_padded(
    model: Any, tokenizer: Any, ids: Sequence[list[int]], settings: GenerationSettings, pad: int
) -> list[list[int]]:
    """New tokens for each prompt, in batches sorted by length and left-padded."""
    out: dict[int, list[int]] = {}
    for batch in batches([len(x) for x in ids], settings.batch_size, settings.max_batch_tokens):
        new = _generate_rows(model, tokenizer, ids, batch, settings, pad)
        out.update(zip(batch, new, strict=True))
    return [out[i] for i in range(len(ids))]


def _generate_rows(
    model: Any,
    tokenizer: Any,
    ids: Sequence[list[int]],
    rows: list[int],
    settings: GenerationSettings,
    pad: int,
    cache: Any = None,
) -> list[list[int]]:
    """One ``generate`` call on prompts ``rows``, left-padded to the longest; ``cache``
    may already hold all their tokens but the last."""
    width = max(len(ids[i]) for i in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, i in enumerate(rows):
        input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
        mask[row, width - len(ids[i]) :] = 1
    if settings.do_sample:
        torch.manual_seed(settings.seed + rows[0])
    device = next(model.parameters()).device
    with torch.no_grad():
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            past_key_values=cache,
            **_decoding(settings, tokenizer, pad),
        )
    return [generated[row, width:].tolist() for row in range(len(rows))]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def generate_reusing_prefixes(
    model: Any,
    tokenizer: Any,
    ids: Sequence[list[int]],
    settings: GenerationSettings,
    pad: int,
    sessions: Sequence[Hashable | None] | None = None,
    kept: SessionCaches | None = None,
    stats: PrefillStats | None = None,
) -> list[list[int]]:
    """New tokens for each prompt.

    Prompts are prefilled one by one, in input order, unpadded, each reusing the KV cache of
    the prefix it shares with the previous prompt, or with its session's last prompt where
    that is longer. Then each run of up to ``batch_size`` consecutive prompts decodes
    together from one left-padded static cache, so decoding steps are batched while no
    prompt token is computed twice.

    A session keeps the very tensors of the trunk: the trunk only ever rebinds its layers
    (cropping slices, prefilling concatenates), and decoding copies them into its own cache,
    so nothing writes into a kept cache."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    if sessions is None or kept is None:
        sessions = [None] * len(ids)
    # taken first, so that a cache the call needs is not evicted by an earlier prompt's
    owns = [kept.get(s) if s is not None else None for s in sessions]
    trunk, trunk_ids = DynamicCache(config=model.config), []
    out: list[list[int]] = []  # groups are consecutive
    for group in runs([len(x) for x in ids], settings.batch_size, settings.max_batch_tokens):
        heads = []  # per prompt: each layer's (keys, values) for all its tokens but the last
        for i in group:
            head = ids[i][:-1]
            keep = common_prefix(trunk_ids, head)
            session, own, owns[i] = sessions[i], owns[i], None
            if own is not None and common_prefix(own.ids, head) > keep:
                keep = common_prefix(own.ids, head)
                trunk = _cache_from(model, own.layers, keep)
            elif keep == 0:
                trunk = DynamicCache(config=model.config)
            elif keep < trunk.get_seq_length():
                trunk.crop(keep - trunk.get_seq_length())
            del own  # the session's previous cache, freed once this prompt's replaces it
            if len(head) > keep:
                with torch.no_grad():
                    model(
                        input_ids=torch.tensor([head[keep:]], device=device),
                        past_key_values=trunk,
                        use_cache=True,
                        logits_to_keep=1,
                    )
            trunk_ids = head
            layers = [(layer.keys, layer.values) for layer in trunk.layers] if head else None
            heads.append(list(layers) if layers else None)  # emptied by _left_padded_cache
            if session is not None:
                if layers:
                    kept.put(session, head, layers)
                else:
                    kept.release([session])
            if stats is not None:
                stats.add(len(ids[i]) - keep, keep)
        width = max(len(ids[i]) for i in group)
        cache = _left_padded_cache(model, heads, width - 1, width + settings.max_new_tokens)
        out.extend(_generate_rows(model, tokenizer, ids, group, settings, pad, cache))
        del cache  # before the next run's cache is built
    return out


def _cache_from(model: Any, layers: Sequence[tuple[torch.Tensor, torch.Tensor]], n: int) -> Any:
    """A new dynamic cache holding copies of the first ``n`` positions of ``layers``."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    for index, (keys, values) in enumerate(layers):
        cache.update(keys[..., :n, :], values[..., :n, :], index)
    return cache


def _croppable(model: Any) -> bool:
    """Whether every layer's cache can be cut back to a prefix (not so for sliding windows)."""
    from transformers import DynamicCache

    return not any(layer.is_sliding for layer in DynamicCache(config=model.config).layers)


def _left_padded_cache(model: Any, heads: list, width: int, capacity: int) -> Any:
    """A static cache holding each row's prefilled states right-aligned to ``width``.

    Consumes ``heads`` layer by layer, so that the prefilled states and the cache are not
    both held whole at once."""
    from transformers import StaticCache

    if width == 0:
        return None
    rows = [head for head in heads if head]
    cache = StaticCache(config=model.config, max_cache_len=capacity)
    for layer in range(len(rows[0])):
        keys, values = rows[0][layer]
        k = keys.new_zeros((len(heads), keys.shape[1], width, keys.shape[3]))
        v = values.new_zeros((len(heads), values.shape[1], width, values.shape[3]))
        for row, head in enumerate(heads):
            if head:
                keys, values = head[layer]
                head[layer] = None
                k[row, :, width - keys.shape[2] :] = keys[0]
                v[row, :, width - values.shape[2] :] = values[0]
        cache.update(k, v, layer)
    return cache


def _load(path: str, settings: GenerationSettings) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = resolve_model(path)
    tokenizer = AutoTokenizer.from_pretrained(local)
    model = AutoModelForCausalLM.from_pretrained(local, dtype=_dtype(settings.dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


class _LocalBackend:
    """The role-backend interface (:mod:`inference_utils.backends`) over local models: a
    batch of requests is one generation call over their prompts; calls are serialized."""

    batched = True
    concurrency = 1

    def __init__(self, settings: GenerationSettings):
        self.settings = settings
        self.stats = PrefillStats()
        self.sessions = SessionCaches(settings.max_sessions, settings.max_session_bytes)
        self._lock = threading.Lock()

    def _model_for(self, role: str) -> tuple[Any, Any]:
        raise NotImplementedError

    def _roles(self) -> Iterable[str]:
        raise NotImplementedError

    def generate(self, role: str, requests: Sequence[ModelRequest]) -> list[ModelResult]:
        """Each request's output; a request's session (None: none) carries its KV cache to
        the session's next prompt for this role (KV caches are kept per role: the states of
        one adapter are wrong for another)."""
        with self._lock:
            model, tokenizer = self._model_for(role)
            ids = [self._prompt_ids(tokenizer, r) for r in requests]
            sessions = [None if r.session is None else (role, r.session) for r in requests]
            new: list[list[int]] = [[] for _ in requests]
            groups: dict[Decoding | None, list[int]] = {}
            for i, request in enumerate(requests):  # one generation per decoding setting
                groups.setdefault(request.decoding, []).append(i)
            for decoding, members in groups.items():
                outs = generate_ids(
                    model,
                    tokenizer,
                    [ids[i] for i in members],
                    self.settings.with_decoding(decoding),
                    [sessions[i] for i in members],
                    self.sessions,
                    self.stats,
                )
                for i, out in zip(members, outs, strict=True):
                    new[i] = out
        results = []
        for request, prompt, out in zip(requests, ids, new, strict=True):
            text = tokenizer.decode(out, skip_special_tokens=True)
            if request.decoding is not None:
                text = request.decoding.cut(text)
            text = text if request.raw else clean_output(text)
            results.append(ModelResult(text, (), len(prompt), len(out)))
        return results

    def stream(self, role: str, request: ModelRequest) -> Generator[str, None, ModelResult]:
        """The text of one request as it is decoded (greedy, or as the settings sample), from
        a generation that runs in a thread of its own while the caller reads; returns the
        whole result with its token counts. The backend serves nothing else until the stream
        ends or is closed; an error of the generation is raised here, after the text produced
        before it."""
        from transformers import TextIteratorStreamer

        with self._lock:
            model, tokenizer = self._model_for(role)
            ids = self._prompt_ids(tokenizer, request)
            streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            device = next(model.parameters()).device
            settings = self.settings.with_decoding(request.decoding)
            decoding = _decoding(settings, tokenizer, _pad_id(tokenizer))
            if settings.do_sample:
                torch.manual_seed(settings.seed)
            failure: list[BaseException] = []

            def run() -> None:
                try:
                    with torch.no_grad():
                        model.generate(
                            input_ids=torch.tensor([ids], device=device),
                            attention_mask=torch.ones((1, len(ids)), dtype=torch.long).to(device),
                            streamer=streamer,
                            **decoding,
                        )
                except BaseException as exc:  # noqa: BLE001 (raised in the reader's thread)
                    failure.append(exc)
                    streamer.end()  # else the reader would wait for text forever

            worker = threading.Thread(target=run, name="local-stream", daemon=True)
            worker.start()
            pieces = []
            try:
                for piece in cut_stream(streamer, settings.stop):
                    pieces.append(piece)
                    yield piece
            finally:  # the streamer's queue is unbounded: the generation ends on its own
                worker.join()
            if failure:
                raise failure[0]
            text = "".join(pieces)
            completion = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            return ModelResult(text, prompt_tokens=len(ids), completion_tokens=completion)

    def _prompt_ids(self, tokenizer: Any, request: ModelRequest) -> list[int]:
        """A request's prompt tokens: the α-UMi text prompt as in training, else the chat
        messages through the model's chat template (a forced function asked for as a JSON
        object in text); cut to ``max_input_length`` as training cuts."""
        special = set(tokenizer.all_special_ids)
        if request.prompt is not None and not request.raw:
            ids = tokenizer(MODEL_INPUT_PREFIX + request.prompt, verbose=False)["input_ids"]
        else:
            if request.messages is None:
                raise ValueError("a local model needs messages for a function or JSON request")
            messages = list(request.messages)
            if request.function is not None:
                messages = ask_for_json(messages, request.function)
            templated = tokenizer.apply_chat_template(
                messages,
                tools=list(request.tools) if request.tools else None,
                add_generation_prompt=True,
                tokenize=True,
            )
            ids = templated["input_ids"] if hasattr(templated, "keys") else templated
        return fit(list(ids), [], self.settings.max_input_length, special).input_ids

    def release(self, sessions: Iterable[Hashable]) -> None:
        """Drop the caches kept for ``sessions``, for every role."""
        sessions = list(sessions)
        self.sessions.release([(role, s) for role in self._roles() for s in sessions])

    def close(self) -> None:
        """Models are freed with the backend."""


class HFModels(_LocalBackend):
    """One local checkpoint per role; a checkpoint shared by roles is loaded once."""

    def __init__(self, paths: dict[str, str], settings: GenerationSettings):
        super().__init__(settings)
        self.paths = paths
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def _model_for(self, role: str) -> tuple[Any, Any]:
        if role not in self.paths:
            raise KeyError(f"no model for role {role!r}")
        path = self.paths[role]
        if path not in self._loaded:
            self._loaded[path] = _load(path, self.settings)
        return self._loaded[path]

    def _roles(self) -> Iterable[str]:
        return self.paths


class LoRAModels(_LocalBackend):
    """One base model with a LoRA adapter per role (GLPFT stage 2 with ``--lora_r``),
    switched per call, so only one base is ever in memory."""

    def __init__(
        self, adapters: dict[str, str], settings: GenerationSettings, base: str | None = None
    ):
        from peft import PeftConfig, PeftModel

        super().__init__(settings)
        base = (
            base
            or PeftConfig.from_pretrained(next(iter(adapters.values()))).base_model_name_or_path
        )
        model, self.tokenizer = _load(base, settings)
        roles = list(adapters)
        self.model = PeftModel.from_pretrained(model, adapters[roles[0]], adapter_name=roles[0])
        for role in roles[1:]:
            self.model.load_adapter(adapters[role], adapter_name=role)
        self.model.eval()
        self.roles = roles

    def _model_for(self, role: str) -> tuple[Any, Any]:
        if role not in self.roles:
            raise KeyError(f"no adapter for role {role!r}")
        self.model.set_adapter(role)
        return self.model, self.tokenizer

    def _roles(self) -> Iterable[str]:
        return self.roles
