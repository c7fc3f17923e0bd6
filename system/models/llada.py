"""The LLaDA family (GSAI-ML/LLaDA-8B-Base / -Instruct, ``LLaDAModelLM``), without the hub's remote code.

What this module owns: the LLaDA network under the hub checkpoint's exact tensor names
(``model.transformer.wte`` / ``blocks.N.{attn_norm,q_proj,k_proj,v_proj,attn_out,ff_norm,ff_proj,
up_proj,ff_out}`` / ``ln_f`` / ``ff_out``), built from the hub config.json field names (``d_model``,
``n_heads``, ``n_kv_heads``, ``mlp_hidden_size``, ``rope_theta``, ``rms_norm_eps``, ``weight_tying``,
``include_qkv_bias``, ...); and :func:`spec` (special ids through :mod:`system.models.hub`).

LLaDA is an OLMo-style "llama" block, not a transformers architecture (its names, its fused defaults
and its config fields are its own), so the network is written here from our ``layers.py``: pre-norm
RMSNorm, bidirectional SDPA attention with rotate-half RoPE on the full head, SwiGLU
``ff_out(act(ff_proj(x)) * up_proj(x))``, final RMSNorm, untied output head ``ff_out``.

Where it departs from the original:

- position ids are an input (the original always uses ``0..L-1``), so a staircase with reused
  positions is one call; and a `KVCache` is supported (the original asserts it away);
- the attention mask is our boolean 4D mask; a 2D padding mask reaches us through the adapter's
  ``padding_to_4d``, so padded *query* rows also see themselves (the original lets them see the real
  keys only): real-token rows are identical, pad rows are don't-care in both;
- dropout (residual, attention, embedding) is not implemented: the released configs set it to 0;
- only the configuration of the released checkpoints is implemented (``block_type: llama``, RoPE,
  RMSNorm with weights and no bias, ``block_group_size: 1``, no q/k layer norm, no ALiBi, activation
  silu/gelu/relu); anything else fails at build time naming the config.json field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from system.models.base import KVCache, ModelSpec
from system.models.hub import SpecialTokens, Token, special_ids
from system.models.layers import (
    CheckpointingMixin,
    RMSNorm,
    apply_rope,
    attend,
    default_positions,
    head_logits,
    rope_cos_sin,
    run_layers,
    split_heads,
)
from system.models.loading import CheckpointError
from system.models.registry import Family

# Texts in the tokenizer files, and ids in the real-size vocabulary (used only where they fit).
SPECIAL_TOKENS = SpecialTokens(
    mask=Token(("<|mdm_mask|>",), 126336),
    eos=Token(("<|endoftext|>",), 126081),
    eot=Token(("<|eot_id|>",), 126348),
)
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"silu": F.silu, "gelu": F.gelu, "relu": F.relu}
# Defaults of the original ``ModelConfig`` for the fields read here (a config.json may omit them).
ORIGINAL_DEFAULTS: dict[str, object] = {
    "n_kv_heads": None, "multi_query_attention": None, "mlp_ratio": 4, "mlp_hidden_size": None,
    "activation_type": "swiglu", "block_type": "sequential", "block_group_size": 1, "alibi": False,
    "rope": False, "rope_full_precision": True, "attention_layer_norm": False, "input_emb_norm": False,
    "layer_norm_type": "default", "layer_norm_with_affine": True, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "include_qkv_bias": False, "include_bias": False, "bias_for_layer_norm": None,
    "scale_logits": False, "embedding_size": 50304, "weight_tying": True,
}


# ----------------------------------------------------------------------------------------------------
# The network


@dataclass(frozen=True)
class LLaDAArgs:
    d_model: int
    n_heads: int
    n_kv_heads: int
    n_layers: int
    hidden: int
    vocab: int
    rope_theta: float
    eps: float
    qkv_bias: bool
    bias: bool
    weight_tying: bool
    scale_logits: bool
    input_emb_norm: bool
    rope_full_precision: bool
    activation: str

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def _unsupported(cfg: dict) -> list[str]:
    wrong = []
    expect = {"block_type": "llama", "rope": True, "alibi": False, "layer_norm_type": "rms",
              "layer_norm_with_affine": True, "block_group_size": 1, "attention_layer_norm": False}
    for key, value in expect.items():
        if cfg[key] != value:
            wrong.append(f"{key}={cfg[key]!r} (supported: {value!r})")
    norm_bias = cfg["include_bias"] if cfg["bias_for_layer_norm"] is None else cfg["bias_for_layer_norm"]
    if norm_bias:
        wrong.append("layer-norm bias (bias_for_layer_norm / include_bias) is not supported")
    if cfg["activation_type"] not in ACTIVATIONS:
        wrong.append(f"activation_type={cfg['activation_type']!r} (supported: {sorted(ACTIVATIONS)})")
    if cfg["d_model"] % cfg["n_heads"]:
        wrong.append(f"d_model {cfg['d_model']} is not a multiple of n_heads {cfg['n_heads']}")
    return wrong


def llada_args(config: dict) -> LLaDAArgs:
    """Read the hub config.json fields (with the original's defaults) and reject what is not implemented."""
    cfg = {**ORIGINAL_DEFAULTS, **config}
    missing = [k for k in ("d_model", "n_heads", "n_layers", "vocab_size") if k not in config]
    if missing:
        raise CheckpointError(f"config.json: LLaDA config lacks {missing}")
    wrong = _unsupported(cfg)
    if wrong:
        raise CheckpointError("config.json: LLaDA variant not implemented: " + "; ".join(wrong))
    n_kv = cfg["n_kv_heads"]
    if n_kv is None:
        n_kv = 1 if cfg["multi_query_attention"] else cfg["n_heads"]
    hidden = cfg["mlp_hidden_size"] or cfg["mlp_ratio"] * cfg["d_model"]
    return LLaDAArgs(
        d_model=cfg["d_model"], n_heads=cfg["n_heads"], n_kv_heads=n_kv, n_layers=cfg["n_layers"],
        hidden=hidden, vocab=cfg["embedding_size"] or cfg["vocab_size"], rope_theta=float(cfg["rope_theta"]),
        eps=float(cfg["rms_norm_eps"]), qkv_bias=bool(cfg["include_bias"] or cfg["include_qkv_bias"]),
        bias=bool(cfg["include_bias"]), weight_tying=bool(cfg["weight_tying"]),
        scale_logits=bool(cfg["scale_logits"]), input_emb_norm=bool(cfg["input_emb_norm"]),
        rope_full_precision=bool(cfg["rope_full_precision"]), activation=cfg["activation_type"],
    )


class LLaDABlock(nn.Module):
    """One "llama" block: x + attn(attn_norm(x)), then + ff_out(act(ff_proj(h)) * up_proj(h))."""

    def __init__(self, args: LLaDAArgs, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.args = args
        d, kv = args.d_model, args.n_kv_heads * args.head_dim
        self.attn_norm = RMSNorm(d, args.eps)
        self.q_proj = nn.Linear(d, d, bias=args.qkv_bias)
        self.k_proj = nn.Linear(d, kv, bias=args.qkv_bias)
        self.v_proj = nn.Linear(d, kv, bias=args.qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=args.bias)
        self.ff_norm = RMSNorm(d, args.eps)
        self.ff_proj = nn.Linear(d, args.hidden, bias=args.bias)
        self.up_proj = nn.Linear(d, args.hidden, bias=args.bias)
        self.ff_out = nn.Linear(args.hidden, d, bias=args.bias)
        self.act = ACTIVATIONS[args.activation]

    def attention(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
        cache: KVCache | None, store_cache: bool,
    ) -> torch.Tensor:
        q = split_heads(self.q_proj(x), self.args.n_heads)
        k = split_heads(self.k_proj(x), self.args.n_kv_heads)
        v = split_heads(self.v_proj(x), self.args.n_kv_heads)
        q_rot, k_rot = apply_rope(q.to(cos.dtype), k.to(cos.dtype), cos, sin)  # fp32 RoPE by default
        q, k = q_rot.to(q.dtype), k_rot.to(k.dtype)
        return self.attn_out(attend(q, k, v, mask, cache, self.layer, store_cache))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
        cache: KVCache | None, store_cache: bool,
    ) -> torch.Tensor:
        x = x + self.attention(self.attn_norm(x), cos, sin, mask, cache, store_cache)
        h = self.ff_norm(x)
        return x + self.ff_out(self.act(self.ff_proj(h)) * self.up_proj(h))


class LLaDATransformer(nn.Module):
    """Holds ``transformer``: the ModuleDict whose names are the hub's (``model.transformer.*``)."""

    def __init__(self, args: LLaDAArgs) -> None:
        super().__init__()
        parts: dict[str, nn.Module] = {
            "wte": nn.Embedding(args.vocab, args.d_model),
            "blocks": nn.ModuleList(LLaDABlock(args, i) for i in range(args.n_layers)),
            "ln_f": RMSNorm(args.d_model, args.eps),
        }
        if not args.weight_tying:
            parts["ff_out"] = nn.Linear(args.d_model, args.vocab, bias=args.bias)
        self.transformer = nn.ModuleDict(parts)


class LLaDANet(CheckpointingMixin, nn.Module):
    """The LLaDA network; ``forward`` follows the contract in ``system.models.base``."""

    def __init__(self, args: LLaDAArgs) -> None:
        super().__init__()
        self.args = args
        self.model = LLaDATransformer(args)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        store_cache: bool = False,
    ) -> torch.Tensor:
        t = self.model.transformer
        if position_ids is None:
            position_ids = default_positions(input_ids, cache)
        x = t.wte(input_ids)
        if self.args.input_emb_norm:
            x = x * self.args.d_model**0.5
        rope_dtype = torch.float32 if self.args.rope_full_precision else x.dtype
        cos, sin = rope_cos_sin(position_ids, self.args.head_dim, self.args.rope_theta, rope_dtype)
        x = run_layers(t.blocks, x, cos, sin, attention_mask, cache, store_cache, self.recompute)
        logits = head_logits(t.ln_f(x), t.wte, getattr(t, "ff_out", None))
        if self.args.scale_logits:
            logits = logits * (1.0 / self.args.d_model**0.5)
        return logits


def _build(config: dict) -> nn.Module:
    return LLaDANet(llada_args(config))


def _spec(config: dict, directory: Path | None) -> ModelSpec:
    vocab = llada_args(config).vocab
    ids = special_ids(config, directory, vocab, SPECIAL_TOKENS)
    return ModelSpec(arch="llada", attention="full", vocab_size=vocab, **ids)


FAMILY = Family(name="llada", architectures=("LLaDAModelLM",), build_net=_build, spec=_spec)
