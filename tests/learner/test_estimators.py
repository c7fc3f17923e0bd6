"""The estimator contract on every estimator: coupled estimates give a ratio of exactly 1 at
theta = theta_old and independent ones do not, the global RNG is untouched, every estimator runs on
every model family with gradients to the parameters, chunked forwards equal one pass, and the
registry / config / batch boundaries fail with messages that name the fix."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from actors.decoding.reference import ReferenceDecoder
from learner.estimators import (
    ESTIMATORS,
    EstimatorBatch,
    batch_from_decode,
    estimator_from_config,
    get_estimator,
)
from system.config import AlgorithmConfig, ConfigError, DecodingConfig, build_config
from system.models import DiffusionModel
from tests.conftest import ALL_FAMILIES, family_model, tiny_model

SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 0.95}
PROMPTS = [[20, 21, 22, 23, 24], [30, 31], [40, 41, 42, 43, 44, 45, 46]]

# name -> (estimator, options)
COUPLED = {
    "mean_field/shared": ("mean_field", {}),
    "elbo/shared": ("elbo", {"coupling": "shared", "num_samples": 2}),
    "elbo-1/t/shared": ("elbo", {"coupling": "shared", "weighting": "one_over_t", "t_sampling": "stratified"}),
    "elbo/complementary": ("elbo", {"coupling": "complementary", "num_samples": 2}),
    "spg/shared": ("spg", {"coupling": "shared", "block_size": 4}),
    "agrpo/recompute": ("agrpo", {"num_steps": 3, "old_logprobs": "recompute", **SAMPLING}),
    "agrpo-entropy/recompute": ("agrpo", {"num_steps": 3, "sampling": "entropy", "old_logprobs": "recompute", **SAMPLING}),
}
INDEPENDENT = {
    "mean_field/independent": ("mean_field", {"coupling": "independent"}),
    "elbo/independent": ("elbo", {"num_samples": 2}),
    "spg/independent": ("spg", {"block_size": 4}),
}
DEFAULTS = {"mean_field": {}, "elbo": {}, "spg": {"block_size": 4}, "agrpo": {"num_steps": 2, **SAMPLING},
            "staircase_elbo": {}}
BLOCK_ONLY = {"staircase_elbo"}  # needs a block-attention model
MASKED = sorted(set(ESTIMATORS) - {"uniform_elbo"})  # uniform_elbo: tests/learner/test_estimators_uniform.py


@functools.cache
def decoded(family: str) -> tuple[DiffusionModel, EstimatorBatch]:
    model = family_model(family)
    params = DecodingConfig(gen_length=8, block_length=4, steps=4, stop_at_eos=False, **SAMPLING)
    out = ReferenceDecoder(model, params).generate(PROMPTS, torch.Generator().manual_seed(0))
    batch = batch_from_decode(out)
    batch.completion_mask[1, 6:] = False  # an unscored tail, as after an early stop
    return model, batch


@pytest.mark.parametrize("key", list(COUPLED))
def test_coupled_estimates_give_a_ratio_of_exactly_one_at_theta_old(key: str) -> None:
    model, batch = decoded("tiny")
    name, options = COUPLED[key]
    est = get_estimator(name, **options)
    for old_model in (model, copy.deepcopy(model)):
        new, old = est.estimate_pair(model, old_model, batch, torch.Generator().manual_seed(11))
        assert torch.equal(new.seq_logp.detach(), old.seq_logp), key
        assert torch.equal(new.token_logp.detach(), old.token_logp) and torch.equal(new.token_mask, old.token_mask)
        assert new.seq_logp.requires_grad and not old.seq_logp.requires_grad
        assert torch.exp(new.seq_logp - old.seq_logp).detach().tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("key", list(INDEPENDENT))
def test_independent_masks_do_not_give_ratio_one(key: str) -> None:
    model, batch = decoded("tiny")
    name, options = INDEPENDENT[key]
    new, old = get_estimator(name, **options).estimate_pair(model, model, batch, torch.Generator().manual_seed(11))
    log_ratio = (new.seq_logp.detach() - old.seq_logp).abs()
    assert float(log_ratio.max()) > 1e-3, f"{key}: log-ratios {log_ratio.tolist()}"


@pytest.mark.parametrize("key", list(COUPLED) + list(INDEPENDENT))
def test_estimates_follow_the_generator_and_leave_the_global_rng_alone(key: str) -> None:
    model, batch = decoded("tiny")
    name, options = {**COUPLED, **INDEPENDENT}[key]
    est = get_estimator(name, **options)
    state = torch.get_rng_state()
    with torch.no_grad():
        a = est.estimate(model, batch, torch.Generator().manual_seed(3)).seq_logp
        b = est.estimate(model, batch, torch.Generator().manual_seed(3)).seq_logp
        c = est.estimate(model, batch, torch.Generator().manual_seed(4)).seq_logp
        est.estimate_pair(model, model, batch, torch.Generator().manual_seed(5))
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, b)
    if name != "mean_field":  # d1's draw only touches the prompt; two seeds may mask the same tokens
        assert not torch.equal(a, c)


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("name", MASKED)
def test_every_estimator_runs_on_every_family_with_gradients(family: str, name: str) -> None:
    if name in BLOCK_ONLY and family in ("tiny", "llada", "dream"):
        pytest.skip(f"{name} scores block models only; {family} is full attention")
    model, batch = decoded(family)
    model.zero_grad(set_to_none=True)
    est = get_estimator(name, **DEFAULTS[name])
    out = est.estimate(model, batch, torch.Generator().manual_seed(0))
    assert out.token_logp.shape == batch.completion_ids.shape and out.seq_logp.shape == (3,)
    assert bool(torch.isfinite(out.seq_logp).all()) and bool((out.seq_logp <= 0).all())
    assert float(out.seq_logp.detach().min()) < 0
    assert not bool(out.token_mask[1, 6:].any())  # the unscored tail is never scored
    assert bool((out.token_logp[~out.token_mask] == 0).all())
    out.seq_logp.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", MASKED)
def test_chunked_forward_passes_equal_one_pass(name: str) -> None:
    model, batch = decoded("tiny_block" if name in BLOCK_ONLY else "tiny")
    one = get_estimator(name, **DEFAULTS[name])
    chunked = get_estimator(name, **DEFAULTS[name], chunk_rows=2)
    with torch.no_grad():
        a = one.estimate(model, batch, torch.Generator().manual_seed(9)).seq_logp
        b = chunked.estimate(model, batch, torch.Generator().manual_seed(9)).seq_logp
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-6)


def test_estimator_from_config_builds_each_estimator_with_its_options() -> None:
    decoding = DecodingConfig(gen_length=8, block_length=4, steps=4, temperature=0.9, top_k=7, top_p=0.8)
    elbo = estimator_from_config(AlgorithmConfig(estimator="elbo", num_mc_samples=3, elbo_weighting="one_over_t"), decoding)
    assert (elbo.name, elbo.num_samples, elbo.weighting, elbo.coupling) == ("elbo", 3, "one_over_t", "independent")
    assert estimator_from_config(AlgorithmConfig(estimator="mean_field"), decoding).coupling == "shared"
    spg = estimator_from_config(AlgorithmConfig(estimator="spg", eubo_beta=2.0, spg_block_size=8), decoding)
    assert (spg.beta, spg.block_size, spg.mix_weight, spg.num_samples) == (2.0, 8, 0.5, 2)
    agrpo = estimator_from_config(AlgorithmConfig(estimator="agrpo", agrpo_sampling="entropy"), decoding)
    assert (agrpo.num_steps, agrpo.sampling, agrpo.temperature, agrpo.top_k, agrpo.top_p) == (24, "entropy", 0.9, 7, 0.8)
    with pytest.raises(ValueError, match="cfg_scale"):
        estimator_from_config(AlgorithmConfig(estimator="agrpo"), decoding.model_copy(update={"cfg_scale": 1.0}))


def test_config_rejects_couplings_an_estimator_cannot_use() -> None:
    with pytest.raises(ConfigError, match="algorithm: coupling 'complementary' needs estimator 'elbo'"):
        build_config({"algorithm": {"estimator": "spg", "coupling": "complementary"}})
    with pytest.raises(ConfigError, match="agrpo_old_logprobs"):
        build_config({"algorithm": {"estimator": "agrpo", "coupling": "shared"}})
    with pytest.raises(ConfigError, match="algorithm.eubo_beta"):
        build_config({"algorithm": {"eubo_beta": 0}})


def test_registry_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match="unknown estimator 'elb'; available: agrpo, elbo, mean_field, spg"):
        get_estimator("elb")
    with pytest.raises(ValueError, match="its options are num_samples, weighting"):
        get_estimator("elbo", p_mask=0.1)
    with pytest.raises(ValueError, match="does not support coupling 'complementary'"):
        get_estimator("spg", coupling="complementary")
    with pytest.raises(ValueError, match="weighting 'sum' unknown"):
        get_estimator("elbo", weighting="sum")


def test_bad_batches_fail_naming_the_field() -> None:
    model = tiny_model()
    _, good = decoded("tiny")
    est = get_estimator("elbo")
    cases = [
        ({"completion_mask": good.completion_mask[:, :5]}, r"completion_mask has shape \[3, 5\]; expected \[3, 8\]"),
        ({"completion_mask": good.completion_mask.long()}, "completion_mask must be bool"),
        ({"completion_ids": good.completion_ids + 1000}, "completion_ids holds ids in .* outside the model's vocabulary"),
        ({"prompt_mask": good.prompt_mask[:2]}, "prompt_mask has shape"),
        ({"prompt_ids": good.prompt_ids[0]}, r"prompt_ids must be a 2D tensor"),
    ]
    for change, message in cases:
        bad = EstimatorBatch(**{**vars(good), **change})
        with pytest.raises(ValueError, match=message):
            est.estimate(model, bad, torch.Generator())


def test_non_finite_model_output_is_reported() -> None:
    model, batch = decoded("tiny")
    broken = copy.deepcopy(model)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite logits on estimator rows"):
        get_estimator("mean_field").estimate(broken, batch, torch.Generator())
