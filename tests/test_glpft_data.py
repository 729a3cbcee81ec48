"""Where the loss goes: exact label positions on real samples, truncation, chat templates."""

from __future__ import annotations

import pytest
import torch
from conftest import ALPHA_UMI, read_json

from GLPFT.collate import PackedCollator, PadCollator, pack_features
from GLPFT.data import IGNORE_INDEX, SampleError, best_fit_bins, fit, tokenize_record
from GLPFT.models import TINY_LLAMA, resolve_model
from GLPFT.trainer import sparse_lm_loss
from process_data.protocol import MODEL_INPUT_PREFIX, format_plan


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(TINY_LLAMA))


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(resolve_model(TINY_LLAMA), dtype=torch.float32)
    return m.eval()


def planner_samples(n: int = 4) -> list[dict]:
    return read_json(ALPHA_UMI / "train-example" / "train_planner.json")[:n]


@pytest.mark.parametrize("role", ["backbone", "planner", "caller", "summarizer"])
def test_alpha_umi_labels_are_exactly_target_plus_eos(tokenizer, role: str, shared) -> None:
    for k, record in enumerate(read_json(ALPHA_UMI / "train-example" / f"train_{role}.json")[:5]):
        t = tokenize_record(record, tokenizer, 100_000, f"{role}#{k}")
        prompt = tokenizer(MODEL_INPUT_PREFIX + record["input"])["input_ids"]
        target = tokenizer(record["target"], add_special_tokens=False)["input_ids"]
        assert t.input_ids == prompt + target + [tokenizer.eos_token_id]
        trained = [i for i, x in enumerate(t.labels) if x != IGNORE_INDEX]
        assert trained == list(range(len(prompt), len(t.input_ids)))  # target, then EOS
        assert t.labels[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(t.input_ids[len(prompt) : -1]) == record["target"]


def test_long_prompts_lose_their_start_never_the_target(tokenizer, shared) -> None:
    record = planner_samples(1)[0]
    full = tokenize_record(record, tokenizer, 100_000, "p#0")
    n_target = sum(1 for x in full.labels if x != IGNORE_INDEX)
    cut = tokenize_record(record, tokenizer, 300, "p#0")
    assert len(cut.input_ids) == 300 and cut.cut == len(full.input_ids) - 300
    assert cut.input_ids == full.input_ids[-300:]  # no leading special token here
    assert cut.labels[-n_target:] == full.labels[-n_target:]


def test_fit_keeps_leading_special_tokens() -> None:
    bos = 1
    t = fit([bos, 10, 11, 12, 13], [20, 21], 5, {bos})
    assert t.input_ids == [bos, 12, 13, 20, 21] and t.cut == 2
    assert t.labels == [IGNORE_INDEX] * 3 + [20, 21]
    only = fit([bos, 10], [20, 21, 22, 23], 3, {bos})  # the target alone is too long
    assert only.input_ids == [21, 22, 23] and only.target_cut == 1


def test_a_sample_with_nothing_to_train_names_itself(tokenizer) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}], "train_turns": []}
    with pytest.raises(SampleError, match=r"train\.jsonl#7: no token to train"):
        tokenize_record(chat, tokenizer, 100, "train.jsonl#7")
    # an empty α-UMi target still teaches the EOS token
    eos_only = tokenize_record({"input": "x", "target": ""}, tokenizer, 100, "t#0")
    assert [x for x in eos_only.labels if x != -100] == [tokenizer.eos_token_id]
    with pytest.raises(SampleError, match="f#1: expected"):
        tokenize_record({"prompt": "x"}, tokenizer, 100, "f#1")


def test_chat_labels_cover_the_trained_turn_only(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You are the planner."},
        {"role": "user", "content": "Weather in Lyon?"},
        {"role": "assistant", "content": format_plan("Look it up.", "caller")},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": format_plan("It is 21 C.", "conclusion")},
    ]
    t = tokenize_record({"messages": messages, "train_turns": [4]}, tokenizer, 4096, "c#0")
    trained_text = tokenizer.decode(
        [i for i, x in zip(t.input_ids, t.labels, strict=True) if x != -100]
    )
    assert trained_text.startswith(format_plan("It is 21 C.", "conclusion"))
    assert tokenizer.eos_token in trained_text  # the end-of-turn token is learned
    assert "Look it up" not in trained_text and "assistant" not in trained_text
    both = tokenize_record({"messages": messages}, tokenizer, 4096, "c#1")  # all assistant turns
    text = tokenizer.decode(
        [i for i, x in zip(both.input_ids, both.labels, strict=True) if x != -100]
    )
    assert "Look it up" in text and "21 C" in text and "Weather" not in text


