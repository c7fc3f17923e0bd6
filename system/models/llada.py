"""The LLaDA family (GSAI-ML/LLaDA-8B-Base / -Instruct, ``LLaDAModelLM``), without the hub's remote code.

What this module owns: the LLaDA network under the hub checkpoint's exact tensor names
(``model.transformer.wte`` / ``blocks.N.{attn_norm,q_proj,k_proj,v_proj,attn_out,ff_norm,ff_proj,
up_proj,ff_out}`` / ``ln_f`` / ``ff_out``), built from the hub config.json field names (``d_model``,
``n_heads``, ``n_kv_heads``, ``mlp_hidden_size``, ``rope_theta``, ``rms_norm_eps``, ``weight_tying``,
``include_qkv_bias``, ...); :func:`spec`; and :func:`resolve_special_ids`, the reading of special token
ids from config.json / tokenizer files / family defaults that the Dream family uses too.

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
from torch.utils.checkpoint import checkpoint

from system.models.base import KVCache, ModelSpec
from system.models.layers import RMSNorm, apply_rope, rope_cos_sin
from system.models.loading import CheckpointError, read_json
from system.models.registry import Family

# role -> (token text, id in the real-size vocabulary); used only where the id fits the vocabulary.
LLADA_SPECIAL_TOKENS: dict[str, tuple[str, int]] = {
    "mask": ("<|mdm_mask|>", 126336),
    "eos": ("<|endoftext|>", 126081),
    "eot": ("<|eot_id|>", 126348),
}
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
# Special token ids (shared with the Dream family)


def _json_if_present(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _tokenizer_tables(directory: Path | None) -> tuple[dict[str, int], dict[str, str]]:
    """(token text -> id of the added/special tokens, role -> token text) from the tokenizer files."""
    ids: dict[str, int] = {}
    roles: dict[str, str] = {}
    if directory is None:
        return ids, roles
    tok_config = _json_if_present(directory / "tokenizer_config.json")
    for key, entry in (tok_config.get("added_tokens_decoder") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("content"), str) and str(key).isdigit():
            ids.setdefault(entry["content"], int(key))
    for text, idx in _json_if_present(directory / "added_tokens.json").items():
        if isinstance(idx, int):
            ids.setdefault(text, idx)
    for source in (tok_config, _json_if_present(directory / "special_tokens_map.json")):
        for role in ("mask", "eos", "pad"):
            value = source.get(f"{role}_token")
            text = value.get("content") if isinstance(value, dict) else value
            if isinstance(text, str):
                roles.setdefault(role, text)
    return ids, roles


def _config_id(config: dict, role: str, vocab_size: int) -> int | None:
    value = config.get(f"{role}_token_id")
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    if not isinstance(value, int) or not 0 <= value < vocab_size:
        raise CheckpointError(
            f"config.json: {role}_token_id {value!r} is not an id in the vocabulary [0, {vocab_size}); "
            f"fix config.json or set model.{role}_token_id"
        )
    return value


def resolve_special_ids(
    config: dict, directory: Path | None, vocab_size: int, defaults: dict[str, tuple[str, int]]
) -> dict[str, int]:
    """Ids of the ``mask``, ``eos``, ``pad`` and ``eot`` tokens.

    Each comes from the first source that has it: config.json's ``<role>_token_id``; the tokenizer files
    in ``directory`` (``tokenizer_config.json`` roles and ``added_tokens_decoder``,
    ``special_tokens_map.json``, ``added_tokens.json``; for ``eot`` and a nameless mask, the family's
    token text from ``defaults``); the family's real-size default id, used only when it fits
    ``vocab_size``. Then pad and eot fall back to eos.
    """
    ids, roles = _tokenizer_tables(directory)
    out: dict[str, int] = {}
    for role in ("mask", "eos", "pad", "eot"):
        found = _config_id(config, role, vocab_size)
        texts = [roles[role]] if role in roles else []
        if role in defaults:
            texts.append(defaults[role][0])
        for text in texts:
            if found is None and text in ids and 0 <= ids[text] < vocab_size:
                found = ids[text]
        if found is None and role in defaults and defaults[role][1] < vocab_size:
            found = defaults[role][1]
        if found is not None:
            out[role] = found
    if "eos" not in out:
        raise CheckpointError("no eos token id: config.json has no eos_token_id and no tokenizer file names one")
    if "mask" not in out:
        raise CheckpointError(
            f"no mask token id: config.json has no mask_token_id, no tokenizer file names one, and the "
            f"family default {defaults['mask'][1]} is outside the vocabulary of {vocab_size}; "
            "add mask_token_id to config.json"
        )
    out.setdefault("pad", out["eos"])
    out.setdefault("eot", out["eos"])
    return out


class CheckpointingMixin:
    """``gradient_checkpointing`` flag with the transformers-style switches."""

    gradient_checkpointing: bool = False

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False


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
        bsz, length, _ = x.shape
        a = self.args
        q = self.q_proj(x).view(bsz, length, a.n_heads, a.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(bsz, length, a.n_kv_heads, a.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(bsz, length, a.n_kv_heads, a.head_dim).transpose(1, 2)
        q_rot, k_rot = apply_rope(q.to(cos.dtype), k.to(cos.dtype), cos, sin)
        q, k = q_rot.to(q.dtype), k_rot.to(k.dtype)
        if cache is not None:
            k, v = cache.extend(self.layer, k, v, store_cache)
        if a.n_kv_heads != a.n_heads:
            k = k.repeat_interleave(a.n_heads // a.n_kv_heads, dim=1)
            v = v.repeat_interleave(a.n_heads // a.n_kv_heads, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.attn_out(out.transpose(1, 2).reshape(bsz, length, a.d_model))

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
        self.gradient_checkpointing = False

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
            position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        x = t.wte(input_ids)
        if self.args.input_emb_norm:
            x = x * self.args.d_model**0.5
        rope_dtype = torch.float32 if self.args.rope_full_precision else x.dtype
        cos, sin = rope_cos_sin(position_ids, self.args.head_dim, self.args.rope_theta, rope_dtype)
        for block in t.blocks:
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, cos, sin, attention_mask, None, False, use_reentrant=False)
            else:
                x = block(x, cos, sin, attention_mask, cache, store_cache)
        x = t.ln_f(x)
        logits = F.linear(x, t.wte.weight) if self.args.weight_tying else t.ff_out(x)
        if self.args.scale_logits:
            logits = logits * (1.0 / self.args.d_model**0.5)
        return logits


def _build(config: dict) -> nn.Module:
    return LLaDANet(llada_args(config))


def _spec(config: dict, directory: Path | None) -> ModelSpec:
    vocab = llada_args(config).vocab
    ids = resolve_special_ids(config, directory, vocab, LLADA_SPECIAL_TOKENS)
    return ModelSpec(
        arch="llada",
        attention="full",
        mask_token_id=ids["mask"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        eot_token_id=ids["eot"],
        vocab_size=vocab,
    )


FAMILY = Family(name="llada", architectures=("LLaDAModelLM",), build_net=_build, spec=_spec)
