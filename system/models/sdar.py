"""The SDAR family (JetLM/SDAR-*-Chat, ``SDARForCausalLM``; also TraDo): a Qwen3 network run as a
block-diffusion model, without the hub's remote code.

What this module owns: the ``Qwen3Config`` that builds the layers and :func:`spec` (block size,
special ids); the network is :class:`~system.models.qwen.QwenNet` (embeddings, decoder layers, final
norm, head, under the hub checkpoint's exact tensor names, and the hand-off of our mask / position
ids / `KVCache` to the layers).

**Is SDAR exactly Qwen3?** Its layers are: the hub file is transformers' ``modeling_qwen3.py`` (v4.52)
with the same parameters (GQA, q/k RMSNorm per head, rotate-half RoPE, SwiGLU, no biases) and
the same math. What the original changes is around the layers, not in them: every RMSNorm runs
through flash_attn's Triton ``rms_norm_fn`` (the same fp32 formula), attention is SDPA with the
caller's mask and never causal (``flash_attn_func`` when the mask is all True: the same result), the
cache is written only when ``store_kv=True``, and the sliding window is computed but never applied.
So every decoder layer here is transformers' own ``Qwen3DecoderLayer`` (with its ``Qwen3Attention``,
``Qwen3MLP``, ``Qwen3RMSNorm``), built from a ``Qwen3Config`` with ``sdpa`` attention, inside the
shell that :mod:`system.models.qwen` shares with Dream (why transformers' ``Qwen3Model.forward`` is
not used is said there). Its cache adapter gives SDAR's ``store_kv`` semantics (cached keys first,
written only when storing).

Departures from the original: with bf16 weights the RMSNorm rounds once more than flash_attn's kernel
(weight times the normalised input in the input dtype, as Qwen3 does); ``rope_scaling`` is rejected
(no SDAR checkpoint uses it); ``fuse_cross_entropy`` (logits None in training) is not reproduced;
with ``tie_word_embeddings`` the head reuses the embedding matrix and has no tensor of its own.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RMSNorm

from system.models.base import ModelSpec
from system.models.hub import SpecialTokens, Token, block_size, padding_idx, special_ids
from system.models.qwen import QwenNet
from system.models.registry import Family

DEFAULT_BLOCK_SIZE = 4  # unless config.json or a ``-bN`` suffix of the directory name says otherwise
# Texts in the tokenizer files, and ids in the real-size vocabulary (used only where they fit).
SPECIAL_TOKENS = SpecialTokens(
    mask=Token(("<|MASK|>", "<MASK>"), 151669),  # added_tokens.json calls it <MASK>
    eos=Token(("<|endoftext|>",), 151643),  # also the pad token
    eot=Token(("<|im_end|>",), 151645),  # also generation_config.json's other eos id
    eot_from_generation=True,
)


def qwen3_config(config: dict) -> Qwen3Config:
    """The ``Qwen3Config`` for SDAR's layers: sdpa attention, every layer full attention."""
    if config.get("rope_scaling"):
        raise ValueError(
            f"config.json: rope_scaling {config['rope_scaling']!r} is not supported by the native SDAR "
            "network (no SDAR checkpoint uses it)"
        )
    heads = int(config["num_attention_heads"])
    layers = int(config["num_hidden_layers"])
    qcfg = Qwen3Config(
        vocab_size=int(config["vocab_size"]),
        hidden_size=int(config["hidden_size"]),
        intermediate_size=int(config["intermediate_size"]),
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
        hidden_act=config.get("hidden_act", "silu"),
        max_position_embeddings=int(config.get("max_position_embeddings", 32768)),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": float(config.get("rope_theta", 1e6)),
        },  # unused: RoPE is ours
        attention_bias=bool(config.get("attention_bias", False)),
        attention_dropout=float(config.get("attention_dropout", 0.0)),
        use_sliding_window=False,
        layer_types=["full_attention"] * layers,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )
    qcfg._attn_implementation = "sdpa"
    return qcfg


def _build(config: dict) -> nn.Module:
    qcfg = qwen3_config(config)
    rope_theta = float(config.get("rope_theta", 1e6))
    pad = padding_idx(config.get("pad_token_id"), qcfg.vocab_size)
    return QwenNet(qcfg, Qwen3DecoderLayer, Qwen3RMSNorm, rope_theta, pad)


def _spec(config: dict, directory: Path | None) -> ModelSpec:
    vocab = int(config["vocab_size"])
    return ModelSpec(
        arch="sdar",
        attention="block",
        block_size=block_size(config, DEFAULT_BLOCK_SIZE, directory),
        vocab_size=vocab,
        **special_ids(config, directory, vocab, SPECIAL_TOKENS),
    )


FAMILY = Family(name="sdar", architectures=("SDARForCausalLM",), build_net=_build, spec=_spec)
