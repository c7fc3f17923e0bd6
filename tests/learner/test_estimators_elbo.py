"""ELBO and mean-field estimators: the ELBO's expectation against brute-force enumeration on a toy
(length 3, vocabulary 4), the weights and noise levels by hand, complementary pairs, the vectorised
scoring against a naive per-row loop, and the mean-field mask."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from learner.estimators import EstimatorBatch, get_estimator
from learner.estimators.elbo import elbo_weights, noise_levels
from system.diffusion import positions_from_padding
from system.models.base import DiffusionModel, ModelSpec
from tests.conftest import tiny_model

MASK = 3  # toy vocabulary: tokens 0, 1, 2 and the mask token 3
TARGET = [0, 2, 1]


class LookupNet(nn.Module):
    """Toy network: the logits of the 3 completion positions are a learnable table indexed by the whole
    completion state (4^3 = 64 states), so every masking pattern gives its own distribution."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(2.0 * torch.randn(64, 3, 4, generator=g))

    def forward(self, input_ids, mask, pos, cache, store):  # type: ignore[no-untyped-def]
        comp = input_ids[:, -3:]
        state = (comp * torch.tensor([1, 4, 16])).sum(-1)
        prompt_logits = torch.zeros(input_ids.shape[0], input_ids.shape[1] - 3, 4)
        return torch.cat([prompt_logits, self.table[state]], dim=1)


def toy_model() -> DiffusionModel:
    spec = ModelSpec(arch="toy", attention="full", mask_token_id=MASK, eos_token_id=0, pad_token_id=0, vocab_size=4)
    return DiffusionModel(LookupNet(), spec)


def toy_batch(rows: int) -> EstimatorBatch:
    return EstimatorBatch(
        prompt_ids=torch.ones(rows, 1, dtype=torch.long), prompt_mask=torch.ones(rows, 1, dtype=torch.long),
        completion_ids=torch.tensor([TARGET] * rows), completion_mask=torch.ones(rows, 3, dtype=torch.bool),
    )


def masked_logp_sum(model: DiffusionModel, pattern: tuple[bool, ...]) -> float:
    """S(m) = sum_{j in m} log p(o_j | x_m), x_m = the target with the tokens of m masked."""
    x = torch.tensor([[1] + [MASK if m else o for m, o in zip(pattern, TARGET)]])
    with torch.no_grad():
        logp = torch.log_softmax(model(x)[0, 1:].double(), -1)
    return sum(float(logp[j, TARGET[j]]) for j in range(3) if pattern[j])


def exact_elbo(model: DiffusionModel, weighting: str, complementary: bool = False) -> float:
    """Brute-force expectation over t ~ U(0, 1] and the 2^3 masks.

    A mask m with |m| = a masked tokens has probability t^a (1 - t)^(3 - a) given t. With S(m) from
    `masked_logp_sum`:
      one_over_t: E = sum_m S(m) * int_0^1 t^(a-1) (1-t)^(3-a) dt = sum_m S(m) * B(a, 4 - a),
                  B(1,3) = 0!2!/3! = 1/3, B(2,2) = 1!1!/3! = 1/6, B(3,1) = 2!0!/3! = 1/3
                  (the complement half of a pair is a draw at level 1 - t ~ U[0, 1): same expectation);
      mean:       E = sum_m v(m) * int_0^1 t^a (1-t)^(3-a) dt = sum_m v(m) * B(a+1, 4-a),
                  B(1,4) = 0!3!/4! = 1/4, B(2,3) = 1!2!/4! = 1/12, B(3,2) = 2!1!/4! = 1/12,
                  B(4,1) = 3!0!/4! = 1/4, with v(m) = S(m) / a (0 for the empty mask); for a
                  complementary pair v(m) is the average of S / size over the non-empty halves of
                  (m, complement of m), e.g. v({}) = S(all) / 3.
    """
    beta = {"one_over_t": {0: 0.0, 1: 1 / 3, 2: 1 / 6, 3: 1 / 3},
            "mean": {0: 1 / 4, 1: 1 / 12, 2: 1 / 12, 3: 1 / 4}}[weighting]
    total = 0.0
    for pattern in itertools.product([False, True], repeat=3):
        a = sum(pattern)
        if weighting == "one_over_t":
            total += beta[a] * (masked_logp_sum(model, pattern) if a else 0.0)
            continue
        halves = [pattern, tuple(not m for m in pattern)] if complementary else [pattern]
        means = [masked_logp_sum(model, h) / sum(h) for h in halves if any(h)]
        total += beta[a] * (sum(means) / len(means) if means else 0.0)
    return total


