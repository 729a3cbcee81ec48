"""Special tokens come from the tokenizer: LLaMA-style (BOS added, EOS </s>) and Qwen-style
(no BOS, EOS <|im_end|>) tokenizers, trained here on the α-UMi sample text."""

from __future__ import annotations

import pytest
from conftest import ALPHA_UMI, read_json

from GLPFT.data import IGNORE_INDEX, tokenize_record

SAMPLES = ALPHA_UMI / "train-example" / "train_caller.json"


def _train(special: list[str], bos: str | None, **names: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [s["input"] + s["target"] for s in read_json(SAMPLES)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=600,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, **names)


@pytest.fixture(scope="module")
def llama_like():
    return _train(
        ["<unk>", "<s>", "</s>"], "<s>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def qwen_like():
    return _train(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )


def test_llama_style_keeps_bos_and_ends_with_its_eos(llama_like, shared) -> None:
    record = read_json(SAMPLES)[0]
    full = tokenize_record(record, llama_like, 100_000, "caller#0")
    assert full.input_ids[0] == llama_like.bos_token_id
    assert full.input_ids[-1] == full.labels[-1] == llama_like.eos_token_id
    target = llama_like(record["target"], add_special_tokens=False)["input_ids"]
    assert [x for x in full.labels if x != IGNORE_INDEX] == target + [llama_like.eos_token_id]
    cut = tokenize_record(record, llama_like, 200, "caller#0")
    assert len(cut.input_ids) == 200 and cut.cut > 0
    assert cut.input_ids[0] == llama_like.bos_token_id  # BOS survives the truncation
    assert cut.labels[-len(target) - 1 :] == target + [llama_like.eos_token_id]


def test_qwen_style_has_no_bos_and_its_own_eos(qwen_like, shared) -> None:
    record = read_json(SAMPLES)[1]
    t = tokenize_record(record, qwen_like, 100_000, "caller#1")
    assert qwen_like.bos_token_id is None
    assert t.input_ids[0] != qwen_like.convert_tokens_to_ids("<|endoftext|>")
    assert t.input_ids[-1] == qwen_like.convert_tokens_to_ids("<|im_end|>")
    assert t.labels[-1] == qwen_like.eos_token_id != qwen_like.pad_token_id
