"""AGRPO per-step estimator: the sampling helpers by hand, unbiasedness for the full per-step sum
(uniform and entropy importance sampling), ratio 1 against the decoder's recorded log-probs on every
model family, the vectorised estimate against a naive loop, and the edge cases."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from actors.decoding.reference import ReferenceDecoder
from learner.estimators import AgrpoEstimator, EstimatorBatch, batch_from_decode, get_estimator
from learner.estimators.agrpo import (
    LOGP_FLOOR,
    active_steps,
    entropy_proposal,
    low_discrepancy_uniforms,
    sample_steps,
    step_entropy,
)
from system.config import DecodingConfig
from system.diffusion import positions_from_padding, rebuild_state
from system.models import DiffusionModel
from tests.conftest import ALL_FAMILIES, family_model, tiny_model

PROMPTS = [[20, 21, 22, 23, 24], [30, 31], [40, 41, 42, 43, 44, 45, 46]]
SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 0.95}


def decode(model: DiffusionModel, **kw) -> tuple[EstimatorBatch, DecodingConfig]:  # type: ignore[no-untyped-def]
    params = DecodingConfig(**{"gen_length": 8, "block_length": 4, "steps": 8, "stop_at_eos": False, **SAMPLING, **kw})
    out = ReferenceDecoder(model, params).generate(PROMPTS, torch.Generator().manual_seed(3))
    return batch_from_decode(out), params


def test_active_steps_by_hand() -> None:
    # eos = 1. Row 0: non-EOS tokens revealed at steps 0 and 3 -> m = 4. Row 1: all EOS -> m = 1
    # (clamped from 0). Row 2: non-EOS at steps 2 and 1 -> m = 3.
    completion = torch.tensor([[5, 6, 1, 1], [1, 1, 1, 1], [7, 1, 8, 1]])
    unmask = torch.tensor([[0, 3, 1, 2], [0, 1, 2, 3], [2, 0, 1, 3]])
    assert active_steps(completion, unmask, 1).tolist() == [4, 1, 3]


def test_step_entropy_and_proposal_by_hand() -> None:
    # Tokens revealed at steps [0, 1, 1, 2] with entropies [0.5, 1, 2, 4]; token 2 is not scored.
    ent = step_entropy(torch.tensor([[0.5, 1.0, 2.0, 4.0]]), torch.tensor([[0, 1, 1, 2]]),
                       torch.tensor([[True, True, False, True]]), 4)
    assert ent.tolist() == [[0.5, 1.0, 4.0, 0.0]]
    # m = 3: masses [1 + 1e-8, 3 + 1e-8, 1e-8], total 4 + 3e-8; step 3 gets 0.
    q = entropy_proposal(torch.tensor([[1.0, 3.0, 0.0, 5.0]], dtype=torch.float64), torch.tensor([3]))
    total = 4 + 3e-8
    torch.testing.assert_close(q, torch.tensor([[(1 + 1e-8) / total, (3 + 1e-8) / total, 1e-8 / total, 0.0]],
                                                dtype=torch.float64), atol=1e-15, rtol=0)


def test_sample_steps_by_hand() -> None:
    # Uniform, m = 4: floor(0.1 * 4) = 0, floor(0.6 * 4) = 2, floor(0.99 * 4) = 3; weights 1.
    steps, w = sample_steps(torch.tensor([[0.1, 0.6, 0.99]], dtype=torch.float64), torch.tensor([4]), None)
    assert steps.tolist() == [[0, 2, 3]] and w.tolist() == [[1.0, 1.0, 1.0]]
    # Entropy, q = [0.25, 0.5, 0.25], cdf [0.25, 0.75, 1]: u 0.1 -> 0, 0.3 -> 1, 0.8 -> 2; u = 0.25 sits
    # on a boundary and goes right -> 1. Weights (1/3)/q = [4/3, 2/3, 2/3, 4/3].
    q = torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64)
    steps, w = sample_steps(torch.tensor([[0.1, 0.3, 0.25, 0.8]], dtype=torch.float64), torch.tensor([3]), q)
    assert steps.tolist() == [[0, 1, 1, 2]]
    torch.testing.assert_close(w, torch.tensor([[4 / 3, 2 / 3, 2 / 3, 4 / 3]], dtype=torch.float64))


def test_low_discrepancy_uniforms_put_one_draw_in_each_stratum() -> None:
    u = low_discrepancy_uniforms(5, 4, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert u.shape == (5, 4)
    assert sorted((u.flatten() * 20).floor().long().tolist()) == list(range(20))  # S = 20 strata of 1/20


def exact_step_sum(model: DiffusionModel, batch: EstimatorBatch, est: AgrpoEstimator) -> torch.Tensor:
    """F_i = sum_{t < m_i} sum_{j revealed at t, scored} log p(o_j | s_t), every step scored."""
    num_active = active_steps(batch.completion_ids, batch.unmask_step, model.spec.eos_token_id)
    total = torch.zeros(batch.completion_ids.shape[0], dtype=torch.float64)
    pad = torch.cat([batch.prompt_mask, torch.ones_like(batch.completion_ids)], 1)
    for t in range(int(num_active.max())):
        x = torch.cat([batch.prompt_ids, rebuild_state(batch.completion_ids, batch.unmask_step, t, model.mask_token_id)], 1)
        with torch.no_grad():
            logits = model(x, attention_mask=pad, position_ids=positions_from_padding(pad))[:, -batch.completion_ids.shape[1]:]
        logp = est.sampling_logprobs(logits, batch.completion_ids).double()
        here = (batch.unmask_step == t) & batch.completion_mask & (t < num_active)[:, None]
        total += torch.where(here, logp, torch.zeros_like(logp)).sum(-1)
    return total


def replicate(batch: EstimatorBatch, times: int) -> EstimatorBatch:
    return EstimatorBatch(*(v.repeat(times, 1) if v is not None else None for v in vars(batch).values()))


@pytest.mark.parametrize("sampling", ["uniform", "entropy", "entropy-skewed"])
def test_sampled_estimate_is_unbiased_for_the_full_step_sum(sampling: str) -> None:
    model = tiny_model()
    # One block of 8 tokens in 3 steps: 3, 3 and 2 tokens per step, so the step terms differ.
    batch, _ = decode(model, temperature=1.0, top_k=None, top_p=None, remasking="random", block_length=8, steps=3)
    est = get_estimator("agrpo", num_steps=2, sampling=sampling.split("-")[0], temperature=1.0)
    exact = exact_step_sum(model, batch, est)
    if sampling == "entropy-skewed":
        # Any proposal q > 0 keeps the estimate unbiased, even one that favours the 2-token step.
        batch.entropies = (batch.unmask_step == 2).float() * 3.0 + 0.1
    reps = 200
    with torch.no_grad():
        out = est.estimate(model, replicate(batch, reps), torch.Generator().manual_seed(0))
    values = out.seq_logp.double().view(reps, -1)
    # Rows of one call are negatively correlated (low-discrepancy), so this iid standard error is conservative.
    mean, se = values.mean(0), values.std(0) / math.sqrt(reps)
    assert bool(((mean - exact).abs() < 4 * se + 1e-4).all()), f"mean {mean.tolist()} exact {exact.tolist()} se {se.tolist()}"
    if sampling == "entropy":
        # Power: without the weights (1/m)/q(t) the same draws are far off (the decoder's entropies make
        # q nearly proportional to |l(t)|, hence the tiny standard error).
        rep = replicate(batch, reps)
        hits = (rep.unmask_step[:, None, :] == out.extras["sampled_steps"][:, :, None]) & rep.completion_mask[:, None, :]
        unweighted = out.extras["num_active_steps"].double() / 2 * (hits.sum(1) * out.token_logp.double()).sum(-1)
        assert bool(((unweighted.view(reps, -1).mean(0) - exact).abs() > 10 * se).all())


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_ratio_is_one_at_theta_old_against_the_decoders_logprobs(family: str) -> None:
    model = family_model(family)
    batch, params = decode(model)
    est = get_estimator("agrpo", num_steps=8, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)
    new, old = est.estimate_pair(model, None, batch, torch.Generator().manual_seed(1))  # type: ignore[arg-type]
    mask = new.token_mask
    assert int(mask.sum()) >= 8 and torch.equal(old.token_mask, mask)
    token_ratio = torch.exp(new.token_logp.detach() - old.token_logp)[mask]
    torch.testing.assert_close(token_ratio, torch.ones_like(token_ratio), atol=1e-5, rtol=0)
    torch.testing.assert_close(new.seq_logp.detach(), old.seq_logp, atol=1e-4, rtol=0)
    assert int(new.extras["filtered_out"].sum()) == 0


def test_vectorised_estimate_equals_a_naive_loop() -> None:
    model = tiny_model()
    batch, params = decode(model)
    for sampling in ("uniform", "entropy"):
        est = get_estimator("agrpo", num_steps=3, sampling=sampling, **SAMPLING)
        draw = est.draw(model.spec, batch, torch.Generator().manual_seed(7))
        with torch.no_grad():
            fast = est.score(model, batch, draw).seq_logp.double()
        glen = batch.completion_ids.shape[1]
        for i in range(len(PROMPTS)):
            m = int(draw.num_active[i])
            mass = [sum(float(batch.entropies[i, j]) for j in range(glen)
                        if int(batch.unmask_step[i, j]) == t and batch.completion_mask[i, j]) + 1e-8 for t in range(m)]
            total = 0.0
            for s in range(3):
                u = float(draw.u[i, s])
                if sampling == "uniform":
                    t, w = min(int(u * m), m - 1), 1.0
                else:  # inverse CDF by a running sum
                    q = [x / sum(mass) for x in mass]
                    t, acc = 0, q[0]
                    while acc <= u and t < m - 1:
                        t += 1
                        acc += q[t]
                    w = (1 / m) / q[t]
                assert int(draw.steps[i, s]) == t
                x = torch.cat([batch.prompt_ids[i], rebuild_state(batch.completion_ids[i:i + 1], batch.unmask_step[i:i + 1], t, model.mask_token_id)[0]])[None]
                pad = torch.cat([batch.prompt_mask[i], torch.ones(glen, dtype=torch.long)])[None]
                with torch.no_grad():
                    logits = model(x, attention_mask=pad, position_ids=positions_from_padding(pad))[:, -glen:]
                logp = est.sampling_logprobs(logits, batch.completion_ids[i:i + 1])[0]
                total += w * sum(float(logp[j]) for j in range(glen) if int(batch.unmask_step[i, j]) == t)
            assert abs(float(fast[i]) - m / 3 * total) < 1e-4, (sampling, i)


def test_recomputed_old_logprobs_give_an_exact_ratio_and_cached_ones_are_required() -> None:
    model = tiny_model()
    batch, _ = decode(model)
    est = get_estimator("agrpo", num_steps=4, old_logprobs="recompute", **SAMPLING)
    new, old = est.estimate_pair(model, copy.deepcopy(model), batch, torch.Generator().manual_seed(0))
    assert torch.equal(new.seq_logp.detach(), old.seq_logp) and torch.equal(new.token_logp.detach(), old.token_logp)
    batch.old_logprobs = None
    with pytest.raises(ValueError, match="old_logprobs is None.*agrpo_old_logprobs=recompute"):
        get_estimator("agrpo", **SAMPLING).estimate_pair(model, None, batch, torch.Generator())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="entropies is None"):
        batch.entropies = None
        get_estimator("agrpo", sampling="entropy", old_logprobs="recompute").estimate(model, batch, torch.Generator())


def test_tokens_filtered_out_at_train_time_get_the_floor_not_nan() -> None:
    model = tiny_model()
    batch, _ = decode(model)  # sampled from the top 50
    est = get_estimator("agrpo", num_steps=8, temperature=0.7, top_k=1)  # only the argmax survives now
    new, old = est.estimate_pair(model, None, batch, torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    assert int(new.extras["filtered_out"].sum()) > 0
    assert float(new.token_logp.detach().min()) == LOGP_FLOOR and bool(torch.isfinite(new.seq_logp).all())
    new.seq_logp.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
