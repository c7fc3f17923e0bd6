"""Weight swaps between decoding blocks (``rollout.stream_swap: block``, system/stream_swap.py): a version
offered while a group decodes is taken before its next block, each token records the version that
revealed it, and the decoders that would carry the old weights across blocks are refused."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from actors.rollout_worker import RolloutWorker
from system.config import load_config
from system.errors import ConfigError
from system.stream_swap import BlockSwapper, unsupported
from system.transports.inprocess import InProcessTransport
from system.types import Example, WeightVersion
from tests.system.test_driver import SMALL

TWO_BLOCKS = [*SMALL, "rollout.mode=stream", "rollout.stream_swap=block", "decoding.block_length=4",
              "decoding.steps=4", "decoding.stop_at_eos=false"]


def test_a_version_offered_mid_group_is_taken_at_the_next_block_and_recorded_per_token() -> None:
    worker = RolloutWorker(load_config(None, TWO_BLOCKS))
    transport = InProcessTransport()
    new = {k: v + 0.01 for k, v in worker.model.net.state_dict().items()}
    transport.publish(new, 1)
    swapper = worker.swapper
    assert swapper is not None
    first_block = swapper.before_block

    def offer_after_the_first_block(steps_taken: torch.Tensor) -> None:
        if int(steps_taken.max()) > 0:  # the second block starts: the learner has published meanwhile
            worker.offer_version(1)
        first_block(steps_taken)

    swapper.before_block = offer_after_the_first_block  # type: ignore[method-assign]
    (group,) = worker.generate([Example("copy", "0", "abc")], transport=transport, min_version=0)
    assert worker.get_version() == 1 and group.policy_version == 0 and group.versions() == {0, 1}
    for name, tensor in worker.model.net.state_dict().items():
        assert torch.equal(tensor, new[name]), name
    for rollout in group.rollouts:
        assert rollout.token_version is not None
        # 8 tokens, 2 blocks of 4 steps: steps 0-1 revealed the first block under version 0, 2-3 the second
        expected = torch.where(rollout.unmask_step >= 2, 1, 0)
        assert torch.equal(rollout.token_version, expected), (rollout.unmask_step, rollout.token_version)
        assert torch.equal(rollout.token_version[:4], torch.zeros(4, dtype=torch.long))

    (later,) = worker.generate([Example("copy", "1", "abd")], transport=transport, min_version=1)
    assert later.versions() == {1} and all(r.token_version is None for r in later.rollouts)


def test_a_later_decoder_call_of_a_group_carries_the_version_it_started_with() -> None:
    worker = SimpleNamespace(decoder=SimpleNamespace(_decode_block=lambda *a: 0, use_cache=False),
                             version=WeightVersion(3, "x"), model=None)
    swapper = BlockSwapper(worker)
    swapper.start(transport=None)
    steps = torch.tensor([0, 1, -1])
    assert swapper.token_versions(steps, row=0, group_version=3) is None
    assert torch.equal(swapper.token_versions(steps, row=0, group_version=2), torch.tensor([3, 3, 3]))


def test_decoders_that_keep_old_weights_across_blocks_are_refused() -> None:
    assert unsupported(SimpleNamespace(_decode_block=lambda *a: 0, use_cache=False)) is None
    assert "KV cache" in str(unsupported(SimpleNamespace(_decode_block=lambda *a: 0, use_cache=True)))
    assert "without semi-autoregressive blocks" in str(unsupported(SimpleNamespace()))
    with pytest.raises(ConfigError, match="stream_swap: group"):
        BlockSwapper(SimpleNamespace(decoder=SimpleNamespace(), version=WeightVersion(0, "x")))
