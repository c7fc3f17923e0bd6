"""The built-in masked-diffusion transformer (``tiny`` family).

A LLaDA-style mask predictor: bidirectional (or block-causal) attention, RoPE, RMSNorm, SwiGLU, no
biases; from ~0.5M to ~100M parameters by config. It is a transformers ``PreTrainedModel`` registered
with ``AutoConfig`` / ``AutoModel`` / ``AutoModelForMaskedLM`` under model type ``stabledrl-tiny``,
so a saved directory loads with ``from_pretrained`` and no remote code (once ``system.models`` is
imported).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from system.models.base import KVCache, ModelSpec
from system.models.layers import (
    RMSNorm,
    SwiGLU,
    apply_rope,
    attend,
    default_positions,
    rope_cos_sin,
    run_layers,
    split_heads,
)
from system.models.loading import check_weights
from system.models.registry import Family

MODEL_TYPE = "stabledrl-tiny"


class TinyDLMConfig(PretrainedConfig):
    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 128,
        hidden_size: int = 128,
        num_hidden_layers: int = 4,
        num_attention_heads: int = 4,
        intermediate_size: int = 344,
        max_position_embeddings: int = 1024,
        rope_theta: float = 10000.0,
        rms_norm_eps: float = 1e-6,
        attention: str = "full",
        block_size: int | None = None,
        mask_token_id: int = 0,
        eos_token_id: int = 1,
        pad_token_id: int = 2,
        eot_token_id: int | None = None,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        **kwargs: object,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.attention = attention
        self.block_size = block_size
        self.mask_token_id = mask_token_id
        self.eot_token_id = eot_token_id
        self.initializer_range = initializer_range
        super().__init__(
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )


class TinyAttention(nn.Module):
    def __init__(self, config: TinyDLMConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        store_cache: bool,
    ) -> torch.Tensor:
        q = split_heads(self.q_proj(x), self.num_heads)
        k = split_heads(self.k_proj(x), self.num_heads)
        v = split_heads(self.v_proj(x), self.num_heads)
        q, k = apply_rope(q, k, cos, sin)
        return self.o_proj(attend(q, k, v, mask, cache, self.layer, store_cache))


class TinyBlock(nn.Module):
    def __init__(self, config: TinyDLMConfig, layer: int) -> None:
        super().__init__()
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = TinyAttention(config, layer)
        self.post_attention_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x, cos, sin, mask, cache, store_cache):  # type: ignore[no-untyped-def]
        x = x + self.attn(self.input_norm(x), cos, sin, mask, cache, store_cache)
        return x + self.mlp(self.post_attention_norm(x))


class TinyDLM(PreTrainedModel):
    """The tiny family's network; its forward follows the contract in ``system.models.base``."""

    config_class = TinyDLMConfig
    base_model_prefix = "tiny"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TinyBlock"]

    def __init__(self, config: TinyDLMConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(TinyBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)

    def forward(  # type: ignore[override]
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        store_cache: bool = False,
    ) -> torch.Tensor:
        if position_ids is None:
            position_ids = default_positions(input_ids, cache)
        x = self.embed_tokens(input_ids)
        head_dim = self.config.hidden_size // self.config.num_attention_heads
        cos, sin = rope_cos_sin(position_ids, head_dim, self.config.rope_theta, x.dtype)
        recompute = self.gradient_checkpointing and self.training
        x = run_layers(self.layers, x, cos, sin, attention_mask, cache, store_cache, recompute)
        return self.lm_head(self.norm(x))


AutoConfig.register(MODEL_TYPE, TinyDLMConfig)
AutoModel.register(TinyDLMConfig, TinyDLM)
AutoModelForMaskedLM.register(TinyDLMConfig, TinyDLM)


def _spec(config: dict, directory: Path | None) -> ModelSpec:
    attention = config.get("attention", "full")
    return ModelSpec(
        arch="tiny",
        attention=attention,
        block_size=config.get("block_size") if attention == "block" else None,
        mask_token_id=int(config["mask_token_id"]),
        eos_token_id=int(config["eos_token_id"]),
        pad_token_id=int(config["pad_token_id"]),
        eot_token_id=config.get("eot_token_id"),
        vocab_size=int(config["vocab_size"]),
    )


def _build(config: dict) -> nn.Module:
    return TinyDLM(TinyDLMConfig(**{k: v for k, v in config.items() if k != "model_type"}))


def _load(directory: Path, config: dict, dtype: torch.dtype, device: str) -> nn.Module:
    # from_pretrained would initialise a missing tensor at random (it only logs a report) and fail on a
    # shape mismatch without naming the tensor: check names and shapes against config.json first.
    with torch.device("meta"):
        expected = _build(config)
    check_weights(expected, directory)
    hf_logging.disable_progress_bar()
    return TinyDLM.from_pretrained(str(directory), dtype=dtype).to(device)


FAMILY = Family(
    name="tiny",
    architectures=("TinyDLM",),
    build_net=_build,
    spec=_spec,
    load_net=_load,
)
