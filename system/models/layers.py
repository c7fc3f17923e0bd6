"""Building blocks shared by the model families: RMSNorm, rotary position embeddings, the SwiGLU MLP,
the attention step after RoPE (KV cache, grouped-query heads, SDPA), the layer loop with gradient
checkpointing, and the output head. Parameter names are the callers' (nothing here renames a tensor)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from system.models.base import KVCache


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 and cast back."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


def rope_cos_sin(
    position_ids: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[B, 1, L, rotary_dim]`` for the rotate-half RoPE convention, computed in fp32
    from the positions (no cached buffer, so any position ids work, including reused ones)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, rotary_dim, 2, device=position_ids.device, dtype=torch.float32) / rotary_dim)
    )
    freqs = position_ids.float()[..., None] * inv_freq  # [B, L, rotary_dim / 2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the first ``cos.shape[-1]`` channels of q and k ``[B, H, L, D]`` (partial RoPE when
    that is less than D); the rest pass through."""
    rot = cos.shape[-1]
    if rot == q.shape[-1]:
        return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
    q_rot, q_pass = q[..., :rot], q[..., rot:]
    k_rot, k_pass = k[..., :rot], k[..., rot:]
    q_rot = q_rot * cos + rotate_half(q_rot) * sin
    k_rot = k_rot * cos + rotate_half(k_rot) * sin
    return torch.cat([q_rot, q_pass], dim=-1), torch.cat([k_rot, k_pass], dim=-1)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), no biases: the tiny model's MLP, LLaDA2's dense MLP, each of its
    experts and its shared experts."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, L, heads * D]`` -> ``[B, heads, L, D]``."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    cache: KVCache | None,
    layer: int,
    store: bool,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention after RoPE: q ``[B, H, Lq, D]`` over the cached keys/values of ``layer`` followed by
    k, v ``[B, H_kv, Lq, D]`` (appended to the cache when ``store``); key/value heads are repeated for
    grouped-query attention; ``mask`` is the contract's boolean mask or None (full attention).
    Returns ``[B, Lq, H * D]``, ready for the output projection."""
    if cache is not None:
        k, v = cache.extend(layer, k, v, store)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).flatten(2)


def default_positions(input_ids: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Position ids ``[1, L]`` when the caller gives none: ``0..L-1`` after the cached positions."""
    offset = cache.length if cache is not None else 0
    return (torch.arange(input_ids.shape[1], device=input_ids.device) + offset)[None]


def run_layers(
    layers: nn.ModuleList,
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    mask: torch.Tensor | None,
    cache: KVCache | None,
    store: bool,
    recompute: bool = False,
) -> torch.Tensor:
    """``x`` through ``layer(x, cos, sin, mask, cache, store)`` for each layer. With ``recompute``
    (gradient checkpointing in training) and no cache, each layer's activations are recomputed in
    the backward pass instead of kept."""
    for layer in layers:
        if recompute and cache is None:
            x = checkpoint(layer, x, cos, sin, mask, None, False, use_reentrant=False)
        else:
            x = layer(x, cos, sin, mask, cache, store)
    return x


class CheckpointingMixin:
    """``gradient_checkpointing`` flag with the transformers-style switches, for the networks that are
    plain ``nn.Module``s (the tiny model gets them from ``PreTrainedModel``)."""

    gradient_checkpointing: bool = False
    training: bool

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    @property
    def recompute(self) -> bool:
        """Whether layers recompute their activations in backward (checkpointing on, training)."""
        return self.gradient_checkpointing and self.training


def head_logits(hidden: torch.Tensor, embedding: nn.Embedding, head: nn.Module | None) -> torch.Tensor:
    """Logits from the output head, or from the embedding matrix when the weights are tied (no head)."""
    return F.linear(hidden, embedding.weight) if head is None else head(hidden)
