"""The network shell of the families whose decoder layers are transformers' own Qwen layers: Dream
(``Qwen2DecoderLayer``) and SDAR (``Qwen3DecoderLayer``).

transformers' ``Qwen2Model`` / ``Qwen3Model`` forward is not used: it builds its own mask with
``create_causal_mask`` (a None mask would become causal), expects a transformers ``Cache``, and its
RoPE module keeps ``inv_freq`` as a non-persistent buffer that a network built on the meta device
would leave empty. The shell here is the few lines around the layers, under the hub checkpoints'
tensor names (``model.embed_tokens``, ``model.layers.N.*``, ``model.norm``, ``lm_head``): embed; take
cos/sin from :func:`~system.models.layers.rope_cos_sin` (from the position ids, no buffers; the same
fp32 formula as Qwen's); pass our boolean 4D mask (or None = full attention) straight to the layers,
which are made bidirectional (``is_causal = False``); final norm; head (the embedding matrix when
``tie_word_embeddings``, with no tensor of its own).

The cache: Qwen attention calls ``past_key_values.update(k, v, layer_idx)`` after RoPE;
:class:`CacheView` turns that into ``KVCache.extend(layer_idx, k, v, store)`` (cached keys first,
written only when storing).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig

from system.models.base import KVCache
from system.models.layers import CheckpointingMixin, default_positions, head_logits, rope_cos_sin


class CacheView:
    """What Qwen attention expects of ``past_key_values`` (``update``), backed by our `KVCache`."""

    def __init__(self, cache: KVCache, store: bool) -> None:
        self.cache = cache
        self.store = store

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.extend(layer_idx, key, value, self.store)


class QwenBackbone(nn.Module):
    """``model.*``: embedding, the decoder layers (made bidirectional), final norm."""

    def __init__(
        self, qcfg: PretrainedConfig, layer_class: type[nn.Module], norm_class: type[nn.Module],
        padding_idx: int | None,
    ) -> None:
        super().__init__()
        # padding_idx as in the originals: that row gets no gradient.
        self.embed_tokens = nn.Embedding(qcfg.vocab_size, qcfg.hidden_size, padding_idx)
        self.layers = nn.ModuleList(layer_class(qcfg, i) for i in range(qcfg.num_hidden_layers))
        for layer in self.layers:
            layer.self_attn.is_causal = False  # type: ignore[union-attr]
        self.norm = norm_class(qcfg.hidden_size, eps=qcfg.rms_norm_eps)


class QwenNet(CheckpointingMixin, nn.Module):
    """Embedding, transformers decoder layers of ``layer_class`` built from ``qcfg`` (with ``sdpa``
    attention), final norm of ``norm_class``, head; ``forward`` follows the contract in
    ``system.models.base`` and returns the head's raw output."""

    def __init__(
        self, qcfg: PretrainedConfig, layer_class: type[nn.Module], norm_class: type[nn.Module],
        rope_theta: float, padding_idx: int | None,
    ) -> None:
        super().__init__()
        self.qcfg = qcfg
        self.head_dim = getattr(qcfg, "head_dim", None) or qcfg.hidden_size // qcfg.num_attention_heads
        self.rope_theta = rope_theta
        self.model = QwenBackbone(qcfg, layer_class, norm_class, padding_idx)
        if not qcfg.tie_word_embeddings:
            self.lm_head = nn.Linear(qcfg.hidden_size, qcfg.vocab_size, bias=False)

    def _layer(
        self, layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor], kv: CacheView | None,
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
            position_ids = default_positions(input_ids, cache)
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(position_ids, self.head_dim, self.rope_theta, x.dtype)
        rope = (cos[:, 0], sin[:, 0])  # Qwen wants [B, L, D] and adds the head axis itself
        kv = CacheView(cache, store_cache) if cache is not None else None
        for layer in self.model.layers:
            if self.recompute and cache is None:
                x = checkpoint(self._layer, layer, x, attention_mask, rope, None, use_reentrant=False)
            else:
                x = self._layer(layer, x, attention_mask, rope, kv)
        return head_logits(self.model.norm(x), self.model.embed_tokens, getattr(self, "lm_head", None))
