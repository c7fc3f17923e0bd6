"""The tokenizer of the built-in tiny diffusion LM (``tiny`` family).

Owns the vocabulary, its fixed ids, the chat template and :func:`special_ids` (what the tiny model
config is built from). Built offline with HF ``tokenizers``, nothing from the hub, deterministic.

Vocabulary, in id order:

1. specials (:data:`SPECIALS`): ``<|pad|>`` 0, ``<|eos|>`` 1, ``<|mask|>`` 2, ``<|system|>`` 3,
   ``<|user|>`` 4, ``<|assistant|>`` 5, ``<|eot|>`` 6, ``<|unk|>`` 7;
2. task tags as single tokens (:data:`TAGS`): ``<reasoning>`` ... ``</think>``;
3. one token per character (:data:`CHARS`): tab, newline, then printable ASCII 0x20-0x7E in order.

Text is split by a regex (a tag, else one character) and decoded by plain concatenation, so
``decode(encode(text)) == text`` for any ASCII text; any other character maps to ``<|unk|>``.
"""

from __future__ import annotations

import re

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD = "<|pad|>"
EOS = "<|eos|>"
MASK = "<|mask|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
EOT = "<|eot|>"
UNK = "<|unk|>"
SPECIALS: tuple[str, ...] = (PAD, EOS, MASK, SYSTEM, USER, ASSISTANT, EOT, UNK)
PAD_ID, EOS_ID, MASK_ID, SYSTEM_ID, USER_ID, ASSISTANT_ID, EOT_ID, UNK_ID = range(len(SPECIALS))

TAGS: tuple[str, ...] = ("<reasoning>", "</reasoning>", "<answer>", "</answer>", "<think>", "</think>")
CHARS: tuple[str, ...] = ("\t", "\n", *(chr(c) for c in range(0x20, 0x7F)))
VOCAB: tuple[str, ...] = SPECIALS + TAGS + CHARS

# Jinja, rendered by ``apply_chat_template``: <|role|>content<|eot|> per message, then <|assistant|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|eot|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def _split_pattern() -> str:
    """A tag (longest first), else any single character, newlines included."""
    tags = "|".join(re.escape(t) for t in sorted(TAGS, key=len, reverse=True))
    return f"{tags}|[\\s\\S]"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the tiny-LM tokenizer (same ids on every call; see the module docstring for the order)."""
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    assert len(vocab) == len(VOCAB), "duplicate vocabulary entries"
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_split_pattern()), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        mask_token=MASK,
        unk_token=UNK,
        extra_special_tokens={"eot_token": EOT},
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def special_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The ids the tiny model config is built from (``vocab_size`` is ``len(tokenizer)``)."""
    return {
        "mask_token_id": int(tokenizer.mask_token_id),
        "eos_token_id": int(tokenizer.eos_token_id),
        "pad_token_id": int(tokenizer.pad_token_id),
        "eot_token_id": int(tokenizer.convert_tokens_to_ids(EOT)),
        "vocab_size": len(tokenizer),
    }