@pytest.mark.parametrize(
    "options",
    [
        {"weighting": "one_over_t", "num_samples": 1},
        {"weighting": "mean", "num_samples": 1},
        {"weighting": "one_over_t", "num_samples": 2, "t_sampling": "stratified"},
        {"weighting": "one_over_t", "num_samples": 1, "coupling": "complementary"},
        {"weighting": "mean", "num_samples": 1, "coupling": "complementary"},
    ],
    ids=["1/t", "mean", "1/t-stratified", "1/t-complementary", "mean-complementary"],
)
def test_elbo_expectation_matches_brute_force_enumeration(options: dict) -> None:
    model = toy_model()
    rows = 20000
    est = get_estimator("elbo", **options)
    with torch.no_grad():
        values = est.estimate(model, toy_batch(rows), torch.Generator().manual_seed(1)).seq_logp.double()
    mean, se = float(values.mean()), float(values.std() / math.sqrt(rows))
    exact = exact_elbo(model, options["weighting"], options.get("coupling") == "complementary")
    assert abs(mean - exact) < 4 * se, f"MC mean {mean:.4f} vs exact {exact:.4f} (se {se:.4f})"
    # The test has power: the other weighting's expectation is many standard errors away.
    other = exact_elbo(model, "mean" if options["weighting"] == "one_over_t" else "one_over_t")
    assert abs(other - exact) > 10 * se


def test_elbo_weights_by_hand() -> None:
    # S = 2 draws of one row of 4 tokens; masks [1,1,0,0] at t = 0.5 and [0,0,0,1] at t = 0.25.
    masked = torch.tensor([[[True, True, False, False]], [[False, False, False, True]]])
    prob = torch.tensor([[0.5], [0.25]], dtype=torch.float64)
    # one_over_t: 1/t / S -> 1/0.5/2 = 1.0 on draw 0, 1/0.25/2 = 2.0 on draw 1.
    w = elbo_weights(masked, prob, "one_over_t")
    assert w.tolist() == [[[1.0, 1.0, 0.0, 0.0]], [[0.0, 0.0, 0.0, 2.0]]]
    # mean: 1/#masked / S -> 1/2/2 = 0.25 on draw 0, 1/1/2 = 0.5 on draw 1.
    w = elbo_weights(masked, prob, "mean")
    assert w.tolist() == [[[0.25, 0.25, 0.0, 0.0]], [[0.0, 0.0, 0.0, 0.5]]]
    # mean, when draw 1 masks nothing: the mean is over the non-empty draw 0 alone -> 1/2/1 = 0.5.
    w = elbo_weights(torch.tensor([[[True, True, False, False]], [[False] * 4]]), prob, "mean")
    assert w.tolist() == [[[0.5, 0.5, 0.0, 0.0]], [[0.0] * 4]]
    # An empty complement (t = 1, so 1 - t = 0) gets weight 0, not inf or NaN.
    w = elbo_weights(torch.zeros(1, 1, 3, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.float64), "one_over_t")
    assert w.tolist() == [[[0.0, 0.0, 0.0]]]


