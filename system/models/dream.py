"""The Dream family (Dream-org/Dream-v0-Base-7B / -Instruct-7B, ``DreamModel``), without the hub's remote
code.

What this module owns: the ``Qwen2Config`` that builds the layers and :func:`spec` (special ids,
``logits_shift=True``); the network is :class:`~system.models.qwen.QwenNet` (embedding, layers,
final norm and head under the hub checkpoint's exact tensor names ``model.embed_tokens``,
``model.layers.N.*``, ``model.norm``, ``lm_head``, and the hand-off of our mask, position ids and
`KVCache` to the layers).

**Is Dream exactly Qwen2?** Its layers are: the hub file is transformers' Qwen2 code of v4.46 renamed
(q/k/v with biases and o_proj without, GQA, rotate-half RoPE on the full head with default
frequencies, RMSNorm in fp32 then times the weight in the input dtype, SwiGLU MLP, pre-norm residuals;
embedding with ``padding_idx = pad_token_id``; separate ``lm_head``), and the parameter names are
Qwen2's. What Dream changes is around the layers: attention is SDPA with the caller's mask and never
causal (``is_causal = False`` hard-coded), the sliding window is ignored, and the head's output at i
predicts token i+1 (an AR-initialised head; the adapter realigns it because ``spec`` sets
``logits_shift``). So every decoder layer here is transformers' own ``Qwen2DecoderLayer`` (with its
``Qwen2Attention``, ``Qwen2MLP``, ``Qwen2RMSNorm``), built from a ``Qwen2Config`` with ``sdpa``
attention, inside the shell that :mod:`system.models.qwen` shares with SDAR (why transformers'
``Qwen2Model.forward`` is not used is said there).

Departures from the original: ``rope_scaling`` is rejected (no Dream checkpoint uses it);
``use_sliding_window`` is ignored, as Dream's own SDPA attention ignores it; with
``tie_word_embeddings`` the head reuses the embedding matrix and has no tensor of its own. The
original forward rejects 2D masks; here the adapter turns one into a 4D mask with positions
``0..L-1``, which for left padding equals ``generation_utils``' cumsum positions up to a constant shift
that RoPE cancels (real-token logits agree).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers.models.qwen2.configuration_qwen2 import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm

from system.models.base import ModelSpec
from system.models.hub import SpecialTokens, Token, padding_idx, special_ids
from system.models.loading import CheckpointError
from system.models.qwen import QwenNet
from system.models.registry import Family

# Texts in the tokenizer files, and ids in the real-size vocabulary (used only where they fit).
SPECIAL_TOKENS = SpecialTokens(
    mask=Token(("<|mask|>",), 151666),
    eos=Token(("<|endoftext|>",), 151643),
    eot=Token(("<|im_end|>",), 151645),
)
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def qwen2_config(config: dict) -> Qwen2Config:
    """The ``Qwen2Config`` (sdpa attention, no sliding window) that builds Dream's decoder layers."""
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise CheckpointError(f"config.json: Dream config lacks {missing}")
    if config.get("rope_scaling"):
        raise CheckpointError(f"config.json: rope_scaling {config['rope_scaling']!r} is not implemented for Dream")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise CheckpointError("config.json: hidden_size is not a multiple of num_attention_heads")
    qcfg = Qwen2Config(
        vocab_size=config["vocab_size"],
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        num_key_value_heads=config.get("num_key_value_heads") or config["num_attention_heads"],
        hidden_act=config.get("hidden_act", "silu"),
        max_position_embeddings=config.get("max_position_embeddings", 32768),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=config.get("rope_theta", 10000.0),
        attention_dropout=config.get("attention_dropout", 0.0),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        pad_token_id=padding_idx(config.get("pad_token_id"), config["vocab_size"]),
        use_sliding_window=False,
    )
    qcfg._attn_implementation = "sdpa"
    return qcfg


def _build(config: dict) -> nn.Module:
    """The Dream network; it returns the RAW (shifted) logits: output i predicts token i+1."""
    qcfg = qwen2_config(config)
    rope_theta = float(config.get("rope_theta", 10000.0))
    return QwenNet(qcfg, Qwen2DecoderLayer, Qwen2RMSNorm, rope_theta, qcfg.pad_token_id)


def _spec(config: dict, directory: Path | None) -> ModelSpec:
    vocab = int(config["vocab_size"])
    ids = special_ids(config, directory, vocab, SPECIAL_TOKENS)
    return ModelSpec(arch="dream", attention="full", vocab_size=vocab, logits_shift=True, **ids)


FAMILY = Family(name="dream", architectures=("DreamModel",), build_net=_build, spec=_spec)
