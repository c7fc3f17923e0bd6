"""The CPU guard against device bugs (issue 17): decoding, every estimator, every loss, the advantages,
the diagnostics, a learner micro-step and an SFT step run under `tests.device_guard.strict_devices`, where
a tensor made without ``device=`` lands on ``meta`` and any call mixing it with the model's (CPU) tensors
raises, as it would next to CUDA tensors. The model and the inputs are built before entering, on the CPU,
the way a GPU run builds them on CUDA."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from actors.decoding.fast import build_decoder
from actors.decoding.reference import ReferenceDecoder
from learner.batch import build_train_batch, micro_batches
from learner.estimators import ESTIMATORS, batch_from_decode, estimator_from_config, get_estimator
from learner.learner import Learner
from learner.losses import build_loss
from learner.sft import SFTBatch, sft_loss
from system.config import DecodingConfig, load_config
from system.diffusion import left_pad
from tests.conftest import ALL_FAMILIES, family_model, tiny_model
from tests.device_guard import MixedDeviceError, strict_devices
from tests.learner.learner_job import BASE, fixed_groups

PROMPTS = [[20, 21, 22, 23, 24], [30, 31], [40, 41, 42]]
SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 0.95}


def device_generator(model: Any, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=model.device).manual_seed(seed)


def test_the_guard_catches_a_tensor_made_without_a_device() -> None:
    """The defect of issue 17 in two lines: PyTorch alone lets a meta source into a CPU scatter_."""
    order = torch.tensor([[2, 0, 1]], device="cpu")
    with strict_devices(), pytest.raises(MixedDeviceError, match="meta"):
        torch.empty_like(order).scatter_(-1, order, torch.arange(3).expand_as(order))


def test_the_guard_catches_a_generator_on_another_device() -> None:
    gen = torch.Generator(device="cpu")
    with strict_devices(), pytest.raises(MixedDeviceError, match="generator"):
        torch.rand(3, generator=gen)


def test_the_guard_passes_explicit_devices() -> None:
    gen = torch.Generator(device="cpu")
    with strict_devices():
        x = torch.arange(3, device="cpu") + torch.rand(3, generator=gen, device=gen.device)
    assert x.device.type == "cpu"


# ----------------------------------------------------------------------------- decoding

DECODING = {
    "low_confidence": {},
    "random": {"remasking": "random"},
    "threshold": {"remasking": "threshold", "confidence_threshold": 0.5},
    "factor": {"remasking": "factor", "parallel_factor": 1.5},
    "prefix_cache": {"cache": "prefix", "remasking": "threshold", "confidence_threshold": 0.5},
    "dual_cache": {"cache": "dual", "remasking": "factor"},
    "cfg": {"cfg_scale": 1.0},
    "greedy": {"temperature": 0.0},
}


@pytest.mark.parametrize("mode", list(DECODING))
def test_reference_decoder_keeps_to_the_models_device(mode: str) -> None:
    model = tiny_model()
    params = DecodingConfig(gen_length=8, block_length=4, steps=4, **{**SAMPLING, **DECODING[mode]})
    decoder, gen = build_decoder(model, params), device_generator(model)
    with strict_devices():
        out = decoder.generate(PROMPTS, gen)
    assert out.completion_ids.device == model.device and out.unmask_step.min() >= 0


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_family_decodes_under_the_guard(family: str) -> None:
    """The models' own forward (RoPE tables, masks, the MoE router, the block KV cache) included."""
    model = family_model(family)
    block = model.attention == "block"
    params = DecodingConfig(gen_length=8, block_length=4, steps=4, use_cache=block, stop_at_eos=False, **SAMPLING)
    decoder, gen = ReferenceDecoder(model, params), device_generator(model)
    with strict_devices():
        out = decoder.generate(PROMPTS, gen)
    assert out.completion_ids.shape == (3, 8)
    # The fast modes (issue 18): the approximate dual cache on full-attention families (the window
    # cache, Dream's one-position lead), the parallel rule over the exact block cache on block families.
    fast = params.model_copy(update={"cache": "dual", "remasking": "threshold", "confidence_threshold": 0.5})
    decoder = build_decoder(model, fast)
    with strict_devices():
        out = decoder.generate(PROMPTS, gen)
    assert out.completion_ids.shape == (3, 8)


def test_the_decoder_refuses_a_generator_on_another_device() -> None:
    """Checked at the boundary: no second device here, so a stand-in that reports CUDA (the check reads
    only ``generator.device``)."""

    class OnCuda:
        device = torch.device("cuda", 0)

    decoder = ReferenceDecoder(tiny_model(), DecodingConfig(gen_length=4, block_length=4, steps=2))
    with pytest.raises(ValueError, match="torch.Generator\\(device=model.device\\)"):
        decoder.generate(PROMPTS, OnCuda())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- estimators, losses, learner

OPTIONS = {"mean_field": {}, "elbo": {"num_samples": 2}, "spg": {"block_size": 4},
           "agrpo": {"num_steps": 2, **SAMPLING}, "staircase_elbo": {}}


