"""Prefilling each prompt once, reusing the KV cache of shared prefixes (within a call, and
from a session's previous call), then decoding in batches changes no output."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import ALPHA_UMI, read_json

from GLPFT.models import TINY_LLAMA, resolve_model
from inference_utils.backends import generate_texts
from inference_utils.generation import (
    GenerationSettings,
    HFModels,
    LoRAModels,
    PrefillStats,
    SessionCaches,
    common_prefix,
    generate_batched,
    generate_padded,
    generate_reusing_prefixes,
    runs,
)
from inference_utils.static.steps import step_samples
from process_data.protocol import MODEL_INPUT_PREFIX


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    """The tiny random LLaMA with its own output layer: with the input embeddings tied to it,
    it answers the same token whatever the prompt, and equal outputs would prove nothing."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    base = resolve_model(TINY_LLAMA)
    config = AutoConfig.from_pretrained(base)
    config.tie_word_embeddings = False
    config.initializer_range = 0.1
    torch.manual_seed(0)
    dest = tmp_path_factory.mktemp("tiny-untied-llama")
    AutoModelForCausalLM.from_config(config).save_pretrained(dest)
    AutoTokenizer.from_pretrained(base).save_pretrained(dest)
    return str(dest)


@pytest.fixture(scope="module")
def model_and_tokenizer(model_path: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_path)


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
    assert len(set(plain)) == len(plain)  # each output follows its own prompt
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


SETTINGS = GenerationSettings(max_new_tokens=5, max_input_length=4096)


@pytest.fixture(scope="module")
def queries(shared) -> list[list[str]]:
    """Per dev query, its planner prompts turn after turn (each holds the history so far,
    then the template's fixed instructions)."""
    records = read_json(ALPHA_UMI / "static_eval" / "out_of_domain_dev.json")[:2]
    out = [[s["model_input"] for s in step_samples([r])] for r in records]
    assert [len(q) >= 3 for q in out] == [True, True]
    return out


@pytest.fixture(scope="module")
def models(model_path: str) -> HFModels:
    return HFModels({"planner": model_path}, SETTINGS)


def turns(queries: list[list[str]]) -> list[list[tuple[int, str]]]:
    """Per turn, the (query, prompt) pairs of the queries still running."""
    return [
        [(q, prompts[t]) for q, prompts in enumerate(queries) if t < len(prompts)]
        for t in range(max(len(p) for p in queries))
    ]


def test_turn_two_of_a_session_prefills_only_the_new_tokens(
    models, model_and_tokenizer, queries
) -> None:
    prompts = queries[0][:3]
    ids = [model_and_tokenizer[1](MODEL_INPUT_PREFIX + p)["input_ids"] for p in prompts]
    plain = [generate_texts(models, "planner", [p])[0] for p in prompts]
    models.release(["q"])
    for t, prompt in enumerate(prompts):
        before = models.stats.prefilled_tokens, models.stats.reused_tokens
        assert generate_texts(models, "planner", [prompt], ["q"]) == [plain[t]]
        prefilled = models.stats.prefilled_tokens - before[0]
        reused = models.stats.reused_tokens - before[1]
        assert prefilled + reused == len(ids[t])
        if t == 0:
            assert prefilled == len(ids[0])
        else:
            # the history grew; the instructions after it are new again
            new = len(ids[t]) - common_prefix(ids[t - 1], ids[t])
            assert new < 0.5 * len(ids[t])
            assert prefilled <= new + 1
    assert ("planner", "q") in models.sessions
    models.release(["q"])
    assert len(models.sessions) == 0 and models.sessions.nbytes == 0


def test_interleaved_sessions_give_the_same_outputs_turn_after_turn(models, queries) -> None:
    """Each call holds both queries' prompts with their sessions, and between them the
    previous turn of query 0 without one: it shares a prefix with the prompt just kept, so
    the trunk those tensors came from is cropped and extended before query 0 reuses them."""
    calls = []
    for t, pairs in enumerate(turns(queries)):
        call = [(p, (q, "planner")) for q, p in pairs[:1]]
        if t > 0:
            call.append((queries[0][t - 1], None))
        call += [(p, (q, "planner")) for q, p in pairs[1:]]
        calls.append(call)
    before = models.stats.prefilled_tokens
    plain = [generate_texts(models, "planner", [p for p, _ in call]) for call in calls]
    without_sessions = models.stats.prefilled_tokens - before
    assert len({text for texts in plain for text in texts}) > 1  # outputs follow the prompt
    before = models.stats.prefilled_tokens
    for call, expected in zip(calls, plain, strict=True):
        prompts, sessions = zip(*call, strict=True)
        assert generate_texts(models, "planner", prompts, sessions) == expected
    assert models.stats.prefilled_tokens - before < 0.6 * without_sessions
    models.release([(q, "planner") for q in range(len(queries))])
    assert len(models.sessions) == 0


