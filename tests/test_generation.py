"""Prefilling each prompt once, reusing the KV cache of shared prefixes, then decoding in
batches changes no output."""

from __future__ import annotations

import pytest
import torch
from conftest import ALPHA_UMI, read_json

from GLPFT.models import TINY_LLAMA, resolve_model
from inference_utils.generation import (
    GenerationSettings,
    common_prefix,
    generate_batched,
    generate_padded,
    generate_reusing_prefixes,
    runs,
)
from inference_utils.toolbench.steps import step_samples
from process_data.protocol import MODEL_INPUT_PREFIX


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(TINY_LLAMA)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def dev_prompts(shared) -> list[str]:
    records = read_json(ALPHA_UMI / "static_eval" / "out_of_domain_dev.json")[:2]
    prompts = [s["model_input"] for s in step_samples(records)]
    assert len(prompts) >= 4
    return prompts


def run(model, tokenizer, prompts, **settings) -> tuple[list[str], int]:
    """Outputs, and how many prompt tokens the decoder computed (in passes of more than one
    position: decoding passes one per row)."""
    seen: list[int] = []

    def count(module, args, kwargs) -> None:
        if kwargs["input_ids"].shape[1] > 1:
            seen.append(kwargs["input_ids"].numel())

    hook = model.model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        texts = generate_batched(
            model, tokenizer, prompts, GenerationSettings(max_input_length=4096, **settings)
        )
    finally:
        hook.remove()
    return texts, sum(seen)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_shared_prefixes_are_computed_once_with_the_same_outputs(
    model_and_tokenizer, dev_prompts, batch_size
):
    model, tokenizer = model_and_tokenizer
    plain, plain_prefill = run(
        model, tokenizer, dev_prompts, max_new_tokens=5, batch_size=1, reuse_prefixes=False
    )
    texts, prefill = run(model, tokenizer, dev_prompts, max_new_tokens=5, batch_size=batch_size)
    assert texts == plain
    # later steps of a trajectory extend the earlier ones: most of each prompt is cached
    ids = [tokenizer(MODEL_INPUT_PREFIX + p)["input_ids"][-4096:] for p in dev_prompts]
    assert plain_prefill == sum(len(x) for x in ids)
    shared_tokens = sum(common_prefix(a, b) for a, b in zip(ids, ids[1:], strict=False))
    assert prefill <= plain_prefill - shared_tokens
    assert prefill < 0.6 * plain_prefill


def test_padded_batches_give_the_same_outputs(model_and_tokenizer, dev_prompts):
    model, tokenizer = model_and_tokenizer
    settings = {"max_new_tokens": 5, "reuse_prefixes": False}
    plain, _ = run(model, tokenizer, dev_prompts, batch_size=1, **settings)
    assert run(model, tokenizer, dev_prompts, batch_size=4, **settings)[0] == plain


def test_sampling_is_seeded(model_and_tokenizer, dev_prompts):
    model, tokenizer = model_and_tokenizer
    settings = {"max_new_tokens": 6, "batch_size": 4, "do_sample": True, "seed": 3}
    first, _ = run(model, tokenizer, dev_prompts, **settings)
    assert run(model, tokenizer, dev_prompts, **settings)[0] == first
    assert run(model, tokenizer, dev_prompts, **{**settings, "seed": 4})[0] != first


@pytest.mark.parametrize("ids", [[[7], [7, 8, 9], [10]], [[7], [8]]])
def test_prompts_of_one_token_have_nothing_to_prefill(model_and_tokenizer, ids):
    model, tokenizer = model_and_tokenizer
    settings = GenerationSettings(max_new_tokens=4, batch_size=4)
    pad = tokenizer.pad_token_id
    plain = [generate_padded(model, tokenizer, [x], settings, pad)[0] for x in ids]
    assert generate_reusing_prefixes(model, tokenizer, ids, settings, pad) == plain


def test_runs_keep_input_order_within_both_limits() -> None:
    assert runs([5, 5, 5, 5, 5], 2, 100) == [[0, 1], [2, 3], [4]]
    # the width of a run is its longest prompt: 3 x 40 > 100
    assert runs([10, 40, 10, 10], 8, 100) == [[0, 1], [2, 3]]
    assert runs([500, 10], 8, 100) == [[0], [1]]  # a prompt over the limit runs alone
    assert runs([], 4, 100) == []


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0