def test_noise_levels_lie_in_their_strata() -> None:
    t = noise_levels(4, 1000, torch.Generator().manual_seed(0), torch.device("cpu"), stratified=True)
    for k in range(4):  # sample k in (k/4, (k+1)/4]
        assert bool((t[k] > k / 4).all()) and bool((t[k] <= (k + 1) / 4).all())
    u = noise_levels(1, 1000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert bool((u > 0).all()) and bool((u <= 1).all())


def small_batch(model: DiffusionModel) -> EstimatorBatch:
    # Row 0: prompt of 3 tokens after 2 pads; row 1: 5 tokens; the last 2 tokens of row 1 are not scored.
    prompt_ids = torch.tensor([[0, 0, 21, 22, 23], [30, 31, 32, 33, 34]])
    prompt_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    completion = torch.tensor([[40, 41, 42, 43, 44, 45], [50, 51, 52, 53, 1, 1]])
    completion_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    return EstimatorBatch(prompt_ids, prompt_mask, completion, completion_mask)


def test_complementary_pairs_score_every_token_exactly_once_per_pair() -> None:
    model = tiny_model()
    batch = small_batch(model)
    est = get_estimator("elbo", num_samples=3, coupling="complementary")
    draw = est.draw(model.spec, batch, torch.Generator().manual_seed(0))
    scored = draw.scored.view(2, 3, 2, 6)  # [half, pair, row, token]
    assert torch.equal(scored[0] ^ scored[1], batch.completion_mask.expand(3, 2, 6))  # a partition
    assert not bool((scored[0] & scored[1]).any())
    with torch.no_grad():
        out = est.estimate(model, batch, torch.Generator().manual_seed(0))
    # 3 pairs: every scored token scored exactly 3 times, the unscored tail never; 6 passes per row.
    assert out.extras["times_scored"].tolist() == [[3] * 6, [3] * 4 + [0, 0]]
    assert out.extras["num_passes"].tolist() == [6.0, 6.0]
    # Unscored tokens are masked in every row of the draw (marginalised, never seen).
    assert bool((draw.noisy_completion.view(6, 2, 6)[:, 1, 4:] == model.mask_token_id).all())


def naive_estimate(model: DiffusionModel, batch: EstimatorBatch, draw) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Per row b and sample s, one forward of that single row; sum weight * log p by Python loops.
    Returns the sequence estimates [B] and the per-token mean log-probs over the samples [B, L]."""
    bsz, glen = batch.completion_ids.shape
    out = torch.zeros(bsz, dtype=torch.float64)
    token_sum, token_count = torch.zeros(bsz, glen, dtype=torch.float64), torch.zeros(bsz, glen)
    for s in range(draw.num_samples):
        for b in range(bsz):
            n = s * bsz + b
            x = torch.cat([draw.noisy_prompt[n], draw.noisy_completion[n]])[None]
            pad = torch.cat([batch.prompt_mask[b], torch.ones(glen, dtype=torch.long)])[None]
            with torch.no_grad():
                logits = model(x, attention_mask=pad, position_ids=positions_from_padding(pad))[0, -glen:]
            logp = torch.log_softmax(logits.double(), -1)
            for j in range(glen):
                if draw.scored[n, j]:
                    out[b] += float(draw.weight[n, j]) * float(logp[j, batch.completion_ids[b, j]])
                    token_sum[b, j] += float(logp[j, batch.completion_ids[b, j]])
                    token_count[b, j] += 1
    return out, token_sum / token_count.clamp_min(1)


@pytest.mark.parametrize(
    "name,options",
    [("elbo", {"num_samples": 2, "weighting": "one_over_t"}), ("elbo", {"num_samples": 2, "coupling": "complementary"}),
     ("mean_field", {})],
)
def test_vectorised_scoring_equals_a_naive_per_row_loop(name: str, options: dict) -> None:
    model = tiny_model()
    batch = small_batch(model)
    est = get_estimator(name, **options)
    draw = est.draw(model.spec, batch, torch.Generator().manual_seed(5))
    with torch.no_grad():
        fast = est.score(model, batch, draw)
    naive_seq, naive_token_mean = naive_estimate(model, batch, draw)
    torch.testing.assert_close(fast.seq_logp.double(), naive_seq, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fast.extras["token_mean_logp"].double(), naive_token_mean, atol=1e-5, rtol=1e-5)


def test_mean_field_masks_the_whole_completion_and_real_prompt_tokens_only() -> None:
    model = tiny_model()
    rows = 400
    prompt_ids = torch.tensor([[0, 0] + list(range(20, 30))] * rows)
    prompt_mask = torch.tensor([[0, 0] + [1] * 10] * rows)
    batch = EstimatorBatch(prompt_ids, prompt_mask, torch.full((rows, 4), 40), torch.ones(rows, 4, dtype=torch.bool))
    draw = get_estimator("mean_field", p_mask=0.15).draw(model.spec, batch, torch.Generator().manual_seed(0))
    assert bool((draw.noisy_completion == model.mask_token_id).all())
    masked = draw.noisy_prompt == model.mask_token_id
    assert not bool(masked[:, :2].any())  # padding never masked
    rate = float(masked[:, 2:].double().mean())  # 4000 Bernoulli(0.15): sd = sqrt(.15 * .85 / 4000) = 0.0056
    assert abs(rate - 0.15) < 4 * 0.0056
    assert draw.weight.tolist() == [[1.0] * 4] * rows


def test_mean_field_shares_one_prompt_mask_across_new_old_and_reference() -> None:
    model, other = tiny_model(), tiny_model(seed=1)
    batch = small_batch(model)
    est = get_estimator("mean_field")
    new, old, ref = est.estimate_models([model, model, other], batch, torch.Generator().manual_seed(2))
    assert torch.equal(new.seq_logp, old.seq_logp)
    assert new.seq_logp.requires_grad and not old.seq_logp.requires_grad and not ref.seq_logp.requires_grad
    # The reference saw the same inputs: scoring it alone on a generator in the same state agrees.
    alone = est.estimate(other, batch, torch.Generator().manual_seed(2))
    torch.testing.assert_close(alone.seq_logp.detach(), ref.seq_logp, atol=0, rtol=0)
