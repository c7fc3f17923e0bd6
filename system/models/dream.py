"""The Dream family (Dream-org/Dream-v0-Base-7B / -Instruct-7B, ``DreamModel``), without the hub's remote
code.

What this module owns: the network shell under the hub checkpoint's exact tensor names
(``model.embed_tokens``, ``model.layers.N.*``, ``model.norm``, ``lm_head``), the hand-off of our mask,
position ids and `KVCache` to the layers, and :func:`spec` (special ids, ``logits_shift=True``).

**Is Dream exactly Qwen2?** Its layers are: the hub file is transformers' Qwen2 code of v4.46 renamed
(q/k/v with biases and o_proj without, GQA, rotate-half RoPE on the full head with default
frequencies, RMSNorm in fp32 then times the weight in the input dtype, SwiGLU MLP, pre-norm residuals;
embedding with ``padding_idx = pad_token_id``; separate ``lm_head``), and the parameter names are
Qwen2's. What Dream changes is around the layers: attention is SDPA with the caller's mask and never
causal (``is_causal = False`` hard-coded), the sliding window is ignored, and the head's output at i
predicts token i+1 (an AR-initialised head; the adapter realigns it because ``spec`` sets
``logits_shift``). So every decoder layer here is transformers' own ``Qwen2DecoderLayer`` (with its
``Qwen2Attention``, ``Qwen2MLP``, ``Qwen2RMSNorm``), built from a ``Qwen2Config`` with ``sdpa``
attention and ``is_causal = False``. What is *not* transformers' here, and why:

- ``Qwen2Model.forward`` is not used: it builds its own mask with ``create_causal_mask`` (a None mask
  would become causal), expects a transformers ``Cache``, and its RoPE module keeps ``inv_freq`` as a
  non-persistent buffer that a network built on the meta device would leave empty. The shell below
  embeds, takes cos/sin from :func:`~system.models.layers.rope_cos_sin` (from the position ids, no
  buffers; the same fp32 formula as Qwen2's), passes our boolean 4D mask (or None = full attention)
  straight to the layers, and applies the final norm and the head.
- The cache: ``Qwen2Attention`` calls ``past_key_values.update(k, v, layer_idx)`` after RoPE; a small
  adapter turns that into ``KVCache.extend(layer_idx, k, v, store)``.

Departures from the original: ``rope_scaling`` is rejected (no Dream checkpoint uses it);
``use_sliding_window`` is ignored, as Dream's own SDPA attention ignores it; with
``tie_word_embeddings`` the head reuses the embedding matrix and has no tensor of its own. The
original forward rejects 2D masks; here the adapter turns one into a 4D mask with positions
``0..L-1``, which for left padding equals ``generation_utils``' cumsum positions up to a constant shift
that RoPE cancels (real-token logits agree).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.models.qwen2.configuration_qwen2 import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm

from system.models.base import KVCache, ModelSpec
from system.models.layers import rope_cos_sin
from system.models.llada import CheckpointingMixin, resolve_special_ids
from system.models.loading import CheckpointError
from system.models.registry import Family

# role -> (token text, id in the real-size vocabulary); used only where the id fits the vocabulary.
DREAM_SPECIAL_TOKENS: dict[str, tuple[str, int]] = {
    "mask": ("<|mask|>", 151666),
    "eos": ("<|endoftext|>", 151643),
    "eot": ("<|im_end|>", 151645),
}
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
    pad = config.get("pad_token_id")
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
        pad_token_id=pad if isinstance(pad, int) and 0 <= pad < config["vocab_size"] else None,
        use_sliding_window=False,
    )
    qcfg._attn_implementation = "sdpa"
    return qcfg


class _CacheView:
    """What ``Qwen2Attention`` expects of ``past_key_values`` (``update``), backed by our `KVCache`."""

    def __init__(self, cache: KVCache, store: bool) -> None:
        self.cache = cache
        self.store = store

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object, **kwargs: object):
        return self.cache.extend(layer_idx, key, value, self.store)


class DreamBackbone(nn.Module):
    """``model.*``: embedding, transformers' Qwen2 decoder layers (made bidirectional), final norm."""

    def __init__(self, qcfg: Qwen2Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(qcfg.vocab_size, qcfg.hidden_size, qcfg.pad_token_id)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(qcfg, i) for i in range(qcfg.num_hidden_layers))
        for layer in self.layers:
            layer.self_attn.is_causal = False
        self.norm = Qwen2RMSNorm(qcfg.hidden_size, eps=qcfg.rms_norm_eps)


class DreamNet(CheckpointingMixin, nn.Module):
    """The Dream network; ``forward`` follows the contract in ``system.models.base`` and returns the RAW
    (shifted) logits: output i predicts token i+1."""

    def __init__(self, qcfg: Qwen2Config, rope_theta: float) -> None:
        super().__init__()
        self.tied = bool(qcfg.tie_word_embeddings)
        self.head_dim = qcfg.hidden_size // qcfg.num_attention_heads
        self.rope_theta = rope_theta
        self.model = DreamBackbone(qcfg)
        if not self.tied:
            self.lm_head = nn.Linear(qcfg.hidden_size, qcfg.vocab_size, bias=False)
        self.gradient_checkpointing = False

    def _layer(
        self, layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor], kv: _CacheView | None,
    ) -> torch.Tensor:
        return layer(x, attention_mask=mask, past_key_values=kv, position_embeddings=rope)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        store_cache: bool = False,
    ) -> torch.Tensor:
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_theta, x.dtype)
        rope = (cos[:, 0], sin[:, 0])  # Qwen2 wants [B, L, D] and adds the head axis itself
        kv = _CacheView(cache, store_cache) if cache is not None else None
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(self._layer, layer, x, attention_mask, rope, None, use_reentrant=False)
            else:
                x = self._layer(layer, x, attention_mask, rope, kv)
        x = self.model.norm(x)
        return F.linear(x, self.model.embed_tokens.weight) if self.tied else self.lm_head(x)


def _build(config: dict) -> nn.Module:
    return DreamNet(qwen2_config(config), float(config.get("rope_theta", 10000.0)))


def _spec(config: dict, directory: Path | None) -> ModelSpec:
    vocab = int(config["vocab_size"])
    ids = resolve_special_ids(config, directory, vocab, DREAM_SPECIAL_TOKENS)
    return ModelSpec(
        arch="dream",
        attention="full",
        mask_token_id=ids["mask"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        eot_token_id=ids["eot"],
        vocab_size=vocab,
        logits_shift=True,
    )


FAMILY = Family(name="dream", architectures=("DreamModel",), build_net=_build, spec=_spec)
