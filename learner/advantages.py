"""Group-relative advantages, and the vectorised per-group operations that they, the policy losses and
the diagnostics share (ALGORITHMS.md section 3).

A batch holds several groups: the G completions of one prompt share a ``group_id``. Ids may be any
integers, in any order, with unequal group sizes; ``Groups.from_ids`` maps them to dense indices
0..num_groups-1 once, and every per-group sum / mean / max / softmax is one ``index_add_`` or
``scatter_reduce`` over the batch (no Python loop over groups).

Advantages (d1, StableDRL and AGRPO centre without dividing by the std; the std is an option):

    A_i = r_i - mean_{j in g(i)} r_j                              (default)
    A_i = r_i - mean_{j in g(i), j != i} r_j                      (leave_one_out; = n/(n-1) (r_i - mean))
    A_i <- A_i / (std_{j in g(i)} r_j + std_eps)                  (std_normalize; unbiased std, as TRL/d1)

A group whose rewards are all equal carries no signal (every A_i is 0): such groups are counted, and
``drop_zero_variance`` marks their samples False in the returned ``keep`` mask so that the learner can
leave them out of the batch. Nothing here draws random numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from system.config import AlgorithmConfig

__all__ = ["GroupAdvantages", "Groups", "advantages_from_config", "compute_advantages"]


@dataclass(frozen=True)
class Groups:
    """Dense group membership of a batch of B samples.

    Attributes:
        index: [B] long, the dense group (0..num_groups-1) of each sample, in order of first sorted id.
        ids: [num_groups] long, the original group id of each dense group.
        sizes: [num_groups] long, samples per group (>= 1).
    """

    index: Tensor
    ids: Tensor
    sizes: Tensor

    @classmethod
    def from_ids(cls, group_ids: Tensor, *, batch_size: int | None = None, name: str = "group_ids") -> Groups:
        """Check ``group_ids`` ([B] integer tensor) and build the dense index."""
        if not isinstance(group_ids, Tensor) or group_ids.dim() != 1:
            shape = tuple(group_ids.shape) if isinstance(group_ids, Tensor) else type(group_ids).__name__
            raise ValueError(f"{name} must be a 1-D tensor [B] of group ids, got {shape}")
        if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool or group_ids.is_complex():
            raise ValueError(f"{name} must be an integer tensor (torch.long), got {group_ids.dtype}; "
                             "map group names to integers first")
        if batch_size is not None and group_ids.numel() != batch_size:
            raise ValueError(f"{name} has {group_ids.numel()} entries but the batch has {batch_size} samples")
        if group_ids.numel() == 0:
            raise ValueError(f"{name} is empty: a loss needs at least one sample")
        ids, index, sizes = torch.unique(group_ids, return_inverse=True, return_counts=True)
        return cls(index=index, ids=ids, sizes=sizes)

    @property
    def num_groups(self) -> int:
        return int(self.ids.numel())

    def sum(self, x: Tensor) -> Tensor:
        """[B] -> [num_groups]: sum of ``x`` over each group (differentiable)."""
        out = x.new_zeros(self.num_groups)
        return out.index_add(0, self.index, x)

    def mean(self, x: Tensor) -> Tensor:
        """[B] -> [num_groups]."""
        return self.sum(x) / self.sizes.to(x.dtype)

    def max(self, x: Tensor) -> Tensor:
        """[B] -> [num_groups] (not differentiable: used on detached values)."""
        out = x.new_full((self.num_groups,), float("-inf"))
        return out.scatter_reduce(0, self.index, x, reduce="amax", include_self=True)

    def min(self, x: Tensor) -> Tensor:
        """[B] -> [num_groups]."""
        out = x.new_full((self.num_groups,), float("inf"))
        return out.scatter_reduce(0, self.index, x, reduce="amin", include_self=True)

    def expand(self, per_group: Tensor) -> Tensor:
        """[num_groups] -> [B]: each sample gets its group's value."""
        return per_group[self.index]

    def softmax(self, logits: Tensor) -> Tensor:
        """[B] -> [B]: softmax of ``logits`` inside each group (sums to 1 per group).

        Shifted by the group max, so logits of 1e3 or -1e3 neither overflow nor give 0/0; -inf logits
        get weight 0 unless the whole group is -inf (then NaN, as torch.softmax).
        """
        shifted = logits - self.expand(self.max(logits.detach()))
        unnorm = shifted.exp()
        return unnorm / self.expand(self.sum(unnorm))


