"""Text in, text out: render prompts with the tokenizer's chat template, decode, detokenize."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from actors.decoding.reference import DecodeOutput, ReferenceDecoder
from system.config import DecodingConfig
from system.models.base import DiffusionModel


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, max_length: int | None = None) -> list[int]:
    """Token ids of a one-turn chat prompt ending in the assistant header; left-truncated to
    ``max_length`` (as d1 does)."""
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
    )
    ids = list(out["input_ids"] if not isinstance(out, list) else out)
    return ids[-max_length:] if max_length else ids


def completion_text(tokenizer: PreTrainedTokenizerBase, ids: list[int], stop_ids: set[int]) -> str:
    """Detokenize a completion up to its first stop token (EOS / end of turn)."""
    cut = next((i for i, t in enumerate(ids) if t in stop_ids), len(ids))
    return tokenizer.decode(ids[:cut], skip_special_tokens=True)


def stop_ids(model: DiffusionModel) -> set[int]:
    ids = {model.spec.eos_token_id}
    if model.spec.eot_token_id is not None:
        ids.add(model.spec.eot_token_id)
    return ids


def generate_texts(
    model: DiffusionModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    params: DecodingConfig,
    generator: torch.Generator | None = None,
    batch_size: int = 16,
    max_prompt_length: int | None = None,
) -> tuple[list[str], list[DecodeOutput]]:
    decoder = ReferenceDecoder(model, params)
    texts: list[str] = []
    outputs: list[DecodeOutput] = []
    stops = stop_ids(model)
    for start in range(0, len(prompts), batch_size):
        chunk = [chat_prompt_ids(tokenizer, p, max_prompt_length) for p in prompts[start:start + batch_size]]
        out = decoder.generate(chunk, generator)
        outputs.append(out)
        texts += [completion_text(tokenizer, row.tolist(), stops) for row in out.completion_ids]
    return texts, outputs
