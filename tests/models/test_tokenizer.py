"""The tiny-LM tokenizer: fixed ids, exact round trips, unk, chat template, save/load, padding."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from system.models.tokenizer import (
    ASSISTANT,
    EOS,
    EOT,
    MASK,
    PAD,
    SPECIALS,
    SYSTEM,
    TAGS,
    UNK,
    UNK_ID,
    USER,
    build_tokenizer,
    special_ids,
)

TRICKY = [
    "<reasoning>\n12+7=19\n</reasoning>\n<answer>\n19\n</answer>",
    "1 2 . 4\n. . 3 1\n4 . . 2\n2 1 4 3\n",
    "a    b  c   ",
    "\tx\t\ty \t\n\n z",
    "  leading and trailing  ",
    "<think>(3*4)/2 - 5 = 1</think> <answer",
    "<reasoning><answer></answer></reasoning>",
    "<reason ing> </ answer> <<answer>>",
    "".join(chr(c) for c in range(0x20, 0x7F)),
    "",
]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip(tok: PreTrainedTokenizerFast, text: str) -> None:
    ids = tok.encode(text)
    assert UNK_ID not in ids
    assert tok.decode(ids) == text


def test_tags_are_single_tokens(tok: PreTrainedTokenizerFast) -> None:
    for tag in TAGS:
        assert len(tok.encode(tag)) == 1
    assert tok.convert_ids_to_tokens(tok.encode("<answer>7</answer>")) == ["<answer>", "7", "</answer>"]


def test_fixed_special_ids(tok: PreTrainedTokenizerFast) -> None:
    assert tok.convert_tokens_to_ids(list(SPECIALS)) == list(range(len(SPECIALS)))
    assert (tok.pad_token, tok.eos_token, tok.mask_token, tok.unk_token) == (PAD, EOS, MASK, UNK)
    assert (tok.pad_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids([SYSTEM, USER, ASSISTANT, EOT, UNK]) == [3, 4, 5, 6, 7]
    assert tok.bos_token is None
    assert special_ids(tok) == {
        "mask_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
        "eot_token_id": 6,
        "vocab_size": len(tok),
    }
    assert 100 <= len(tok) <= 140


def test_deterministic() -> None:
    a, b = build_tokenizer(), build_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    assert a.encode(TRICKY[0]) == b.encode(TRICKY[0])


def test_no_bos_eos_added(tok: PreTrainedTokenizerFast) -> None:
    assert tok.encode("ab") == tok.convert_tokens_to_ids(["a", "b"])


def test_unknown_unicode_maps_to_unk(tok: PreTrainedTokenizerFast) -> None:
    ids = tok.encode("a é 日本 🙂")
    assert ids.count(UNK_ID) == 4
    assert tok.decode(ids) == f"a {UNK} {UNK}{UNK} {UNK}"


def test_specials_in_text_are_single_tokens(tok: PreTrainedTokenizerFast) -> None:
    ids = tok.encode(f"x{MASK}{MASK}y{EOT}")
    assert ids[1:3] == [2, 2] and ids[-1] == 6
    assert tok.decode(ids) == f"x{MASK}{MASK}y{EOT}"
    assert tok.decode(ids, skip_special_tokens=True) == "xy"


MESSAGES = [
    {"role": "system", "content": "Answer in <answer> tags."},
    {"role": "user", "content": "What is 2+3?"},
]
RENDERED = "<|system|>Answer in <answer> tags.<|eot|><|user|>What is 2+3?<|eot|><|assistant|>"


def _ids(out: list[int] | dict[str, list[int]]) -> list[int]:
    """``apply_chat_template(tokenize=True)`` gives a BatchEncoding in transformers 5, a list before."""
    return list(out) if isinstance(out, list) else list(out["input_ids"])


def test_chat_template(tok: PreTrainedTokenizerFast) -> None:
    assert tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == RENDERED
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == RENDERED.removesuffix(ASSISTANT)
    ids = _ids(tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True))
    assert ids == tok.encode(RENDERED)
    assert ids[0] == 3 and ids[-1] == 5


def test_save_load_round_trip(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for text in TRICKY:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text)) == text
    assert loaded.get_vocab() == tok.get_vocab()
    assert special_ids(loaded) == special_ids(tok)
    assert (loaded.pad_token, loaded.eos_token, loaded.mask_token, loaded.unk_token) == (PAD, EOS, MASK, UNK)
    assert loaded.chat_template == tok.chat_template
    assert loaded.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == RENDERED


def test_batch_left_padding(tok: PreTrainedTokenizerFast) -> None:
    batch = tok(["12+7", "3"], padding=True, padding_side="left")
    assert batch["input_ids"][1] == [0, 0, 0, tok.convert_tokens_to_ids("3")]
    assert batch["attention_mask"] == [[1, 1, 1, 1], [0, 0, 0, 1]]
    assert tok.decode(batch["input_ids"][1], skip_special_tokens=True) == "3"
