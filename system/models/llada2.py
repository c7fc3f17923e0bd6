"""The LLaDA2.0 family (inclusionAI/LLaDA2.0-mini / -flash, ``LLaDA2MoeModelLM``), written natively:
no remote code, and no transformers model class (transformers ships no LLaDA2 / Ling-2.0 MoE, and its
MoE models keep experts fused under other tensor names).

What this module owns: the config reading (:class:`LLaDA2Config`, with the original configuration
file's defaults for absent keys), the attention (fused ``query_key_value``, per-head q/k RMSNorm,
partial rotate-half RoPE on the first ``int(head_dim * partial_rotary_factor)`` channels, GQA, SDPA,
never causal), the decoder layers (dense SwiGLU for the first ``first_k_dense_replace`` layers, the
MoE of :mod:`system.models.moe` after), the network under the hub's tensor names, and :func:`spec`.

Departures from the original: the original forward demands an additive float mask of shape exactly
``[B, 1, L, L]`` and has no usable cache; here the contract's boolean mask (or None = full attention)
and :class:`~system.models.base.KVCache` are accepted (exact for block-causal use). Dropout is never
applied (every published config sets it to 0). Config keys the original ignores are ignored here too
(``rotary_dim``, ``norm_head``, ``use_rmsnorm``, ``norm_softmax``, ``router_dtype``: the router is
always fp32), except that ``norm_topk_prob: false`` is honoured and an unsupported
``score_function``, ``using_split_qkv_in_self_attention: true`` (no published checkpoint or reference
has split q/k/v tensors) or ``rope_scaling`` fails clearly instead of computing something else.
Logits come back in the weights' dtype (the original casts them to fp32).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
from torch import nn

from system.models.base import KVCache, ModelSpec
from system.models.hub import SpecialTokens, Token, block_size, padding_idx, special_ids
from system.models.layers import (
    CheckpointingMixin,
    RMSNorm,
    SwiGLU,
    apply_rope,
    attend,
    default_positions,
    head_logits,
    rope_cos_sin,
    run_layers,
    split_heads,
)
from system.models.moe import GroupedTopKRouter, SparseMoeBlock
from system.models.registry import Family

DEFAULT_BLOCK_SIZE = 32
# Texts in the tokenizer files, and ids in the real-size vocabulary (used only where they fit).
SPECIAL_TOKENS = SpecialTokens(
    mask=Token(("<|mask|>",), 156895),
    eos=Token(("<|endoftext|>",), 156892),  # also the pad token
    eot=Token(("<|role_end|>",)),
)


@dataclass(frozen=True)
class LLaDA2Config:
    """The config.json fields the network reads; defaults are the original configuration file's."""

    vocab_size: int = 30592
    hidden_size: int = 1024
    intermediate_size: int | None = None
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    num_key_value_heads: int = 0
    head_dim: int | None = None
    hidden_act: str = "silu"
    use_qkv_bias: bool = False
    use_qk_norm: bool = True
    use_bias: bool = True
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 0.5
    tie_word_embeddings: bool = False
    pad_token_id: int | None = 126081
    num_experts: int | None = 16
    num_shared_experts: int | None = 0
    num_experts_per_tok: int = 2
    n_group: int = 8
    topk_group: int = 4
    routed_scaling_factor: float = 2.5
    moe_intermediate_size: int | None = None
    first_k_dense_replace: int = 0
    norm_topk_prob: bool = True
    score_function: str = "sigmoid"
    using_split_qkv_in_self_attention: bool = False

    @classmethod
    def from_dict(cls, config: dict) -> LLaDA2Config:
        cfg = cls(**{f.name: config[f.name] for f in fields(cls) if f.name in config})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        problems = []
        if self.using_split_qkv_in_self_attention:
            problems.append("using_split_qkv_in_self_attention=true (only the fused query_key_value exists)")
        if self.score_function not in (None, "sigmoid"):
            problems.append(f"score_function={self.score_function!r} (only 'sigmoid')")
        if self.rope_scaling:
            problems.append(f"rope_scaling={self.rope_scaling!r}")
        if self.hidden_act != "silu":
            problems.append(f"hidden_act={self.hidden_act!r} (only 'silu')")
        if self.kv_heads < 1 or self.num_attention_heads % self.kv_heads:
            problems.append(f"num_key_value_heads={self.num_key_value_heads} must divide num_attention_heads")
        if problems:
            raise ValueError("config.json: unsupported LLaDA2 settings: " + "; ".join(problems))

    @property
    def kv_heads(self) -> int:
        return int(self.num_key_value_heads)

    @property
    def dim_per_head(self) -> int:
        return int(self.head_dim or self.hidden_size // self.num_attention_heads)

    @property
    def rope_dim(self) -> int:
        return int(self.dim_per_head * self.partial_rotary_factor)

    def is_moe_layer(self, layer: int) -> bool:
        return self.num_experts is not None and layer >= self.first_k_dense_replace


class LLaDA2Attention(nn.Module):
    def __init__(self, cfg: LLaDA2Config, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads, self.kv_heads, self.head_dim = cfg.num_attention_heads, cfg.kv_heads, cfg.dim_per_head
        width = (self.num_heads + 2 * self.kv_heads) * self.head_dim
        self.query_key_value = nn.Linear(cfg.hidden_size, width, bias=cfg.use_qkv_bias)
        if cfg.use_qk_norm:
            self.query_layernorm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.key_layernorm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.use_qk_norm = cfg.use_qk_norm
        self.dense = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=cfg.use_bias)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        store_cache: bool,
    ) -> torch.Tensor:
        qkv = split_heads(self.query_key_value(x), self.num_heads + 2 * self.kv_heads)
        q, k, v = qkv.split([self.num_heads, self.kv_heads, self.kv_heads], dim=1)
        if self.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k = apply_rope(q, k, cos, sin)
        out = attend(q, k, v, mask, cache, self.layer, store_cache, scale=self.head_dim**-0.5)
        return self.dense(out)