@pytest.mark.parametrize(
    ("limit", "kept_at_end"),
    [({"max_sessions": 1}, 1), ({"max_session_bytes": 1}, 0), ({}, 2)],
    ids=["count", "bytes", "release"],
)
def test_evicted_or_released_sessions_prefill_from_scratch_with_the_same_outputs(
    model_path, queries, limit, kept_at_end
) -> None:
    settings = replace(SETTINGS, **limit)
    models = HFModels({"planner": model_path}, settings)
    for t, pairs in enumerate(turns(queries)):
        prompts, sessions = [p for _, p in pairs], [q for q, _ in pairs]
        before = models.stats.reused_tokens
        plain = generate_texts(models, "planner", prompts)
        plain_reused = models.stats.reused_tokens - before
        if not limit and t > 0:
            models.release(sessions)
        before = models.stats.reused_tokens
        assert generate_texts(models, "planner", prompts, sessions) == plain
        reused = models.stats.reused_tokens - before
        if "max_sessions" in limit:
            # query 1 came last and evicted query 0: only query 1 starts from its cache
            assert len(models.sessions) == 1 and ("planner", sessions[-1]) in models.sessions
            assert (reused > plain_reused) == (t > 0 and len(pairs) > 1)
        else:
            assert reused == plain_reused  # each session's cache was gone
    assert models.sessions.nbytes <= settings.max_session_bytes
    assert len(models.sessions) == kept_at_end


def test_a_kept_cropped_view_is_copied_and_counted_as_what_it_holds(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    pad = tokenizer.pad_token_id
    kept, stats = SessionCaches(max_sessions=8, max_bytes=2**30), PrefillStats()
    long, short = list(range(100, 160)), list(range(100, 130))
    new = generate_reusing_prefixes(
        model, tokenizer, [long, short], SETTINGS, pad, ["a", "b"], kept, stats
    )
    assert new == generate_padded(model, tokenizer, [long, short], SETTINGS, pad)
    # the short prompt lies inside the long one: it reuses all of it but its last token
    assert (stats.prefilled_tokens, stats.reused_tokens) == (60 + 1, 29)
    b = kept.get("b")
    assert b is not None and b.ids == tuple(short[:-1])
    for keys, values in b.layers:
        assert keys.shape[2] == 29 and keys.untyped_storage().nbytes() == keys.nbytes
        assert values.untyped_storage().nbytes() == values.nbytes
    a = kept.get("a")
    assert kept.nbytes == a.nbytes + b.nbytes and b.nbytes * 59 == a.nbytes * 29


@pytest.fixture
def adapters(tmp_path: Path, model_path: str) -> dict[str, str]:
    """Two random LoRA adapters on the tiny model, on the keys and values."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    paths = {}
    for k, role in enumerate(("planner", "caller")):
        torch.manual_seed(k)
        model = AutoModelForCausalLM.from_pretrained(model_path)
        peft = get_peft_model(
            model, LoraConfig(r=4, target_modules=["k_proj", "v_proj"], init_lora_weights=False)
        )
        peft.save_pretrained(tmp_path / role)
        paths[role] = str(tmp_path / role)
    return paths


def test_sessions_are_ignored_without_prefix_reuse(model_path, queries) -> None:
    models = HFModels({"planner": model_path}, replace(SETTINGS, reuse_prefixes=False))
    prompts = queries[0][:2]
    plain = [generate_texts(models, "planner", [p]) for p in prompts]
    assert [generate_texts(models, "planner", [p], ["q"]) for p in prompts] == plain
    assert len(models.sessions) == 0 and models.stats.reused_tokens == 0


def test_lora_caches_belong_to_the_adapter_and_the_session(adapters, queries) -> None:
    """One session key asks both adapters in turn: neither may start from the states the
    other computed."""
    models = LoRAModels(adapters, SETTINGS)
    prompts = queries[0][:2]
    plain = {
        role: [generate_texts(models, role, [p])[0] for p in prompts]
        for role in ("planner", "caller")
    }
    assert plain["planner"] != plain["caller"]
    for t, prompt in enumerate(prompts):
        for role in ("planner", "caller"):
            before = models.stats.reused_tokens
            assert generate_texts(models, role, [prompt], ["q"]) == [plain[role][t]]
            assert (models.stats.reused_tokens > before) == (t > 0)
    assert len(models.sessions) == 2
    models.release(["q"])
    assert len(models.sessions) == 0
