"""The SDAR family (JetLM/SDAR-*-Chat, ``SDARForCausalLM``; also TraDo): a Qwen3 network run as a
block-diffusion model, without the hub's remote code.

What this module owns: the network shell (embeddings, decoder layers, final norm, head, under the hub
checkpoint's exact tensor names), the hand-off of our mask / position ids / `KVCache` to the layers,
:func:`spec` (block size, special ids) and :func:`hub_token_ids`, the reader of a checkpoint
directory's tokenizer files that LLaDA2 uses as well.

**Is SDAR exactly Qwen3?** Its layers are: the hub file is transformers' ``modeling_qwen3.py`` (v4.52)
with the same parameters (GQA, q/k RMSNorm per head, rotate-half RoPE, SwiGLU, no biases) and
the same math. What the original changes is around the layers, not in them: every RMSNorm runs
through flash_attn's Triton ``rms_norm_fn`` (the same fp32 formula), attention is SDPA with the
caller's mask and never causal (``flash_attn_func`` when the mask is all True: the same result), the
cache is written only when ``store_kv=True``, and the sliding window is computed but never applied.
So every decoder layer here is transformers' own ``Qwen3DecoderLayer`` (with its ``Qwen3Attention``,
``Qwen3MLP``, ``Qwen3RMSNorm``), built from a ``Qwen3Config`` with ``sdpa`` attention and
``is_causal = False``. What is *not* transformers' here, and why:

- ``Qwen3Model.forward`` is not used: it builds its own mask (``create_causal_mask``; a None mask would
  become causal, and it expects a transformers ``Cache``) and its RoPE module keeps ``inv_freq`` as a
  non-persistent buffer that a network built on the meta device would leave empty. The shell below is
  the few lines that embed, take cos/sin from :func:`~system.models.layers.rope_cos_sin` (computed
  from the position ids, no buffers), pass our boolean 4D mask (or None = full attention) straight to
  the layers, and apply the final norm and head.
- The cache: ``Qwen3Attention`` calls ``past_key_values.update(k, v, layer_idx)`` after RoPE; a small
  adapter turns that into ``KVCache.extend(layer_idx, k, v, store)``, which gives SDAR's
  ``store_kv`` semantics (cached keys first, written only when storing).

Departures from the original: with bf16 weights the RMSNorm rounds once more than flash_attn's kernel
(weight times the normalised input in the input dtype, as Qwen3 does); ``rope_scaling`` is rejected
(no SDAR checkpoint uses it); ``fuse_cross_entropy`` (logits None in training) is not reproduced;
with ``tie_word_embeddings`` the head reuses the embedding matrix and has no tensor of its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3DecoderLayer, Qwen3RMSNorm

from system.models.base import KVCache, ModelSpec
from system.models.layers import rope_cos_sin
from system.models.registry import Family

DEFAULT_BLOCK_SIZE = 4
MASK_TOKEN_ID = 151669  # <|MASK|> (added_tokens.json calls it <MASK>)
EOS_TOKEN_ID = 151643  # <|endoftext|>, also the pad token
EOT_TOKEN_ID = 151645  # <|im_end|>
MASK_TOKEN_NAMES = ("<|MASK|>", "<MASK>")
EOT_TOKEN_NAME = "<|im_end|>"
TOKENIZER_FILES = ("tokenizer_config.json", "added_tokens.json")


def _int_or_first(value: object) -> int | None:
    """A config id that may be an int or a list of ints (generation_config's eos_token_id)."""
    if isinstance(value, list):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def hub_token_ids(directory: Path | None) -> dict[str, int]:
    """Token text -> id from a checkpoint directory's ``tokenizer_config.json`` (its
    ``added_tokens_decoder``) and ``added_tokens.json``; empty when there are none. Unreadable files
    are skipped: these ids only refine defaults."""
    ids: dict[str, int] = {}
    if directory is None:
        return ids
    for name in TOKENIZER_FILES:
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        for key, value in (data.get("added_tokens_decoder") or {}).items():
            if isinstance(value, dict) and isinstance(value.get("content"), str) and str(key).isdigit():
                ids.setdefault(value["content"], int(key))
        if name == "added_tokens.json":
            for text, value in data.items():
                if isinstance(value, int):
                    ids.setdefault(text, value)
    return ids


def generation_eos_ids(directory: Path | None) -> list[int]:
    """The ``eos_token_id`` list of ``generation_config.json`` (empty when absent)."""
    path = directory / "generation_config.json" if directory is not None else None
    if path is None or not path.is_file():
        return []
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return []
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int)]


