"""From scored rollout groups to what the learner trains on: one padded `EstimatorBatch`, rewards,
group-relative advantages, and micro-batches made of whole groups (StableDRL self-normalises inside a
group, so a group is never split), plus the glue that turns estimates into a `PolicyLossInput`."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from learner.advantages import advantages_from_config
from learner.estimators import EstimatorBatch, LikelihoodEstimate
from learner.losses import PolicyLoss, PolicyLossInput
from system.config import AlgorithmConfig
from system.diffusion import left_pad
from system.types import RolloutGroup


@dataclass
class TrainBatch:
    """All rollouts of one learner step on this rank. B rows = sum of group sizes."""

    batch: EstimatorBatch
    rewards: Tensor  # [B]
    advantages: Tensor  # [B]
    group_ids: Tensor  # [B] long, 0..num_groups-1
    keep: Tensor  # [B] bool (False: a dropped zero-variance group)
    num_groups: int
    num_zero_variance: int
    group_keys: list[str]  # the RolloutGroup ids, by group index


def build_train_batch(groups: list[RolloutGroup], pad_id: int, cfg: AlgorithmConfig, multiple_of: int = 1) -> TrainBatch:
    """``multiple_of``: pad prompts to a multiple of the block size of a block model, as the decoder
    does, so that the response blocks are the ones generation saw."""
    if not groups:
        raise ValueError("a learner step needs at least one rollout group")
    rollouts = [r for g in groups for r in g.rollouts]
    lengths = {int(r.completion_ids.numel()) for r in rollouts}
    if len(lengths) != 1:
        raise ValueError(f"rollouts of one step must share the generation length, got lengths {sorted(lengths)}")
    prompt_ids, prompt_mask = left_pad([r.prompt_ids for r in rollouts], pad_id, multiple_of=multiple_of)
    completion = torch.stack([r.completion_ids for r in rollouts])
    mask = torch.stack([r.completion_mask if r.completion_mask is not None else torch.ones_like(r.completion_ids,
                        dtype=torch.bool) for r in rollouts])

    def stacked(name: str) -> Tensor | None:
        values = [getattr(r, name) for r in rollouts]
        return None if any(v is None for v in values) else torch.stack(values)

    batch = EstimatorBatch(prompt_ids, prompt_mask, completion, mask.bool(), unmask_step=stacked("unmask_step"),
                           old_logprobs=stacked("logprobs"), entropies=stacked("entropies"))
    # Host tensors like the rollouts' (the learner moves each micro-batch to the model).
    group_ids = torch.tensor([i for i, g in enumerate(groups) for _ in g.rollouts], dtype=torch.long, device="cpu")
    rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float32, device="cpu")
    adv = advantages_from_config(rewards, group_ids, cfg)
    return TrainBatch(batch, rewards, adv.advantages, group_ids, adv.keep, adv.num_groups, adv.num_zero_variance,
                      [g.group_id for g in groups])


def _rows(batch: EstimatorBatch, rows: Tensor) -> EstimatorBatch:
    def take(t: Tensor | None) -> Tensor | None:
        return None if t is None else t[rows]

    return EstimatorBatch(batch.prompt_ids[rows], batch.prompt_mask[rows], batch.completion_ids[rows],
                          batch.completion_mask[rows], take(batch.unmask_step), take(batch.old_logprobs),
                          take(batch.entropies))


@dataclass
class MicroBatch:
    batch: EstimatorBatch
    advantages: Tensor
    group_ids: Tensor
    num_groups: int
    group_keys: list[str]


def micro_batches(tb: TrainBatch, groups_per_micro: int) -> list[MicroBatch]:
    """Split the kept groups into micro-batches of at most ``groups_per_micro`` whole groups."""
    kept = sorted({int(g) for g in tb.group_ids[tb.keep]})
    out = []
    for start in range(0, len(kept), groups_per_micro):
        chosen = torch.tensor(kept[start:start + groups_per_micro], device=tb.group_ids.device)
        rows = torch.isin(tb.group_ids, chosen).nonzero().squeeze(-1)
        # renumber group ids 0..n-1 inside the micro-batch
        _, local = torch.unique(tb.group_ids[rows], return_inverse=True)
        keys = [tb.group_keys[i] for i in kept[start:start + groups_per_micro]]
        out.append(MicroBatch(_rows(tb.batch, rows), tb.advantages[rows], local, len(chosen), keys))
    return out


def loss_input(
    loss: PolicyLoss, new: LikelihoodEstimate, old: LikelihoodEstimate, ref: LikelihoodEstimate | None,
    advantages: Tensor, group_ids: Tensor,
) -> PolicyLossInput:
    """Estimates -> the loss's input at the level the loss works at: token level (GRPO / diffu-GRPO,
    AGRPO with its step weights; tokens scored by both estimates) or sequence level (StableDRL, with
    SPG's EUBO mix as surrogate for A < 0 when the estimator provides it)."""
    advantages = advantages.to(new.seq_logp.device)
    group_ids = group_ids.to(new.seq_logp.device)
    if getattr(loss, "uses_step_weights", False):
        return PolicyLossInput(new.token_logp, old.token_logp, advantages, group_ids, token_mask=new.token_mask,
                               step_weights=new.extras["step_weight"])
    if getattr(loss, "level", "sequence") == "token":
        # Token-level ratios need per-token log-probs: ELBO / SPG keep their weighted terms in
        # token_logp and the plain per-token mean in extras["token_mean_logp"].
        def per_token(e: LikelihoodEstimate) -> Tensor:
            return e.extras.get("token_mean_logp", e.token_logp)

        mask = new.token_mask & old.token_mask
        return PolicyLossInput(per_token(new), per_token(old), advantages, group_ids, token_mask=mask,
                               ref_logp=None if ref is None else per_token(ref))
    surrogate = None
    if getattr(loss, "uses_surrogate", False) and "negative_surrogate" in new.extras:
        surrogate = torch.where(advantages <= 0, new.extras["negative_surrogate"], new.seq_logp)
    return PolicyLossInput(new.seq_logp, old.seq_logp, advantages, group_ids, surrogate=surrogate,
                           ref_logp=None if ref is None else ref.seq_logp)