@dataclass
class GroupAdvantages:
    """Advantages of a batch and what the learner needs to know about its groups.

    Attributes:
        advantages: [B] float32.
        keep: [B] bool; False for the samples of dropped zero-variance groups (all True otherwise).
        num_groups: groups in the batch.
        num_zero_variance: groups whose rewards are all equal (counted whether dropped or not).
    """

    advantages: Tensor
    keep: Tensor
    num_groups: int
    num_zero_variance: int

    @property
    def zero_variance_fraction(self) -> float:
        return self.num_zero_variance / self.num_groups


def _check_rewards(rewards: Tensor) -> Tensor:
    if not isinstance(rewards, Tensor) or rewards.dim() != 1:
        shape = tuple(rewards.shape) if isinstance(rewards, Tensor) else type(rewards).__name__
        raise ValueError(f"rewards must be a 1-D tensor [B], got {shape}")
    rewards = rewards.detach().to(torch.float32)
    bad = ~torch.isfinite(rewards)
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise ValueError(f"rewards[{first}] = {rewards[first].item()} is not finite "
                         f"({int(bad.sum())} such entries): the reward function must return finite scores")
    return rewards


def compute_advantages(
    rewards: Tensor,
    group_ids: Tensor,
    *,
    std_normalize: bool = False,
    leave_one_out: bool = False,
    drop_zero_variance: bool = False,
    std_eps: float = 1e-4,
) -> GroupAdvantages:
    """Group-relative advantages (see the module docstring for the equations).

    Args:
        rewards: [B] scores (finite).
        group_ids: [B] integer group of each sample.
        std_normalize: divide by the group's unbiased reward std plus ``std_eps``.
        leave_one_out: centre on the mean of the *other* samples of the group (groups need >= 2).
        drop_zero_variance: mark the samples of zero-variance groups False in ``keep``.
        std_eps: added to the std before dividing (1e-4 as TRL / d1).

    Returns:
        GroupAdvantages with ``advantages`` [B] float32 (0 in zero-variance groups) and ``keep`` [B] bool.
    """
    rewards = _check_rewards(rewards)
    groups = Groups.from_ids(group_ids, batch_size=rewards.numel())
    sizes = groups.sizes.to(torch.float32)
    mean = groups.mean(rewards)
    centred = rewards - groups.expand(mean)
    if leave_one_out:
        if (groups.sizes < 2).any():
            lone = groups.ids[groups.sizes < 2].tolist()
            raise ValueError(f"leave_one_out needs at least 2 samples per group; groups {lone[:5]} have one "
                             "(turn leave_one_out off or use group_size >= 2)")
        # r_i - (sum - r_i)/(n-1) = (n r_i - sum)/(n-1) = n/(n-1) (r_i - mean)
        centred = centred * groups.expand(sizes / (sizes - 1))
    zero_var = groups.max(rewards) == groups.min(rewards)
    if std_normalize:
        # unbiased std; a group of one has none, and is zero-variance anyway (its A is 0 already)
        var = groups.sum((rewards - groups.expand(mean)) ** 2) / (sizes - 1).clamp(min=1)
        centred = centred / groups.expand(var.sqrt() + std_eps)
    # exactly 0 where all rewards are equal (the centring already gives 0 up to rounding)
    advantages = torch.where(groups.expand(zero_var), torch.zeros_like(centred), centred)
    keep = ~groups.expand(zero_var) if drop_zero_variance else torch.ones_like(rewards, dtype=torch.bool)
    return GroupAdvantages(advantages=advantages, keep=keep, num_groups=groups.num_groups,
                           num_zero_variance=int(zero_var.sum()))


def advantages_from_config(rewards: Tensor, group_ids: Tensor, cfg: AlgorithmConfig) -> GroupAdvantages:
    """``compute_advantages`` with the options of the ``algorithm`` config section."""
    return compute_advantages(rewards, group_ids, std_normalize=cfg.std_normalize,
                              leave_one_out=cfg.leave_one_out,
                              drop_zero_variance=cfg.drop_zero_variance_groups)