def _block_size(config: dict, directory: Path | None) -> int:
    """config ``block_size``, else a ``-bN`` suffix of the directory name (SDAR-8B-Chat-b32), else 4."""
    value = config.get("block_size")
    if value is not None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"config.json: block_size must be a positive integer, got {value!r}")
        return value
    match = re.search(r"-b(\d+)$", directory.name, flags=re.IGNORECASE) if directory is not None else None
    return int(match.group(1)) if match else DEFAULT_BLOCK_SIZE


def _spec(config: dict, directory: Path | None) -> ModelSpec:
    vocab = int(config["vocab_size"])
    tokens = hub_token_ids(directory)
    mask = _int_or_first(config.get("mask_token_id"))
    if mask is None:
        mask = next((tokens[n] for n in MASK_TOKEN_NAMES if n in tokens), MASK_TOKEN_ID)
    eos = _int_or_first(config.get("eos_token_id"))
    eos = EOS_TOKEN_ID if eos is None else eos
    pad = _int_or_first(config.get("pad_token_id"))
    pad = eos if pad is None else pad
    candidates = [tokens.get(EOT_TOKEN_NAME)] + [i for i in generation_eos_ids(directory) if i != eos]
    candidates.append(EOT_TOKEN_ID)
    eot = next((i for i in candidates if i is not None and 0 <= i < vocab), eos)
    for name, value in (("eos_token_id", eos), ("pad_token_id", pad)):
        if not 0 <= value < vocab:
            raise ValueError(f"config.json: {name} {value} is outside the vocabulary [0, {vocab})")
    return ModelSpec(
        arch="sdar",
        attention="block",
        block_size=_block_size(config, directory),
        mask_token_id=mask,
        eos_token_id=eos,
        pad_token_id=pad,
        eot_token_id=eot,
        vocab_size=vocab,
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


class _CacheView:
    """What ``Qwen3Attention`` sees as ``past_key_values``: ``update`` -> ``KVCache.extend``."""

    def __init__(self, cache: KVCache, store: bool) -> None:
        self.cache = cache
        self.store = store

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.extend(layer_idx, key, value, self.store)


class SDARBackbone(nn.Module):
    """``model.*`` of the checkpoint: embeddings, transformers' Qwen3 decoder layers, final norm."""

    def __init__(self, qcfg: Qwen3Config, pad_token_id: int | None) -> None:
        super().__init__()
        padding_idx = (
            pad_token_id if pad_token_id is not None and 0 <= pad_token_id < qcfg.vocab_size else None
        )
        # padding_idx as in the original: that row gets no gradient.
        self.embed_tokens = nn.Embedding(qcfg.vocab_size, qcfg.hidden_size, padding_idx)
        self.layers = nn.ModuleList(Qwen3DecoderLayer(qcfg, i) for i in range(qcfg.num_hidden_layers))
        for layer in self.layers:
            # block diffusion: only the caller's mask restricts attention
            layer.self_attn.is_causal = False  # type: ignore[union-attr]
        self.norm = Qwen3RMSNorm(qcfg.hidden_size, eps=qcfg.rms_norm_eps)


class SDARNet(nn.Module):
    """SDAR's network; its forward follows the contract in ``system.models.base``."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.qcfg = qwen3_config(config)
        self.rope_theta = float(config.get("rope_theta", 1e6))
        self.model = SDARBackbone(self.qcfg, _int_or_first(config.get("pad_token_id")))
        self.tie_word_embeddings = bool(self.qcfg.tie_word_embeddings)
        if not self.tie_word_embeddings:
            self.lm_head = nn.Linear(self.qcfg.hidden_size, self.qcfg.vocab_size, bias=False)
        self.gradient_checkpointing = False

    def gradient_checkpointing_enable(self, **kwargs: object) -> None:
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.tie_word_embeddings:
            return F.linear(hidden, self.model.embed_tokens.weight)
        return self.lm_head(hidden)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        store_cache: bool = False,
    ) -> torch.Tensor:
        if position_ids is None:
            offset = cache.length if cache is not None else 0
            position_ids = (torch.arange(input_ids.shape[1], device=input_ids.device) + offset)[None]
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(position_ids, self.qcfg.head_dim, self.rope_theta, x.dtype)
        rope = (cos[:, 0], sin[:, 0])  # Qwen3 adds the head axis itself
        view = _CacheView(cache, store_cache) if cache is not None else None
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(layer, x, attention_mask, position_embeddings=rope, use_reentrant=False)
            else:
                x = layer(x, attention_mask, position_embeddings=rope, past_key_values=view)
        return self.head(self.model.norm(x))


def _build(config: dict) -> nn.Module:
    return SDARNet(config)


FAMILY = Family(name="sdar", architectures=("SDARForCausalLM",), build_net=_build, spec=_spec)
