"""The rollout worker: a policy copy and a decoder; generates G completions per example and returns
them as version-stamped `RolloutGroup`s with their trajectories. A plain class: the local mode calls
it in-process, the Ray mode runs it as an actor.

Weight updates are applied atomically between batches: ``set_weights`` and ``generate`` hold the same
lock, so a batch is never sampled with half-updated weights, and every group carries the version
that generated all of it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from actors.decoding.fast import build_decoder
from actors.decoding.modes import is_approximate
from actors.generate import completion_text, stop_ids
from actors.tasks.prompts import PromptStyle, prompt_ids
from system.config import Config
from system.models.build import build_policy
from system.types import Example, Rollout, RolloutGroup, WeightVersion


class RolloutWorker:
    def __init__(self, cfg: Config, worker_index: int = 0) -> None:
        self.cfg = cfg
        self.worker_index = worker_index
        self.model, self.tokenizer = build_policy(cfg.model, cfg.seed)
        self.model.eval().requires_grad_(False)
        self.decoder = build_decoder(self.model, cfg.decoding)  # the mode is recorded with every rollout
        self.generator = torch.Generator(device=self.model.device).manual_seed(cfg.seed * 1_000_003 + worker_index)
        self.style = PromptStyle.from_config(cfg.data)  # as evaluation and SFT render prompts
        self.version = WeightVersion(0, "initial")
        self._lock = threading.Lock()
        self._stops = stop_ids(self.model)
        self.swapper, self._transport = None, None  # rollout.stream_swap: block (weights between blocks)
        if cfg.rollout.mode == "stream" and cfg.rollout.stream_swap == "block":
            from system.stream_swap import BlockSwapper

            self.swapper = BlockSwapper(self)

    def set_weights(self, state: dict[str, torch.Tensor], version: WeightVersion) -> int:
        """Swap in new weights (all or nothing) and their version; returns the version now live."""
        with self._lock:
            if version.version < self.version.version:
                raise ValueError(f"weights version {version.version} is older than the live {self.version.version}")
            self.model.net.load_state_dict(state, strict=True)
            self.version = version
            return version.version

    def receive_weights(self, transport: Any, min_version: int) -> int:
        """Fetch the latest published weights (at least ``min_version``) and swap them in."""
        state, version = transport.receive(min_version=min_version)
        return self.set_weights(state, version)

    def offer_version(self, version: int) -> None:
        """Stream mode, block swaps: ``version`` is published; swapped in before the next decoding block."""
        if self.swapper is not None:
            self.swapper.offer(version)

    def rng_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)

    def get_version(self) -> int:
        return self.version.version

    def pid(self) -> int:
        import os

        return os.getpid()

    def generate(self, examples: list[Example], group_size: int | None = None, transport: Any = None,
                 min_version: int = 0) -> list[RolloutGroup]:
        """G completions per example, decoded in batches of ``rollout.decode_batch_size`` rows. A worker
        behind ``min_version`` (e.g. restarted after a crash) first fetches the weights from ``transport``."""
        if transport is not None and self.version.version < min_version:
            self.receive_weights(transport, min_version)
        self._transport = transport
        g = group_size or self.cfg.rollout.group_size
        with self._lock:
            version = self.version.version
            rows = [(ex, prompt_ids(self.tokenizer, ex, self.style, self.cfg.data.max_prompt_length))
                    for ex in examples for _ in range(g)]
            rollouts: list[Rollout] = []
            step = self.cfg.rollout.decode_batch_size
            for lo in range(0, len(rows), step):
                rollouts += self._decode(rows[lo:lo + step], version)
        return [
            RolloutGroup(group_id=f"{ex.task}:{ex.id}:v{version}:w{self.worker_index}", example=ex,
                         rollouts=rollouts[i * g:(i + 1) * g], policy_version=version)
            for i, ex in enumerate(examples)
        ]

    def decode_greedy(self, examples: list[Example]) -> list[tuple[str, int]]:
        """One greedy completion per example with the live weights, as ``stabledrl eval`` decodes
        (actors/evaluate.py): the driver's periodic test-split evaluation (``rollout.eval_every``)."""
        from actors.evaluate import decode_split

        with self._lock:
            return decode_split(self.model, self.tokenizer, examples, self.cfg, greedy=True)

    def _decode(self, rows: list[tuple[Example, list[int]]], version: int) -> list[Rollout]:
        start = time.monotonic()
        if self.swapper is not None:
            self.swapper.start(self._transport)
        out = self.decoder.generate([ids for _, ids in rows], self.generator)
        seconds = time.monotonic() - start
        approximate = float(is_approximate(out.decoder))
        result = []
        for i, (ex, ids) in enumerate(rows):
            completion = out.completion_ids[i].cpu()
            result.append(Rollout(
                example_id=ex.id, prompt_ids=torch.tensor(ids, dtype=torch.long, device="cpu"), completion_ids=completion,
                unmask_step=out.unmask_step[i].cpu(), logprobs=out.logprobs[i].cpu(),
                entropies=out.entropies[i].cpu(), completion_mask=~out.filled[i].cpu(),
                completion_text=completion_text(self.tokenizer, completion.tolist(), self._stops),
                policy_version=version, decoder=out.decoder, token_version=None if self.swapper is None else
                self.swapper.token_versions(out.unmask_step[i].cpu(), i, version),
                decode_stats={"steps": float(out.steps_taken[i]), "seconds": seconds / len(rows),
                              "length": float((~out.filled[i]).sum()), "approximate_cache": approximate},
            ))
        return result
