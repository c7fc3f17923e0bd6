"""The `DiffusionModel` adapter: the one model interface that decoders, estimators and learners call.

Every model family (the built-in tiny model, LLaDA, Dream, SDAR, LLaDA2.0) provides a *network*: an
``nn.Module`` whose forward is::

    net(input_ids [B, Lq], attention_mask [B, 1, Lq, Lk] bool or None, position_ids [B, Lq],
        cache: KVCache | None, store_cache: bool) -> raw logits [B, Lq, V]

where ``attention_mask`` is True where a query may attend a key, ``Lk = cache.length + Lq`` (the cached
keys come first), and ``None`` means full bidirectional attention. The adapter around it owns
everything the callers should not have to know per family:

- the attention mask: a 2D padding mask (1 = real token) or a 4D boolean mask (block-causal,
  staircase) is accepted and normalised; a ``block`` family gets a block-causal mask by default;
- position ids (default ``0..L-1``, offset by the cache length);
- the logit alignment: ``logits[:, i]`` always scores token ``i`` (Dream's one-position shift is
  undone here);
- the special token ids and the block size, from the checkpoint and our config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import nn

from system.errors import CheckpointError

AttentionFamily = Literal["full", "block"]


@dataclass(frozen=True)
class ModelSpec:
    """What callers need to know about a model besides its logits.

    Attributes:
        arch: model family name: ``tiny``, ``llada``, ``dream``, ``sdar`` or ``llada2``.
        attention: ``full`` (bidirectional over the whole sequence) or ``block`` (causal across blocks,
            bidirectional inside a block; a KV cache of finished blocks is exact).
        block_size: block length of ``block`` families; None for ``full``.
        mask_token_id / eos_token_id / pad_token_id: special ids; ``eot_token_id`` is the chat
            end-of-turn id where the family has one (else the EOS id).
        vocab_size: size of the logit dimension.
        logits_shift: True when the raw network output at i predicts token i+1 (Dream).
    """

    arch: str
    attention: AttentionFamily
    mask_token_id: int
    eos_token_id: int
    pad_token_id: int
    vocab_size: int
    block_size: int | None = None
    eot_token_id: int | None = None
    logits_shift: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Called by `DiffusionModel` once overrides are applied (so an override can fix a bad id)."""
        if not 0 <= self.mask_token_id < self.vocab_size:
            raise CheckpointError(
                f"mask_token_id {self.mask_token_id} is outside the vocabulary [0, {self.vocab_size}); "
                "set model.mask_token_id to the id of the checkpoint's mask token"
            )
        if self.block_size is not None and (not isinstance(self.block_size, int) or isinstance(self.block_size, bool)):
            raise CheckpointError(f"block_size must be an integer, got {self.block_size!r}")
        if self.attention == "block" and (self.block_size is None or self.block_size < 1):
            raise CheckpointError(f"a block-attention model needs block_size >= 1, got {self.block_size}")

    def with_overrides(self, **kwargs: object) -> ModelSpec:
        return replace(self, **{k: v for k, v in kwargs.items() if v is not None})