def _mlp(cfg: LLaDA2Config, layer: int) -> nn.Module:
    if not cfg.is_moe_layer(layer):
        if cfg.intermediate_size is None:
            raise ValueError("config.json: intermediate_size is needed for the dense layers")
        return SwiGLU(cfg.hidden_size, cfg.intermediate_size)
    if cfg.moe_intermediate_size is None:
        raise ValueError("config.json: moe_intermediate_size is needed for the MoE layers")
    assert cfg.num_experts is not None
    router = GroupedTopKRouter(
        cfg.hidden_size,
        cfg.num_experts,
        cfg.num_experts_per_tok,
        cfg.n_group,
        cfg.topk_group,
        cfg.routed_scaling_factor,
        cfg.norm_topk_prob,
    )
    return SparseMoeBlock(
        cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.num_shared_experts, router
    )


class LLaDA2DecoderLayer(nn.Module):
    def __init__(self, cfg: LLaDA2Config, layer: int) -> None:
        super().__init__()
        self.attention = LLaDA2Attention(cfg, layer)
        self.mlp = _mlp(cfg, layer)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        store_cache: bool,
    ) -> torch.Tensor:
        x = x + self.attention(self.input_layernorm(x), cos, sin, mask, cache, store_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2Backbone(nn.Module):
    """``model.*`` of the checkpoint."""

    def __init__(self, cfg: LLaDA2Config) -> None:
        super().__init__()
        # padding_idx as in the original: that row gets no gradient.
        pad = padding_idx(cfg.pad_token_id, cfg.vocab_size)
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, pad)
        self.layers = nn.ModuleList(LLaDA2DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class LLaDA2Net(CheckpointingMixin, nn.Module):
    """LLaDA2.0's network; its forward follows the contract in ``system.models.base``."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.cfg = LLaDA2Config.from_dict(config)
        self.model = LLaDA2Backbone(self.cfg)
        if not self.cfg.tie_word_embeddings:
            self.lm_head = nn.Linear(self.cfg.hidden_size, self.cfg.vocab_size, bias=False)

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
        x = self.model.word_embeddings(input_ids)
        cos, sin = rope_cos_sin(position_ids, self.cfg.rope_dim, self.cfg.rope_theta, x.dtype)
        x = run_layers(self.model.layers, x, cos, sin, attention_mask, cache, store_cache, self.recompute)
        return head_logits(self.model.norm(x), self.model.word_embeddings, getattr(self, "lm_head", None))


def _spec(config: dict, directory: Path | None) -> ModelSpec:
    vocab = int(config["vocab_size"])
    return ModelSpec(
        arch="llada2",
        attention="block",
        block_size=block_size(config, DEFAULT_BLOCK_SIZE),
        vocab_size=vocab,
        **special_ids(config, directory, vocab, SPECIAL_TOKENS),
    )


def _build(config: dict) -> nn.Module:
    return LLaDA2Net(config)


FAMILY = Family(name="llada2", architectures=("LLaDA2MoeModelLM",), build_net=_build, spec=_spec)
