"""Parallel unmasking rules: how many of a block's masked positions one denoising step reveals, decided
from the confidences of that step instead of a fixed schedule (Fast-dLLM, Wu et al. 2025, section 3.3).

Both rules reveal at least one position per step, so a block of B tokens takes at most B steps, and at
most every eligible position; which positions is always the most confident ones
(`actors.decoding.reference.select_reveal`).

- ``threshold``: every position whose confidence reaches tau. Fast-dLLM's Theorem 1: when each of n
  marginals has probability above 1 - eps with (n + 1) eps <= 1, greedy parallel decoding gives the same
  tokens as sequential greedy decoding, so high-confidence positions can be revealed together.
- ``factor``: the n most confident, n the largest count with (n + 1)(1 - c_(n)) < f, where c_(n) is the
  n-th largest confidence: the theorem's condition with a slack f, so that many confident positions may
  be revealed together even when none passes a fixed tau.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ParallelRule = Callable[[torch.Tensor, float], torch.Tensor]


def threshold_count(confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """Positions to reveal per row: those with confidence >= ``threshold``, at least 1.
    ``confidence [B, n]`` (-inf = not eligible) -> long ``[B]``."""
    return (confidence >= threshold).sum(-1).clamp(min=1)


def factor_count(confidence: torch.Tensor, factor: float) -> torch.Tensor:
    """Largest n with ``(n + 1) * (1 - c_(n)) < factor`` over the eligible confidences sorted in
    decreasing order, at least 1. ``confidence [B, n]`` (-inf = not eligible) -> long ``[B]``.

    The condition is checked for every n; the count is the largest n that meets it (c_(n) falls as n
    grows and n + 1 rises, so the condition, once false, stays false)."""
    ordered = torch.sort(confidence, dim=-1, descending=True).values
    n = torch.arange(1, ordered.shape[-1] + 1, device=confidence.device, dtype=ordered.dtype)
    ok = ((n + 1) * (1 - ordered) < factor) & torch.isfinite(ordered)
    return (ok.long().cumprod(-1).sum(-1)).clamp(min=1)


PARALLEL_RULES: dict[str, ParallelRule] = {"threshold": threshold_count, "factor": factor_count}


def parallel_count(remasking: str, confidence: torch.Tensor, threshold: float, factor: float) -> torch.Tensor:
    """Dispatch on ``decoding.remasking`` (one of `PARALLEL_RULES`): the per-row reveal count ``[B]``."""
    rule = PARALLEL_RULES[remasking]
    return rule(confidence, threshold if remasking == "threshold" else factor)
