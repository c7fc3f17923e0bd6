"""Weight swaps between decoding blocks (``rollout.mode: stream`` with ``rollout.stream_swap: block``).

A rollout actor normally takes a new policy version between groups. With block swaps it also takes one
between two decoding blocks of a group: the driver *offers* each published version to every actor
(``RolloutWorker.offer_version``, a call that runs beside the running ``generate``: the rollout actors
get two call threads in this mode), and before each block the actor loads the offered version from the
weight transport. The tokens revealed from that block on were sampled by the new weights, so the swap
is recorded as each row's step count at that block (rows count their own steps: ``unmask_step``), and
each rollout gets ``token_version`` (the version live at each token's ``unmask_step``); its ``logprobs`` are the behaviour log-probs of the
version that revealed each token. How the learner treats such groups: system/stream.py.

Only decoders that carry nothing computed by the old weights into the next block are swapped: the
reference sampler of full-attention models recomputes every position at every step, and the Fast-dLLM
cache is refreshed at every block's first step. A block model's exact KV cache of finished blocks
would hold the old weights' keys, and DiffusionGemma's sampler has no block hook: both are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from system.errors import ConfigError


def unsupported(decoder: Any) -> str | None:
    """Why ``decoder`` cannot swap weights between blocks (None: it can)."""
    if not callable(getattr(decoder, "_decode_block", None)):
        return f"{type(decoder).__name__} decodes without semi-autoregressive blocks to swap between"
    if getattr(decoder, "use_cache", False):
        return "the exact KV cache of finished blocks would keep the old weights' keys (decoding.use_cache)"
    return None


class BlockSwapper:
    """Swaps offered versions into a rollout worker's policy before each decoding block (module docstring).

    ``worker`` needs ``model.net`` (the weights), ``version`` (a ``WeightVersion``) and ``decoder``.
    """

    def __init__(self, worker: Any) -> None:
        reason = unsupported(worker.decoder)
        if reason is not None:
            raise ConfigError(f"rollout.stream_swap 'block' cannot be used here: {reason}; set "
                              "rollout.stream_swap: group")
        self.worker = worker
        self.offered = 0
        self.transport: Any = None
        self.start_version = 0  # live when the current decoder call started
        self.swaps: list[tuple[torch.Tensor, int]] = []  # ([rows] steps taken at the swap, version from it)
        decode_block = worker.decoder._decode_block

        def swapping_block(b: Any, lo: int, hi: int, step: int, *args: Any) -> int:
            self.before_block(b.steps_taken)
            return decode_block(b, lo, hi, step, *args)

        worker.decoder._decode_block = swapping_block

    def offer(self, version: int) -> None:
        self.offered = max(self.offered, version)

    def start(self, transport: Any) -> None:
        """A new decoder call: the swaps recorded so far belong to the previous one."""
        self.transport, self.swaps, self.start_version = transport, [], self.worker.version.version

    def before_block(self, steps_taken: torch.Tensor) -> None:
        """``steps_taken``: [rows] each row's denoising steps so far (the decoder's own count)."""
        live = self.worker.version.version
        if self.transport is None or self.offered <= live:
            return
        state, version = self.transport.receive(min_version=self.offered)
        self.worker.model.net.load_state_dict(state, strict=True)  # the caller holds the worker's lock
        self.worker.version = version
        self.swaps.append((steps_taken.detach().cpu().clone(), version.version))

    def token_versions(self, unmask_step: torch.Tensor, row: int, group_version: int) -> torch.Tensor | None:
        """[L] the version live when each token of decoder row ``row`` was revealed (``unmask_step`` [L];
        -1 for tokens never revealed). None when all of them are ``group_version``'s (the version the
        group started with: a later decoder call of the same group may start after a swap)."""
        if not self.swaps and self.start_version == group_version:
            return None
        versions = torch.full_like(unmask_step, self.start_version)
        for steps_taken, version in self.swaps:
            versions = torch.where(unmask_step >= int(steps_taken[row]), torch.full_like(unmask_step, version),
                                   versions)
        return versions