def decoded_batch(model: Any) -> Any:
    params = DecodingConfig(gen_length=8, block_length=4, steps=4, stop_at_eos=False, **SAMPLING)
    out = ReferenceDecoder(model, params).generate(PROMPTS, device_generator(model, 1))
    batch = batch_from_decode(out)
    batch.completion_mask[1, 6:] = False
    return batch


@pytest.mark.parametrize("name", sorted(set(ESTIMATORS) - {"uniform_elbo"}))  # its own: test_estimators_uniform
def test_every_estimator_keeps_to_the_models_device(name: str) -> None:
    model = tiny_model("block", 4) if name == "staircase_elbo" else tiny_model()
    old = copy.deepcopy(model)
    batch = decoded_batch(model)
    estimator = get_estimator(name, **OPTIONS[name])
    gen = torch.Generator(device="cpu").manual_seed(0)  # the learner's: drawn on the CPU, moved
    with strict_devices():
        new_est, old_est = estimator.estimate_pair(model, old, batch, gen)
        new_est.seq_logp.sum().backward()
    assert old_est.seq_logp.device == model.device
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


LEARNER_CASES = {
    "stabledrl/elbo": ["algorithm.name=stabledrl", "algorithm.estimator=elbo"],
    "stabledrl/spg": ["algorithm.name=stabledrl", "algorithm.estimator=spg", "algorithm.spg_block_size=4"],
    "grpo/elbo": ["algorithm.name=grpo", "algorithm.estimator=elbo", "algorithm.kl_beta=0.04"],
    "diffu_grpo/mean_field": ["algorithm.name=diffu_grpo", "algorithm.estimator=mean_field"],
    "agrpo/agrpo": ["algorithm.name=agrpo", "algorithm.estimator=agrpo", "algorithm.coupling=auto"],
}


class _Backward:
    """What the learner's micro-step asks of the DeepSpeed engine: ``backward``."""

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()


def bare_learner(overrides: list[str]) -> Learner:
    """A `Learner` with the real estimator, loss, batching and micro-step, without DeepSpeed (whose own
    tensors are not under test here)."""
    cfg = load_config(None, BASE + overrides)
    learner = object.__new__(Learner)
    model = tiny_model()
    learner.cfg, learner.model, learner.engine = cfg, model, _Backward()
    learner.estimator, learner.loss = estimator_from_config(cfg.algorithm, cfg.decoding), build_loss(cfg.algorithm)
    uses_ref = learner.loss.uses_reference()
    learner.reference = copy.deepcopy(model).requires_grad_(False) if uses_ref else None
    learner.updates, learner.micro_per_update, learner._hist = 0, 1, {"ratio": [], "log_ratio": []}
    return learner


@pytest.mark.parametrize("case", list(LEARNER_CASES))
def test_a_learner_micro_step_keeps_to_the_models_device(case: str) -> None:
    """Rollouts -> advantages -> micro-batches -> estimator draws and old estimates -> loss and its
    diagnostics -> backward: the learner's own code between the rollouts and DeepSpeed."""
    learner = bare_learner(LEARNER_CASES[case])
    groups = fixed_groups(num_groups=2, group_size=4)
    for r in (r for g in groups for r in g.rollouts):  # AGRPO's generation-time log-probs and entropies
        r.logprobs = torch.full(r.completion_ids.shape, -1.5, device="cpu")
        r.entropies = torch.full(r.completion_ids.shape, 2.0, device="cpu")
    with strict_devices():
        tb = build_train_batch(groups, learner.model.spec.pad_token_id, learner.cfg.algorithm)
        mb = micro_batches(tb, 2)[0]
        plan = learner._prepare(mb)[0]
        diagnostics = learner._micro_step(mb, plan, tb.num_groups)
    assert diagnostics and all(p.grad is not None for p in learner.model.parameters())


@pytest.mark.parametrize("block_staircase", [False, True])
def test_an_sft_step_keeps_to_the_models_device(block_staircase: bool) -> None:
    model = tiny_model("block", 4) if block_staircase else tiny_model()
    prompt_ids, prompt_mask = left_pad(PROMPTS, model.spec.pad_token_id)
    batch = SFTBatch(prompt_ids, prompt_mask, torch.randint(10, 90, (3, 8), device="cpu"))
    gen = torch.Generator(device="cpu").manual_seed(0)
    with strict_devices():
        loss, _ = sft_loss(model, batch, gen, "elbo", block_staircase)
        loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decoding_and_a_learner_micro_step_on_cuda() -> None:
    """Where a GPU is at hand: the same paths on CUDA for real, in bf16."""
    model = tiny_model().to("cuda", torch.bfloat16)
    params = DecodingConfig(gen_length=8, block_length=4, steps=4, **SAMPLING)
    out = ReferenceDecoder(model, params).generate(PROMPTS, device_generator(model))
    assert out.completion_ids.is_cuda
    learner = bare_learner(LEARNER_CASES["stabledrl/elbo"])
    learner.model = model.float()
    tb = build_train_batch(fixed_groups(num_groups=2, group_size=4), model.spec.pad_token_id, learner.cfg.algorithm)
    mb = micro_batches(tb, 2)[0]
    assert learner._micro_step(mb, learner._prepare(mb)[0], tb.num_groups)