def test_chat_template_that_is_not_prefix_stable_is_refused(tokenizer) -> None:
    from copy import deepcopy

    tok = deepcopy(tokenizer)
    # a template that renders only the last assistant turn (as "thinking" templates do)
    tok.chat_template = (
        "{% for m in messages %}{% if m.role != 'assistant' or loop.last %}"
        "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    with pytest.raises(SampleError, match="not prefix-stable at message 1"):
        tokenize_record({"messages": messages}, tok, 4096, "c#2")


def _features(tokenizer, n: int = 4, max_length: int = 512) -> list[dict]:
    out = []
    for k, record in enumerate(planner_samples(n)):
        t = tokenize_record(record, tokenizer, max_length, f"p#{k}")
        out.append({"input_ids": t.input_ids, "labels": t.labels})
    return out


@pytest.mark.parametrize("side", ["left", "right"])
def test_sparse_head_loss_equals_per_sample_loss(tokenizer, model, side: str, shared) -> None:
    """Padded either side, the batch loss is the sum of each sample's own full-logits loss."""
    feats = _features(tokenizer)
    batch = PadCollator(tokenizer.pad_token_id, padding_side=side)(feats)
    with torch.no_grad():
        loss, count, out = sparse_lm_loss(model, batch)
        ref, ref_count = 0.0, 0
        for f in feats:
            logits = model(input_ids=torch.tensor([f["input_ids"]])).logits[0, :-1]
            targets = torch.tensor(f["labels"][1:])
            ref += torch.nn.functional.cross_entropy(
                logits.float(), targets, reduction="sum", ignore_index=-100
            )
            ref_count += int((targets != -100).sum())
    assert count == ref_count
    assert torch.allclose(loss, torch.as_tensor(ref), rtol=1e-4)
    longest_target = max(sum(1 for x in f["labels"] if x != -100) for f in feats)
    if side == "left":  # ends aligned: the head runs on little more than the longest target
        assert out.logits.shape[1] <= longest_target
    assert out.logits.shape[1] < batch["input_ids"].shape[1]


def test_packed_batch_has_the_same_loss_as_unpacked(tokenizer, model, shared) -> None:
    feats = _features(tokenizer)
    padded = PadCollator(tokenizer.pad_token_id)(feats)
    packed = PackedCollator(tokenizer.pad_token_id)(
        [pack_features(feats[:2]), pack_features(feats[2:])]
    )
    assert "attention_mask" not in packed
    with torch.no_grad():
        reference, n_ref, _ = sparse_lm_loss(model, padded)
        loss, n, _ = sparse_lm_loss(model, packed)
        # the pitfall: with an attention mask, packed samples attend to each other
        leaky, _, _ = sparse_lm_loss(
            model, {**packed, "attention_mask": torch.ones_like(packed["input_ids"])}
        )
    assert n == n_ref
    assert torch.allclose(loss, reference, rtol=1e-5)
    assert not torch.allclose(leaky, reference, rtol=1e-5)


def test_best_fit_bins_respect_capacity() -> None:
    lengths = [700, 300, 500, 200, 900, 100, 50, 1000, 450]
    bins = best_fit_bins(lengths, 1000)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 1000 for b in bins)
    assert len(bins) == -(-sum(lengths) // 1000)  # optimal here: no bin could be saved


def test_row_by_row_training_step_has_the_padded_batch_gradient(tokenizer, tmp_path, shared):
    """Each row trained alone (unpadded, mask-free, one backward per row) gives the gradient
    of the whole padded batch, and the same reported loss."""
    from transformers import AutoModelForCausalLM

    from GLPFT.train import TrainingArguments
    from GLPFT.trainer import GLPFTTrainer, RowByRowTrainer, unpadded_rows

    feats = _features(tokenizer, n=3)
    batch = PadCollator(tokenizer.pad_token_id)(feats)
    assert not batch["attention_mask"].bool().all()  # there is padding to drop
    rows = unpadded_rows(batch)
    assert [r["input_ids"].shape[1] for r in rows] == [len(f["input_ids"]) for f in feats]
    assert all("attention_mask" not in r for r in rows)
    count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    grads, losses = [], []
    for cls in (GLPFTTrainer, RowByRowTrainer):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(resolve_model(TINY_LLAMA), dtype=torch.float32)
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
        trainer = cls(model=model, args=args)
        losses.append(trainer.training_step(model, dict(batch), num_items_in_batch=count))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(losses[0], losses[1], rtol=1e-5)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    assert grads[0].abs().sum() > 0


# --------------------------------------------------------------------------------------------
# Training data at scale: streamed, tokenized in processes, cached, packed by batched maps
# --------------------------------------------------------------------------------------------

SUMMARIZER = ALPHA_UMI / "train-example" / "train_summarizer.json"
PLANNER = ALPHA_UMI / "train-example" / "train_planner.json"


def _replicated(path, records: list[dict], count: int):
    """A JSON array file of ``count`` records, cycling over ``records``."""
    import json

    path.write_text(json.dumps([records[k % len(records)] for k in range(count)]))
    return path


def _cache_files(folder) -> set[str]:
    return {str(p) for p in folder.rglob("*.arrow")}


@pytest.mark.parametrize(("limit", "ratio", "seed"), [(10, 0.0, 42), (0, 0.3, 7), (500, 0.0, 1)])
def test_subsampling_keeps_the_records_whole_file_reading_kept(
    tokenizer, tmp_path, limit: int, ratio: float, seed: int, shared
) -> None:
    """The seeded subset of each file is the one the records, loaded whole and shuffled,
    gave before; only a count is needed to choose it."""
    import random

    from GLPFT.data import build_dataset

    expected = []
    for path in (PLANNER, SUMMARIZER):
        records = read_json(path)
        order = list(range(len(records)))  # the selection as it was made on loaded records
        random.Random(seed).shuffle(order)
        expected += [
            (path, i, records[i]) for i in sorted(order[: limit or int(len(records) * ratio)])
        ]
    dataset = build_dataset(
        f"{PLANNER},{SUMMARIZER}",
        tokenizer,
        4096,
        seed=seed,
        max_num_sample_per_data=limit,
        max_num_sample_ratio=ratio,
        cache_dir=str(tmp_path),
    )
    assert list(dataset["source"]) == [f"{path}#{i}" for path, i, _ in expected]
    for row, (_, _, record) in zip(dataset, expected, strict=True):
        assert row["input_ids"] == tokenize_record(record, tokenizer, 4096, "r").input_ids


def test_records_are_streamed_not_loaded(tmp_path, shared) -> None:
    """Reading a file holds one record at a time, with or without subsampling."""
    import tracemalloc

    from GLPFT.data import _raw_rows

    path = _replicated(tmp_path / "big.json", read_json(PLANNER), 800)
    size = path.stat().st_size
    next(_raw_rows([str(path)], 0, 0.0, 3))  # imports the JSON reader
    for limit, ratio, expected in ((0, 0.0, 800), (0, 0.5, 400), (100, 0.0, 100)):
        tracemalloc.start()
        count = sum(1 for _ in _raw_rows([str(path)], limit, ratio, 3))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert count == expected
        assert peak < size / 5, f"{peak:,} bytes traced while reading a {size:,}-byte file"


def test_tokenized_data_is_cached_by_content_and_settings(tokenizer, tmp_path, shared) -> None:
    """A second build reads the cache (no new file is written); a touched data file, another
    max_length or another subsample is tokenized again."""
    import os
    import shutil

    from GLPFT.data import build_dataset

    data = shutil.copy(SUMMARIZER, tmp_path / "train_summarizer.json")
    cache = tmp_path / "cache"
    first = build_dataset(str(data), tokenizer, 1024, cache_dir=str(cache))
    files = _cache_files(cache)
    again = build_dataset(str(data), tokenizer, 1024, cache_dir=str(cache))
    assert _cache_files(cache) == files
    assert again.cache_files == first.cache_files and again.to_list() == first.to_list()

    stat = os.stat(data)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched
    touched = build_dataset(str(data), tokenizer, 1024, cache_dir=str(cache))
    assert _cache_files(cache) > files and touched.to_list() == first.to_list()
    for changed in ({"max_length": 512}, {"max_num_sample_per_data": 3}):
        before = _cache_files(cache)
        build_dataset(str(data), tokenizer, **{"max_length": 1024, **changed}, cache_dir=str(cache))
        assert _cache_files(cache) > before, changed


def test_tokenizing_in_processes_gives_the_same_rows(tokenizer, tmp_path, shared) -> None:
    from GLPFT.data import ROWS_PER_PROCESS, build_dataset

    data = _replicated(tmp_path / "train.json", read_json(SUMMARIZER), 2 * ROWS_PER_PROCESS + 8)
    one = build_dataset(str(data), tokenizer, 1024, num_proc=1, cache_dir=str(tmp_path / "one"))
    two = build_dataset(str(data), tokenizer, 1024, num_proc=2, cache_dir=str(tmp_path / "two"))
    shards = [f["filename"] for f in two.cache_files]  # a shard per process
    assert len(shards) == 2 and all(name.endswith("_of_00002.arrow") for name in shards)
    assert one.to_list() == two.to_list()


def test_tokenizing_in_chunks_gives_the_same_rows(tokenizer, tmp_path, shared) -> None:
    """Each chunk of records has a pool of its own; together they are the whole, cached."""
    from GLPFT.data import DataStats, build_dataset, pack_dataset

    data = f"{PLANNER},{SUMMARIZER}"
    whole = build_dataset(data, tokenizer, 1024, cache_dir=str(tmp_path / "whole"))
    chunked = build_dataset(data, tokenizer, 1024, cache_dir=str(tmp_path / "c"), chunk_size=40)
    assert len(whole.cache_files) == 1 and len(chunked.cache_files) == 3  # 40 + 40 + 13
    assert chunked.to_list() == whole.to_list()
    files = _cache_files(tmp_path / "c")
    again = build_dataset(data, tokenizer, 1024, cache_dir=str(tmp_path / "c"), chunk_size=40)
    assert _cache_files(tmp_path / "c") == files and again.to_list() == whole.to_list()
    assert DataStats.of(chunked) == DataStats.of(whole)
    assert pack_dataset(chunked, 1024).to_list() == pack_dataset(whole, 1024).to_list()


def test_packing_by_batched_maps_gives_the_reference_rows(tokenizer, tmp_path, shared) -> None:
    """``pack_dataset`` builds, batch by batch on Arrow buffers, the rows that
    ``best_fit_bins`` and ``pack_features`` give sample by sample; its counts and
    ``DataStats`` agree with the token lists."""
    import json

    from GLPFT.data import DataStats, build_dataset, pack_dataset

    long_target = tmp_path / "long_target.json"  # its target alone overflows: label 0 trained
    long_target.write_text(json.dumps([{"input": "Summarize.", "target": "word " * 1500}]))
    samples = build_dataset(
        f"{PLANNER},{SUMMARIZER},{long_target}", tokenizer, 1024, cache_dir=str(tmp_path / "c")
    )
    rows = samples.to_list()
    assert any(r["labels"][0] != IGNORE_INDEX for r in rows)
    reference = []
    for members in best_fit_bins([r["length"] for r in rows], 1024):
        chosen = [rows[i] for i in sorted(members)]
        packed = pack_features(chosen)
        packed["length"] = len(packed["input_ids"])
        packed["trained"] = sum(x != IGNORE_INDEX for x in packed["labels"])
        reference.append(packed)
    packed = pack_dataset(samples, 1024)
    assert 1 < len(packed) < len(samples)
    assert packed.to_list() == reference
    files = _cache_files(tmp_path / "c")
    assert pack_dataset(samples, 1024).to_list() == reference  # read back from its cache
    assert _cache_files(tmp_path / "c") == files

    stats = DataStats.of(samples)
    assert (stats.samples, stats.tokens) == (len(rows), sum(len(r["input_ids"]) for r in rows))
    assert stats.trained_tokens == sum(x != IGNORE_INDEX for r in rows for x in r["labels"])
    assert stats.cut_samples == sum(r["cut"] > 0 for r in rows) > 0
    assert stats.target_cut_samples == 1
