"""Policy losses, chosen by name: ``get_loss("stabledrl", clip_high=5.0)`` or ``build_loss(cfg.algorithm)``.

- ``grpo``: conditional PPO clip, fixed 1/G, token or sequence ratio, optional k3 KL (ppo.py);
- ``diffu_grpo``: d1's token-level GRPO, eps 0.5, k3 KL beta 0.04 (ppo.py);
- ``agrpo``: per-step PPO clip with step importance weights, sum / (k G) (ppo.py);
- ``stabledrl``: unconditional clip, self-normalised detached weights per group (stabledrl.py).

Every loss maps a ``PolicyLossInput`` (plain tensors) to a ``PolicyLossOutput`` (scalar loss and the
diagnostics of ``learner.diagnostics``); see base.py for the contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from learner.losses.base import (
    LOSSES,
    PolicyLoss,
    PolicyLossInput,
    PolicyLossOutput,
    get_loss,
    k3_kl,
    register_loss,
    sequence_logp,
)
from learner.losses.ppo import AGRPO, GRPO, DiffuGRPO, clipped_surrogate
from learner.losses.stabledrl import StableDRL, self_normalised_weights

if TYPE_CHECKING:
    from system.config import AlgorithmConfig

__all__ = ["AGRPO", "GRPO", "LOSSES", "DiffuGRPO", "PolicyLoss", "PolicyLossInput", "PolicyLossOutput",
           "StableDRL", "build_loss", "clipped_surrogate", "get_loss", "k3_kl", "register_loss",
           "self_normalised_weights", "sequence_logp"]


def build_loss(cfg: AlgorithmConfig) -> PolicyLoss:
    """The loss named by ``cfg.name``, with its options from the ``algorithm`` config section."""
    if cfg.name not in LOSSES:
        raise ValueError(f"algorithm.name {cfg.name!r} has no policy loss; choose one of {', '.join(sorted(LOSSES))}")
    return LOSSES[cfg.name].from_config(cfg)