class KVCache:
    """Keys and values of finished (committed) tokens, one entry per layer.

    A network's attention layer calls :meth:`extend` with the current keys and values
    ``[B, H_kv, Lq, D]``; it returns the keys and values to attend over (cache first) and, when
    ``store`` is True, appends the current ones. Exact for block-causal models, whose finished blocks
    never attend to later tokens.

    ``leads_by_one``: True for a cache whose callers start each call one token before the first position
    they need and drop that call's first logit (``actors.decoding.caches.WindowCache``); only such a cache
    may serve a shifted-logit family, whose first logit of a call would need the previous position.
    """

    leads_by_one: bool = False

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    @property
    def length(self) -> int:
        return 0 if not self.keys else int(self.keys[0].shape[-2])

    def extend(
        self, layer: int, key: torch.Tensor, value: torch.Tensor, store: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer < len(self.keys):
            full_k = torch.cat([self.keys[layer], key], dim=-2)
            full_v = torch.cat([self.values[layer], value], dim=-2)
        else:
            assert layer == len(self.keys), "layers must fill the cache in order"
            full_k, full_v = key, value
        if store:
            if layer < len(self.keys):
                self.keys[layer], self.values[layer] = full_k, full_v
            else:
                self.keys.append(full_k)
                self.values.append(full_v)
        return full_k, full_v

    def crop(self, length: int) -> None:
        """Drop cached positions from ``length`` on (e.g. to re-decode a block)."""
        self.keys = [k[..., :length, :] for k in self.keys]
        self.values = [v[..., :length, :] for v in self.values]


def block_causal_mask(
    length: int, block_size: int, device: torch.device | None = None, offset: int = 0
) -> torch.Tensor:
    """Block-causal boolean mask ``[1, 1, L, offset + L]``: query i may attend key j iff
    ``block(j) <= block(i)``, blocks counted from absolute position 0 (keys ``0..offset-1`` are the
    cache)."""
    q_block = (torch.arange(length, device=device) + offset) // block_size
    k_block = torch.arange(offset + length, device=device) // block_size
    return (k_block[None, :] <= q_block[:, None])[None, None]


def padding_to_4d(padding_mask: torch.Tensor, q_len: int | None = None) -> torch.Tensor:
    """2D padding mask ``[B, Lk]`` (1/True = real token) -> boolean ``[B, 1, Lq, Lk]`` over keys.

    Queries are the last ``q_len`` keys (``Lq = Lk`` by default). A query row that would attend to
    nothing (a pad token) is allowed to attend to itself, so no row is all False (SDPA would return NaN
    for it and the NaN would reach gradients)."""
    keys = padding_mask.bool()
    bsz, k_len = keys.shape
    q_len = k_len if q_len is None else q_len
    mask = keys[:, None, None, :].expand(bsz, 1, q_len, k_len).clone()
    diag = torch.arange(q_len, device=keys.device) + (k_len - q_len)
    mask[:, 0, torch.arange(q_len, device=keys.device), diag] |= ~keys[:, diag]
    return mask


def self_attend_empty_rows(mask: torch.Tensor, cache_len: int = 0) -> torch.Tensor:
    """A 4D boolean mask ``[B|1, 1, Lq, cache + Lq]`` whose query rows that may attend to nothing (the pad
    queries of Dream's ``generation_utils`` mask) attend to themselves instead.

    SDPA's output for an all-False row is undefined: 0 from the CPU math kernel, anything from the fused
    CUDA kernels in bf16 (issue 17 measured 7.9 off). Such a row is a pad query; its output is read by
    nobody except, after Dream's one-position shift, as the aligned logit of the first real token of a
    left-padded row, a prompt token that no estimator, loss or decoder scores. Self-attention makes it
    the same finite value on every device, as `padding_to_4d` already does for 2D masks."""
    empty = ~mask.any(-1)  # [B|1, 1, Lq]
    if not bool(empty.any()):
        return mask
    q_len = mask.shape[-2]
    diag = torch.arange(q_len, device=mask.device)
    fixed = mask.clone()
    fixed[:, 0, diag, diag + cache_len] |= empty[:, 0]
    return fixed


class DiffusionModel(nn.Module):
    """Adapter over a family network; see the module docstring for the contract.

    ``forward`` returns logits ``[B, L, V]`` aligned so that ``logits[:, i]`` scores token ``i``.
    """

    def __init__(self, net: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        spec.validate()
        self.net = net
        self.spec = spec

    # Conveniences used everywhere.
    @property
    def mask_token_id(self) -> int:
        return self.spec.mask_token_id

    @property
    def attention(self) -> AttentionFamily:
        return self.spec.attention

    @property
    def block_size(self) -> int | None:
        return self.spec.block_size

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    def build_attention_mask(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache_len: int = 0,
    ) -> torch.Tensor | None:
        """Normalise a user mask to the network's 4D boolean form (or None for full attention)."""
        bsz, q_len = input_ids.shape
        k_len = cache_len + q_len
        if attention_mask is not None and attention_mask.dim() == 4:
            if attention_mask.shape[0] not in (1, bsz) or tuple(attention_mask.shape[1:]) != (1, q_len, k_len):
                raise ValueError(
                    f"4D attention mask has shape {tuple(attention_mask.shape)}; expected "
                    f"[{bsz} or 1, 1, {q_len}, {k_len}] (batch, 1, queries, cache + queries)"
                )
            if attention_mask.dtype != torch.bool:
                raise ValueError("4D attention masks must be boolean (True = may attend)")
            return self_attend_empty_rows(attention_mask, cache_len)
        mask: torch.Tensor | None = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[0] != bsz:
                raise ValueError(
                    f"attention mask must be 2D [B, L] padding or 4D boolean, got {tuple(attention_mask.shape)}"
                )
            if attention_mask.shape[1] == q_len and cache_len:
                attention_mask = torch.cat(
                    [attention_mask.new_ones(bsz, cache_len), attention_mask], dim=1
                )
            if attention_mask.shape[1] != k_len:
                raise ValueError(
                    f"2D padding mask has length {attention_mask.shape[1]}; expected {q_len} or {k_len}"
                )
            if not bool(attention_mask.bool().all()):
                mask = padding_to_4d(attention_mask, q_len)
        if self.spec.attention == "block":
            assert self.spec.block_size is not None
            causal = block_causal_mask(q_len, self.spec.block_size, input_ids.device, offset=cache_len)
            mask = causal if mask is None else (mask & causal)
            if mask.shape[0] != bsz:
                mask = mask.expand(bsz, -1, -1, -1)
        return mask

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        store_cache: bool = False,
    ) -> torch.Tensor:
        """Logits ``[B, L, V]`` with ``logits[:, i]`` scoring token ``i``.

        Args:
            input_ids: ``[B, L]`` token ids (mask token at masked positions).
            attention_mask: None (full, or block-causal for block families), 2D padding ``[B, L]``
                (or ``[B, cache + L]``), or 4D boolean ``[B|1, 1, L, cache + L]``.
            position_ids: ``[B, L]``; default ``cache.length + arange(L)``.
            cache: keys/values of finished blocks to attend over; ``store_cache`` appends this call's.
        """
        cache_len = cache.length if cache is not None else 0
        if cache_len and self.spec.logits_shift and not cache.leads_by_one:  # type: ignore[union-attr]
            raise ValueError(
                f"{self.spec.arch}: a KV cache is not supported for a shifted-logit (AR-head) family: the first "
                "token of each call would need the logit of the last cached position"
            )
        if position_ids is None:
            position_ids = (torch.arange(input_ids.shape[1], device=input_ids.device) + cache_len)[None]
            position_ids = position_ids.expand(input_ids.shape[0], -1)
        mask = self.build_attention_mask(input_ids, attention_mask, cache_len)
        logits = self.net(input_ids, mask, position_ids, cache, store_cache)
        if self.spec.logits_shift:
            # The network's output at i predicts token i+1 (AR-style head). Re-align so position i is
            # scored by the output at i-1; position 0 keeps its own (it is never a masked target).
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits
