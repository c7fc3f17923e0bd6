"""The learner: a DeepSpeed engine (ZeRO 0-3 from config; fp32 on CPU, bf16 on GPU) around the policy,
turning scored rollout groups into ``mu`` policy updates.

One ``train_on(groups)`` call, per rank (each rank gets its share of the step's groups; DeepSpeed
averages gradients over ranks, so equal shares give the mean over all groups):

1. rewards -> group-relative advantages (``learner.advantages``);
2. for each inner update j and micro-batch m (whole groups), draw the estimator's randomness once and
   score the *old* policy (and the reference, when the loss has a KL term) on it before any update:
   the draws of new and old are the same draw for ``shared`` / ``complementary`` coupling and
   separate draws for ``independent``; AGRPO's old log-probs come from generation time;
3. each inner update: for every micro-batch, score the current policy on its draw (with gradients),
   build the loss input, ``engine.backward``; DeepSpeed steps the optimizer (with gradient clipping)
   once per inner update (gradient accumulation over the micro-batches).
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from learner.batch import MicroBatch, build_train_batch, loss_input, micro_batches
from learner.diagnostics import SpikeDetector
from learner.estimators import estimator_from_config
from learner.losses import build_loss
from system.config import Config
from system.errors import CheckpointError
from system.models.build import build_policy, save_policy
from system.types import RolloutGroup


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(backend: str = "gloo") -> None:
    """Join (or, alone, form) the torch.distributed group DeepSpeed runs on; env vars RANK /
    WORLD_SIZE / MASTER_ADDR / MASTER_PORT come from the launcher (defaults: one local process)."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():  # e.g. a second learner in one process: DeepSpeed still reads the env
        os.environ.setdefault("RANK", str(dist.get_rank()))
        os.environ.setdefault("LOCAL_RANK", str(dist.get_rank()))
        os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def deepspeed_config(cfg: Config, micro_batches_per_update: int, world_size: int) -> dict[str, Any]:
    lcfg = cfg.learner
    groups_per_micro = max(1, lcfg.micro_batch_size // cfg.rollout.group_size)
    micro = groups_per_micro * cfg.rollout.group_size
    on_gpu = torch.device(cfg.model.device).type == "cuda"
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": micro_batches_per_update,
        "train_batch_size": micro * micro_batches_per_update * world_size,
        "gradient_clipping": lcfg.grad_clip,
        "zero_optimization": {"stage": lcfg.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": on_gpu},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class Learner:
    """Owns the trainable policy; see the module docstring."""

    def __init__(self, cfg: Config, rank: int | None = None, world_size: int | None = None) -> None:
        import deepspeed
        import torch.distributed as dist

        backend = "nccl" if torch.device(cfg.model.device).type == "cuda" else "gloo"
        init_distributed(backend)
        self.cfg = cfg
        self.rank = dist.get_rank() if rank is None else rank
        self.world_size = dist.get_world_size() if world_size is None else world_size
        model, self.tokenizer = build_policy(cfg.model, cfg.seed)
        self.estimator = estimator_from_config(cfg.algorithm, cfg.decoding)
        self.loss = build_loss(cfg.algorithm)
        self.reference = copy.deepcopy(model).eval().requires_grad_(False) if self.loss.uses_reference() else None
        groups_per_step = -(-cfg.rollout.prompts_per_step // self.world_size)
        self.groups_per_micro = max(1, cfg.learner.micro_batch_size // cfg.rollout.group_size)
        self.micro_per_update = -(-groups_per_step // self.groups_per_micro)
        lc = cfg.learner
        optimizer = torch.optim.AdamW(model.parameters(), lr=lc.lr, betas=lc.betas, weight_decay=lc.weight_decay)
        warmup = max(1, lc.warmup_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler,
            config=deepspeed_config(cfg, self.micro_per_update, self.world_size))
        self.model = self.engine.module
        self.spikes = SpikeDetector.from_config(cfg.algorithm)
        self.updates = 0
        self._hist: dict[str, list[float]] = {}
        self.probe: Any = None

    # ------------------------------------------------------------------ training

    def _generator(self, mb: MicroBatch) -> torch.Generator:
        """The estimator's randomness for a micro-batch depends on the seed, the update count and the
        groups in it, not on the rank or the order of micro-batches: sharding the same groups over
        more ranks draws the same masks. A CPU generator: the estimators draw on the generator's device
        and move the (small) masks to the model's, so the draws are the same on every device."""
        key = f"{self.cfg.seed}:{self.updates}:" + ",".join(mb.group_keys)
        seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") & (2**63 - 1)
        return torch.Generator(device="cpu").manual_seed(seed)

    def _prepare(self, mb: MicroBatch) -> list[dict[str, Any]]:
        """Draws and old / reference estimates of every inner update, before any update."""
        est, model = self.estimator, self.model
        spec, batch = model.spec, mb.batch.to(model.device)
        cached_old = getattr(est, "old_source", None) == "cached"
        generator = self._generator(mb)
        plans = []
        with torch.no_grad():
            for _ in range(self.cfg.learner.inner_updates):
                draw = est.draw(spec, batch, generator)
                old_draw = draw if est.coupling != "independent" else est.draw(spec, batch, generator)
                old = None if cached_old else est.score(model, batch, old_draw)
                ref = None if self.reference is None else est.score(self.reference, batch, draw)
                plans.append({"batch": batch, "draw": draw, "old": old, "ref": ref})
        return plans

    def _micro_step(self, mb: MicroBatch, plan: dict[str, Any], total_groups: int) -> dict[str, float]:
        new = self.estimator.score(self.model, plan["batch"], plan["draw"])
        old = plan["old"] if plan["old"] is not None else self.estimator.cached_old(plan["batch"], new, plan["draw"])
        try:
            out = self.loss(loss_input(self.loss, new, old, plan["ref"], mb.advantages, mb.group_ids))
        except ValueError as e:  # the loss's input checks: raised here, the update can still be finished
            if (error := self._nonfinite(e)) is None:
                raise
            raise error from e
        log_ratio = (new.seq_logp.detach() - old.seq_logp.detach()).float().cpu()
        self._hist["ratio"] += log_ratio.clamp(max=50.0).exp().tolist()
        self._hist["log_ratio"] += log_ratio.tolist()
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"non-finite policy loss {float(out.loss)} at update {self.updates}: "
                                     f"diagnostics {out.diagnostics}")
        # DeepSpeed divides by the accumulation steps; weight each micro-batch by its share of groups.
        scale = self.micro_per_update * mb.num_groups / total_groups
        self.engine.backward(out.loss * scale)
        # loss/value: the policy loss of the micro-batch (averaged over micro-batches and inner updates).
        return {**out.diagnostics, "value": float(out.loss.detach())}

    def _grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        if norm is None:  # ZeRO stage 0 leaves the grads on the parameters
            grads = [p.grad.detach().float().norm() for p in self.model.parameters() if p.grad is not None]
            norm = torch.stack(grads).norm() if grads else torch.zeros((), device="cpu")
        return float(norm)

    def _zero_backward(self) -> None:
        """A micro-batch with no groups (all dropped): a zero loss keeps DeepSpeed's accumulation in step."""
        self.engine.backward(sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0)

    def train_on(self, groups: list[RolloutGroup]) -> dict[str, float]:
        """``mu`` policy updates on this rank's groups; returns the step's metrics. A non-finite
        estimate or loss raises FloatingPointError (the driver's collapse monitor acts on it)."""
        try:
            return self._train_on(groups)
        except ValueError as e:
            if (error := self._nonfinite(e)) is None:
                raise
            raise error from e

    def _nonfinite(self, error: ValueError) -> FloatingPointError | None:
        """A ValueError of the non-finite input checks as the FloatingPointError the driver acts on
        (None for any other ValueError)."""
        if "finite" not in str(error):
            return None
        return FloatingPointError(f"non-finite values at update {self.updates}: {error}")

    def build_probe(self, sequences: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Fix the KL-drift probe set (``logging.kl_probe_*``) with the current policy as the reference."""
        from system.monitoring.probe import build_kl_probe

        lc = self.cfg.logging
        gen = torch.Generator(device="cpu").manual_seed(lc.kl_probe_seed)  # the probe lives on the CPU
        self.probe = build_kl_probe(self.model, sequences, lc.kl_probe_mask_ratio, lc.kl_probe_samples, gen)
        return len(sequences)

    def kl_drift(self) -> dict[str, float]:
        """``kl/drift`` and ``kl/drift_max`` of the current policy from the probe's reference."""
        from system.monitoring.probe import kl_drift

        return {} if self.probe is None else kl_drift(self.model, self.probe)

    def histograms(self) -> dict[str, list[float]]:
        """Per-sample values of the last ``train_on``: sequence-level ratios and log-ratios (every inner
        update), and the advantages."""
        return {k: list(v) for k, v in self._hist.items()}

    def _update(self, work: list[tuple[MicroBatch, dict[str, Any]]], total_groups: int,
                sums: dict[str, float]) -> tuple[float | None, int]:
        """One optimizer update over ``micro_per_update`` micro-steps (zero losses where this rank has
        fewer micro-batches); adds the diagnostics to ``sums``. Returns the pre-clip gradient norm where
        it must be read before the step (ZeRO 0, else None) and the micro-batches counted."""
        stage0 = self.engine.zero_optimization_stage() == 0
        norm, failure, counted = None, None, 0
        for i in range(self.micro_per_update):
            if i < len(work) and failure is None:
                try:
                    diagnostics = self._micro_step(*work[i], total_groups)
                except FloatingPointError as e:
                    if i == 0:  # no backward of this update yet: stop before DeepSpeed counts it
                        raise
                    # Earlier micro-batches were accumulated: finish the accumulation with zero losses
                    # so DeepSpeed's boundaries stay aligned for the next updates (the finite
                    # micro-batches' gradients are applied), then raise.
                    failure = e
                    self._zero_backward()
                else:
                    for key, value in diagnostics.items():
                        sums[key] = sums.get(key, 0.0) + float(value)
                    counted += 1
            else:
                self._zero_backward()
            if stage0 and i == self.micro_per_update - 1:
                norm = self._grad_norm()  # before the step clips them
            self.engine.step()  # updates only at the accumulation boundary
        if failure is not None:
            self.updates += 1
            raise failure
        return norm, counted

    def _train_on(self, groups: list[RolloutGroup]) -> dict[str, float]:
        start = time.monotonic()
        self.model.train()
        spec = self.model.spec
        align = spec.block_size if spec.attention == "block" and spec.block_size else 1
        tb = build_train_batch(groups, spec.pad_token_id, self.cfg.algorithm, multiple_of=align)
        self._hist = {"ratio": [], "log_ratio": [], "advantage": tb.advantages.tolist()}
        mbs = micro_batches(tb, self.groups_per_micro)
        if len(mbs) > self.micro_per_update:
            raise ValueError(f"{tb.num_groups} groups on rank {self.rank} exceed the configured "
                             f"rollout.prompts_per_step / world size; the learner was built for fewer")
        total_groups = max(1, sum(mb.num_groups for mb in mbs))
        plans = [self._prepare(mb) for mb in mbs]
        sums: dict[str, float] = {}
        count, grad_norms, spikes = 0, [], 0
        lrs = []  # the rates this step's updates use (read before each update: the schedule steps after it)
        for j in range(self.cfg.learner.inner_updates):
            lrs.append(float(self.engine.optimizer.param_groups[0]["lr"]))
            norm, counted = self._update([(mb, plan[j]) for mb, plan in zip(mbs, plans)], total_groups, sums)
            count += counted
            grad_norm = norm if norm is not None else self._grad_norm()
            grad_norms.append(grad_norm)
            spikes += int(self.spikes.observe(grad_norm))
            self.updates += 1
        self.model.eval()
        metrics = {f"loss/{k}": v / max(1, count) for k, v in sums.items()}
        metrics.update({
            "train/reward_mean": float(tb.rewards.mean()),
            "train/zero_std_group_fraction": tb.num_zero_variance / tb.num_groups,
            "train/advantage_abs_mean": float(tb.advantages.abs().mean()),
            "grad/pre_clip_norm": max(grad_norms), "grad/spikes": float(spikes),
            "train/lr": sum(lrs) / len(lrs), "train/updates": float(self.updates),
            "timing/learner": time.monotonic() - start,
        })
        return metrics

    # ------------------------------------------------------------------ weights and checkpoints

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full CPU weights of the policy network, gathered across ranks under ZeRO-3."""
        if self.engine.zero_optimization_stage() == 3:
            import deepspeed

            params = list(self.model.net.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                return {k: v.detach().cpu().clone() for k, v in self.model.net.state_dict().items()}
        return {k: v.detach().cpu().clone() for k, v in self.model.net.state_dict().items()}

    def publish_weights(self, transport: Any, version: int) -> str | None:
        """Publish the policy through a weight transport as ``version``; every rank must call it (the
        ZeRO-3 gather is collective), rank 0 publishes. Returns the checksum on rank 0."""
        state = self.state_dict()
        if self.rank != 0:
            return None
        return transport.publish(state, version).checksum

    def scale_lr(self, factor: float) -> float:
        """Multiply the learning rate (now and in the schedule) by ``factor``; returns the new LR."""
        for group in self.engine.optimizer.param_groups:
            group["lr"] *= factor
        self.scheduler.base_lrs = [lr * factor for lr in self.scheduler.base_lrs]
        return float(self.engine.optimizer.param_groups[0]["lr"])

    def save_checkpoint(self, path: str) -> str:
        """Model, optimizer, LR schedule (DeepSpeed's checkpoint) and the learner's own counters;
        every rank calls it."""
        client = {"updates": self.updates, "spikes": self.spikes.state_dict()}
        self.engine.save_checkpoint(path, tag="learner", client_state=client)
        return path

    def load_checkpoint(self, path: str) -> int:
        """Restore what ``save_checkpoint`` wrote; returns the number of updates done."""
        if not (Path(path) / "learner").is_dir():
            raise CheckpointError(f"{path}: no learner checkpoint (expected {path}/learner from a stabledrl run)")
        try:
            _, client = self.engine.load_checkpoint(path, tag="learner")
        except RuntimeError as e:  # e.g. the weights of another model
            raise CheckpointError(f"{path}: the learner checkpoint does not fit this model: {e}") from e
        if client is None:
            raise CheckpointError(f"{path}: the learner checkpoint could not be read")
        self.updates = int(client["updates"])
        self.spikes.load_state_dict(client["spikes"])
        return self.updates

    def save_policy(self, path: str) -> str:
        """Save the policy in HF format (rank 0 writes)."""
        state = self.state_dict()
        if self.rank == 0:
            net = copy.deepcopy(self.model).cpu()
            net.net.load_state_dict(state)
            save_policy(net, self.tokenizer, path)
        return path
