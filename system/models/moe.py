"""Mixture-of-experts pieces of LLaDA2.0 (``LLaDA2MoeModelLM``, Ling-2.0 lineage): the grouped top-k
sigmoid router with a selection-only expert bias, and the sparse block of SwiGLU experts
(:class:`~system.models.layers.SwiGLU`) with shared experts. Parameter names follow the hub
checkpoint (``mlp.gate.weight``, ``mlp.gate.expert_bias``, ``mlp.experts.{i}.{gate,up,down}_proj.weight``,
``mlp.shared_experts.*``).

The routing arithmetic is the original's: router logits in fp32, ``sigmoid`` scores, ``scores +
expert_bias`` for *selection only* (top-2 sum per group -> ``topk_group`` groups -> ``top_k`` experts
inside them), the unbiased scores of the chosen experts as weights, normalised to sum 1 when
``top_k > 1``, times ``routed_scaling_factor``; the weighted sum of expert outputs is taken in fp32 and
cast back, then the shared experts are added.

Departures from the original: one dispatch for training and inference (the original has a
``no_grad`` sorted dispatch for eval and a per-expert loop for training; both compute the same sum,
and this one is differentiable); ``norm_topk_prob: false`` switches the normalisation off (the original
never reads the flag; every published config sets it true); with a group of one expert the group score
is that expert's score (the original's top-2 would fail).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from system.models.layers import SwiGLU


class GroupedTopKRouter(nn.Module):
    """Sigmoid router with grouped top-k selection; ``expert_bias`` (a persistent buffer, not trained by
    gradients) shifts which experts are chosen but not their weights."""

    expert_bias: torch.Tensor

    def __init__(
        self,
        hidden_size: int,
        num_experts: int,
        top_k: int,
        n_group: int,
        topk_group: int,
        routed_scaling_factor: float,
        norm_topk_prob: bool = True,
    ) -> None:
        super().__init__()
        if n_group < 1 or num_experts % n_group:
            raise ValueError(f"num_experts {num_experts} must split into n_group {n_group} equal groups")
        if not 1 <= topk_group <= n_group:
            raise ValueError(f"topk_group {topk_group} must be in [1, n_group={n_group}]")
        if not 1 <= top_k <= topk_group * (num_experts // n_group):
            raise ValueError(f"num_experts_per_tok {top_k} exceeds the experts of {topk_group} groups")
        self.num_experts, self.top_k = num_experts, top_k
        self.n_group, self.topk_group = n_group, topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.norm_topk_prob = norm_topk_prob
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        self.register_buffer("expert_bias", torch.zeros(num_experts))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's default; a no-op on meta

    def select(self, routing: torch.Tensor) -> torch.Tensor:
        """Expert ids ``[T, top_k]`` chosen from the biased scores ``[T, E]`` within the best groups."""
        tokens = routing.shape[0]
        grouped = routing.view(tokens, self.n_group, -1)
        group_scores = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(dim=-1)
        groups = group_scores.topk(self.topk_group, dim=-1, sorted=False).indices
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, groups, True)
        keep = keep[:, :, None].expand_as(grouped).reshape(tokens, -1)
        return routing.masked_fill(~keep, float("-inf")).topk(self.top_k, dim=-1).indices

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [T, H]`` -> (expert ids ``[T, top_k]``, fp32 weights ``[T, top_k]``)."""
        logits = F.linear(x.float(), self.weight.float())
        scores = torch.sigmoid(logits)
        with torch.no_grad():
            experts = self.select(scores + self.expert_bias.float())
        weights = scores.gather(1, experts)
        if self.top_k > 1 and self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return experts, weights * self.routed_scaling_factor


class SparseMoeBlock(nn.Module):
    """Routed experts plus (optional) shared experts, on ``[B, L, H]``."""

    def __init__(
        self,
        hidden_size: int,
        moe_intermediate_size: int,
        num_experts: int,
        num_shared_experts: int | None,
        router: GroupedTopKRouter,
    ) -> None:
        super().__init__()
        self.experts = nn.ModuleList(SwiGLU(hidden_size, moe_intermediate_size) for _ in range(num_experts))
        self.gate = router
        self.shared_experts = (
            SwiGLU(hidden_size, moe_intermediate_size * num_shared_experts)
            if num_shared_experts is not None
            else None
        )

    def routed(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_k weights[t, k] * expert_{experts[t, k]}(x[t]), in fp32, grouped by expert."""
        top_k = experts.shape[1]
        flat = experts.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        token = order // top_k
        weight = weights.reshape(-1)[order]
        out = torch.zeros(x.shape[0], x.shape[1], dtype=weights.dtype, device=x.device)
        start = 0
        for index, count in enumerate(counts):
            if count == 0:
                continue
            rows = slice(start, start + count)
            start += count
            y = self.experts[index](x[token[rows]])
            out = out.index_add(0, token[rows], y.to(weights.dtype) * weight[rows, None])
        return out.to(x.dtype)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = hidden.reshape(-1, hidden.shape[-1])
        experts, weights = self.gate(x)
        out = self.routed(x, experts, weights)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.view(hidden.shape)
