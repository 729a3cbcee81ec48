"""Role models behind one interface: ``generate(role, prompts) -> texts``.

* :class:`HFModels`: one local checkpoint per role (a path may serve several roles and is
  then loaded once);
* :class:`LoRAModels`: one base model and one LoRA adapter per role, switched per call, so
  only one base is ever in memory.

Generation is batched: prompts are sorted by length, left-padded, and run greedily (sampling
is optional, seeded) with the KV cache; a batch holds at most ``batch_size`` prompts and
``max_batch_tokens`` prompt tokens. Prompts are ``"system: " + input``, as in training, and
lose their start (after leading special tokens) beyond ``max_input_length`` tokens.

With ``batch_size=1`` (the default on CPU, where prefilling long prompts dominates and
batching only pads them), prompts run one by one, in input order, without padding or mask,
and each reuses the KV cache of the longest prefix it shares with the previous one: the
steps of a trajectory repeat the tool documents and the history so far, so most of a prompt
is often already computed. The cache lives for one call, so a call's outputs do not depend
on earlier calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from GLPFT.data import fit
from GLPFT.models import resolve_model
from process_data.protocol import MODEL_INPUT_PREFIX


def default_batch_size() -> int:
    """8 on a GPU; 1 on CPU, where prompts then share their prefixes' KV cache."""
    return 8 if torch.cuda.is_available() else 1


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    max_input_length: int = 4096
    batch_size: int = field(default_factory=default_batch_size)
    reuse_prefixes: bool = True  # with batch_size 1
    max_batch_tokens: int = 32768
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU


class RoleModels(Protocol):
    def generate(self, role: str, prompts: Sequence[str]) -> list[str]: ...


def _dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def clean_output(text: str) -> str:
    """α-UMi's post-processing of a decoded output."""
    if text.startswith(": "):
        text = text[2:]
    return "none" if text.strip() in ("", ".", ",") else text


def batches(lengths: Sequence[int], batch_size: int, max_tokens: int) -> list[list[int]]:
    """Indices grouped longest first, each batch within both limits (at least one prompt)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    out: list[list[int]] = []
    for i in order:
        if (
            out
            and len(out[-1]) < batch_size
            and (len(out[-1]) + 1) * lengths[out[-1][0]] <= (max_tokens)
        ):
            out[-1].append(i)
        else:
            out.append([i])
    return out


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
    }


def generate_batched(
    model: Any, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings
) -> list[str]:
    """Greedy (or seeded sampling) generation for many prompts, in input order."""
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
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id)
    device = next(model.parameters()).device
    if settings.batch_size == 1 and settings.reuse_prefixes:
        return [
            clean_output(tokenizer.decode(new, skip_special_tokens=True))
            for new in generate_reusing_prefixes(model, tokenizer, ids, settings, pad)
        ]
    outputs: list[str] = [""] * len(prompts)
    for batch in batches([len(x) for x in ids], settings.batch_size, settings.max_batch_tokens):
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
            mask[row, width - len(ids[i]) :] = 1
        if settings.do_sample:
            torch.manual_seed(settings.seed + batch[0])
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                **_decoding(settings, tokenizer, pad),
            )
        for row, i in enumerate(batch):
            new = generated[row, width:]
            outputs[i] = clean_output(tokenizer.decode(new, skip_special_tokens=True))
    return outputs


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def generate_reusing_prefixes(
    model: Any, tokenizer: Any, ids: Sequence[list[int]], settings: GenerationSettings, pad: int
) -> list[list[int]]:
    """New tokens for each prompt, one by one, each reusing the KV cache of the prefix it
    shares with the previous prompt (or that prompt's output)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    cache, cached, out = None, [], []
    for k, prompt in enumerate(ids):
        keep = min(common_prefix(cached, prompt), len(prompt) - 1)  # at least one new token
        if cache is None or keep == 0:
            cache, keep = DynamicCache(config=model.config), 0
        elif keep < cache.get_seq_length():
            cache.crop(keep - cache.get_seq_length())
        if settings.do_sample:
            torch.manual_seed(settings.seed + k)
        with torch.no_grad():
            result = model.generate(
                input_ids=torch.tensor([prompt], device=device),
                attention_mask=torch.ones((1, len(prompt)), dtype=torch.long, device=device),
                past_key_values=cache,
                return_dict_in_generate=True,
                **_decoding(settings, tokenizer, pad),
            )
        cache = result.past_key_values
        sequence = result.sequences[0].tolist()
        cached = sequence[: cache.get_seq_length()]
        out.append(sequence[len(prompt) :])
    return out


def _load(path: str, settings: GenerationSettings) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = resolve_model(path)
    tokenizer = AutoTokenizer.from_pretrained(local)
    model = AutoModelForCausalLM.from_pretrained(local, dtype=_dtype(settings.dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


class HFModels:
    """One local checkpoint per role; a checkpoint shared by roles is loaded once."""

    def __init__(self, paths: dict[str, str], settings: GenerationSettings):
        self.settings = settings
        self.paths = paths
        self._loaded: dict[str, tuple[Any, Any]] = {}

    def _model(self, role: str) -> tuple[Any, Any]:
        path = self.paths[role]
        if path not in self._loaded:
            self._loaded[path] = _load(path, self.settings)
        return self._loaded[path]

    def generate(self, role: str, prompts: Sequence[str]) -> list[str]:
        model, tokenizer = self._model(role)
        return generate_batched(model, tokenizer, prompts, self.settings)


class LoRAModels:
    """One base model with a LoRA adapter per role (GLPFT stage 2 with ``--lora_r``)."""

    def __init__(
        self, adapters: dict[str, str], settings: GenerationSettings, base: str | None = None
    ):
        from peft import PeftConfig, PeftModel

        self.settings = settings
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

    def generate(self, role: str, prompts: Sequence[str]) -> list[str]:
        self.model.set_adapter(role)
        return generate_batched(self.model, self.tokenizer, prompts, self.settings)
