"""Generation one prompt at a time reuses the KV cache of shared prefixes, and changes nothing."""

from __future__ import annotations

import pytest
import torch
from conftest import ALPHA_UMI, read_json

from GLPFT.models import TINY_LLAMA, resolve_model
from inference_utils.generation import GenerationSettings, common_prefix, generate_batched
from inference_utils.toolbench.steps import step_samples


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(TINY_LLAMA)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def test_shared_prefixes_are_computed_once_with_the_same_outputs(model_and_tokenizer, shared):
    model, tokenizer = model_and_tokenizer
    records = read_json(ALPHA_UMI / "static_eval" / "out_of_domain_dev.json")[:2]
    prompts = [s["model_input"] for s in step_samples(records)]
    assert len(prompts) >= 4
    seen: list[int] = []  # tokens each forward pass of the decoder computes
    hook = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        texts, prefill = {}, {}
        for reuse in (False, True):
            seen.clear()
            settings = GenerationSettings(
                max_new_tokens=5, max_input_length=4096, batch_size=1, reuse_prefixes=reuse
            )
            texts[reuse] = generate_batched(model, tokenizer, prompts, settings)
            prefill[reuse] = sum(n for n in seen if n > 1)
    finally:
        hook.remove()
    assert texts[True] == texts[False]
    # later steps of a trajectory extend the earlier ones: most of each prompt is cached
    ids = [tokenizer("system: " + p)["input_ids"][-4096:] for p in prompts]
    assert prefill[False] == sum(len(x) for x in ids)
    shared_tokens = sum(common_prefix(a, b) for a, b in zip(ids, ids[1:], strict=False))
    assert prefill[True] <= prefill[False] - shared_tokens + len(ids)
    assert prefill[True] < 0.6 * prefill[False]


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0
