"""Staircase block ELBO: the one-pass estimate equals a loop of separate per-block forward passes on the
tiny block model, SDAR and LLaDA2; no leakage from a clean block into itself or earlier blocks; the
expectation of the 1/t and mean estimates against brute-force enumeration on a toy; the draw and the
weights by hand; coupling, the generator contract and the error messages."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch

from actors.decoding.reference import ReferenceDecoder
from learner.estimators import EstimatorBatch, batch_from_decode, estimator_from_config, get_estimator
from learner.estimators.elbo import noise_levels
from learner.estimators.staircase import align_prompt, staircase_weights
from system.config import AlgorithmConfig, DecodingConfig
from system.diffusion import left_pad
from system.models.base import DiffusionModel, block_causal_mask
from tests.conftest import family_model, tiny_model

BS = 4  # block size of every fixture here


def make_batch(model: DiffusionModel, seed: int = 0, length: int = 12) -> EstimatorBatch:
    """3 rows: prompts of 5, 3 and 1 real tokens (left-padded to 5, not a multiple of the block size);
    row 1 leaves its last block unscored, as after an early stop."""
    gen = torch.Generator().manual_seed(seed)
    prompt_mask = torch.tensor([[1] * 5, [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])
    prompt_ids = torch.where(prompt_mask.bool(), torch.randint(10, 100, (3, 5), generator=gen), model.spec.pad_token_id)
    completion = torch.randint(10, 100, (3, length), generator=gen)
    completion_mask = torch.ones(3, length, dtype=torch.bool)
    completion_mask[1, length - BS:] = False
    return EstimatorBatch(prompt_ids, prompt_mask, completion, completion_mask)


def loop_logprobs(model: DiffusionModel, batch: EstimatorBatch, draw) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The reference: for every row n and block b a separate forward pass of that single row over
    [prompt | clean blocks < b | noisy block b] with an explicit block-causal + padding mask (prompt
    left-padded to a multiple of the block size, as the decoder pads it); float64 log-softmax.
    Returns [N, L] log-probs at draw.scored, 0 elsewhere."""
    rows, glen = draw.clean.shape
    bsz = batch.completion_ids.shape[0]
    out = torch.zeros(rows, glen, dtype=torch.float64)
    for n in range(rows):
        prompt, real = batch.prompt_ids[n % bsz], batch.prompt_mask[n % bsz]
        extra = -prompt.numel() % BS  # 5 -> 3 more pads
        prompt = torch.cat([torch.full((extra,), model.spec.pad_token_id), prompt])
        real = torch.cat([torch.zeros(extra, dtype=torch.long), real])
        for b in range(glen // BS):
            x = torch.cat([prompt, draw.clean[n, : b * BS], draw.noisy[n, b * BS: (b + 1) * BS]])[None]
            keys = torch.cat([real, torch.ones(x.shape[1] - real.numel(), dtype=torch.long)]).bool()
            mask = block_causal_mask(x.shape[1], BS) & keys[None, None, None, :]
            mask |= torch.diag(~keys)[None, None]  # a pad query attends itself
            pos = (keys.long().cumsum(-1) - 1).clamp(min=0)[None]
            with torch.no_grad():
                logits = model(x, attention_mask=mask, position_ids=pos)[0, -BS:].double()
            logp = torch.log_softmax(logits, -1)
            for j in range(BS):
                col = b * BS + j
                if draw.scored[n, col]:
                    out[n, col] = logp[j, batch.completion_ids[n % bsz, col]]
    return out


@pytest.mark.parametrize("family", ["tiny_block", "sdar", "llada2"])
@pytest.mark.parametrize("weighting", ["one_over_t", "mean"])
def test_one_pass_equals_a_loop_of_per_block_passes(family: str, weighting: str) -> None:
    model = family_model(family)
    batch = make_batch(model)
    est = get_estimator("staircase_elbo", num_samples=2, weighting=weighting)
    draw = est.draw(model.spec, batch, torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast = est.score(model, batch, draw)
        logp = est.row_logprobs(model, batch, draw)
        looped = get_estimator("staircase_elbo", num_samples=2, weighting=weighting, layout="per_block",
                               chunk_rows=4).score(model, batch, draw)
    reference = loop_logprobs(model, batch, draw)
    torch.testing.assert_close(logp.double(), reference, atol=2e-5, rtol=0)
    # The estimate: token_logp[b] = sum_s weight[s, b] * logp[s, b], summed over the sequence.
    expected_tokens = (draw.weight.double() * reference).view(2, 3, -1).sum(0)
    torch.testing.assert_close(fast.token_logp.double(), expected_tokens, atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(fast.seq_logp.double(), expected_tokens.sum(-1), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(looped.seq_logp, fast.seq_logp, atol=1e-4, rtol=1e-6)
    with torch.no_grad():  # one pass in chunks of 4 of the 6 rows
        chunked = get_estimator("staircase_elbo", num_samples=2, weighting=weighting, chunk_rows=4).score(model, batch, draw)
    torch.testing.assert_close(chunked.seq_logp, fast.seq_logp, atol=1e-5, rtol=1e-6)
    assert looped.extras["num_passes"].tolist() == [6.0] * 3 and fast.extras["num_passes"].tolist() == [2.0] * 3
    assert not bool(fast.token_mask[1, -BS:].any())  # the unscored block is never scored


def test_no_leakage_from_a_clean_block_into_itself_or_earlier_blocks() -> None:
    model = family_model("tiny_block")
    batch = make_batch(model, length=16)
    batch.completion_mask[:] = True
    est = get_estimator("staircase_elbo", num_samples=1)
    draw = est.draw(model.spec, batch, torch.Generator().manual_seed(0))
    draw.scored = torch.ones_like(draw.scored)  # read the log-prob at every position, masked or not
    with torch.no_grad():
        base = est.row_logprobs(model, batch, draw)
        for b in range(4):
            # Change the clean copy of block b (the context later blocks read), keep targets and noisy input.
            changed = copy.copy(draw)
            changed.clean = draw.clean.clone()
            changed.clean[:, b * BS: (b + 1) * BS] = (draw.clean[:, b * BS: (b + 1) * BS] + 7) % 90 + 10
            out = est.row_logprobs(model, batch, changed)
            assert torch.equal(out[:, : (b + 1) * BS], base[:, : (b + 1) * BS]), b
            if b < 3:
                assert not torch.allclose(out[:, (b + 1) * BS:], base[:, (b + 1) * BS:]), b
        # A changed target token of block 2 (clean and, where unmasked, noisy copy) never moves blocks 0-1.
        other = copy.copy(batch)
        other.completion_ids = batch.completion_ids.clone()
        other.completion_ids[:, 2 * BS:] = (batch.completion_ids[:, 2 * BS:] + 3) % 90 + 10
        again = est.draw(model.spec, other, torch.Generator().manual_seed(0))
        assert torch.equal(again.scored, est.draw(model.spec, batch, torch.Generator().manual_seed(0)).scored)
        again.scored = draw.scored
        assert torch.equal(est.row_logprobs(model, other, again)[:, : 2 * BS], base[:, : 2 * BS])


@pytest.mark.parametrize("family", ["tiny_block", "sdar"])
def test_a_fully_masked_block_scores_what_the_decoder_sampled_from(family: str) -> None:
    # The decoder records, for each revealed token, its log-prob under the distribution it sampled from.
    # Tokens revealed at the first step of their block were drawn with the block fully masked and the
    # earlier blocks final, which is what the staircase scores with a fully masked noisy block: the two
    # agree, prompts of different lengths included (the estimator pads them as the decoder does).
    model = family_model(family)
    params = DecodingConfig(gen_length=8, block_length=4, steps=4, temperature=0.0, stop_at_eos=False)
    out = ReferenceDecoder(model, params).generate([[20, 21, 22, 23, 24], [30, 31], [40]], torch.Generator())
    batch = batch_from_decode(out)
    assert batch.prompt_ids.shape[1] == 8  # the decoder padded the prompts to a multiple of the block size;
    batch.prompt_ids, batch.prompt_mask = left_pad([[20, 21, 22, 23, 24], [30, 31], [40]], model.spec.pad_token_id)
    assert batch.prompt_ids.shape[1] == 5  # the learner's batches pad to the longest prompt only
    first = (out.unmask_step == 0) | (out.unmask_step == 2)  # 2 steps per block: steps 0 and 2 open a block
    assert bool(first.view(3, 2, 4).any(-1).all())
    est = get_estimator("staircase_elbo")
    draw = est.draw(model.spec, batch, torch.Generator().manual_seed(0))
    draw.noisy = torch.full_like(draw.noisy, model.mask_token_id)
    draw.scored = first
    with torch.no_grad():
        logp = est.row_logprobs(model, batch, draw)
    torch.testing.assert_close(logp[first], out.logprobs[first], atol=1e-5, rtol=0)


def test_extra_left_padding_of_the_prompts_changes_nothing() -> None:
    # The estimator pads prompts to a multiple of the block size: a batch padded 2 columns wider (7 rather
    # than 5, both padded to 8) gives the same block partition of the real tokens, hence the same estimate.
    model = family_model("tiny_block")
    batch = make_batch(model)
    wider = copy.copy(batch)
    pad = torch.full((3, 2), model.spec.pad_token_id)
    wider.prompt_ids = torch.cat([pad, batch.prompt_ids], 1)
    wider.prompt_mask = torch.cat([torch.zeros_like(pad), batch.prompt_mask], 1)
    est = get_estimator("staircase_elbo", num_samples=2)
    with torch.no_grad():
        a = est.estimate(model, batch, torch.Generator().manual_seed(1)).seq_logp
        b = est.estimate(model, wider, torch.Generator().manual_seed(1)).seq_logp
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_align_prompt_by_hand() -> None:
    ids, mask = align_prompt(torch.tensor([[7, 8, 9]]), torch.tensor([[0, 1, 1]]), 4, 0)
    assert ids.tolist() == [[0, 7, 8, 9]] and mask.tolist() == [[0, 0, 1, 1]]  # 3 -> 4 columns
    ids, mask = align_prompt(torch.tensor([[7, 8, 9, 6, 5]]), torch.ones(1, 5, dtype=torch.long), 2, 0)
    assert ids.tolist() == [[0, 7, 8, 9, 6, 5]] and mask.tolist() == [[0, 1, 1, 1, 1, 1]]  # 5 -> 6
    same = torch.tensor([[1, 2, 3, 4]])
    assert align_prompt(same, torch.ones_like(same), 4, 0)[0] is same


def test_the_draw_by_hand() -> None:
    model = family_model("tiny_block")
    batch = make_batch(model, length=8)  # 2 blocks; row 1 scores only block 0
    est = get_estimator("staircase_elbo", num_samples=2, weighting="one_over_t")
    draw = est.draw(model.spec, batch, torch.Generator().manual_seed(4))
    # Replay the generator: t for (sample, row, block) = 1 - u, then one uniform per token.
    gen = torch.Generator().manual_seed(4)
    t = noise_levels(2, 3 * 2, gen, torch.device("cpu")).view(2, 3, 2)
    u = torch.rand((2, 3, 8), generator=gen, dtype=torch.float64)
    masked = (u < t.repeat_interleave(BS, -1)) & batch.completion_mask
    assert torch.equal(draw.t, t) and torch.equal(draw.scored, masked.view(6, 8))
    # one_over_t with K = 2: weight 1 / (t_b * 2) on the masked tokens of block b.
    for s, r, j in itertools.product(range(2), range(3), range(8)):
        want = 1.0 / (float(t[s, r, j // BS]) * 2) if masked[s, r, j] else 0.0
        assert math.isclose(float(draw.weight[s * 3 + r, j]), want, rel_tol=1e-6)
    mask_id = model.mask_token_id
    expected_noisy = torch.where(masked | ~batch.completion_mask, mask_id, batch.completion_ids).view(6, 8)
    assert torch.equal(draw.noisy, expected_noisy)
    # The clean copy hides only the unscored block (row 1, block 1) in both samples.
    assert torch.equal(draw.clean, torch.where(batch.completion_mask, batch.completion_ids, mask_id).repeat(2, 1))


def test_weights_by_hand() -> None:
    # One row of two blocks of 2, two draws: draw 0 masks [1,0 | 1,1] at t = (0.5, 0.25); draw 1 masks nothing.
    masked = torch.tensor([[[True, False, True, True]], [[False] * 4]])
    t_token = torch.tensor([[[0.5, 0.5, 0.25, 0.25]], [[0.3, 0.3, 0.9, 0.9]]], dtype=torch.float64)
    # one_over_t: 1/t_b/K -> 1/0.5/2 = 1.0 in block 0, 1/0.25/2 = 2.0 in block 1; draw 1 scores nothing.
    assert staircase_weights(masked, t_token, "one_over_t").tolist() == [[[1.0, 0.0, 2.0, 2.0]], [[0.0] * 4]]
    # mean: 3 masked tokens in the row, 1 non-empty draw -> 1/3 each.
    w = staircase_weights(masked, t_token, "mean")
    assert torch.allclose(w, torch.tensor([[[1 / 3, 0.0, 1 / 3, 1 / 3]], [[0.0] * 4]], dtype=torch.float64))


# --------------------------------------------------------------------------- expectation vs enumeration

TOY_BS, TOY_L = 2, 4  # two blocks of two tokens


def block_sums(model: DiffusionModel, batch: EstimatorBatch) -> dict[tuple[int, tuple[bool, ...]], float]:
    """S_b(m) = sum_{j in m} log p(o_j | block b masked at m, clean blocks < b), for every block b and
    non-empty pattern m, each from its own block-causal pass (float64 log-softmax)."""
    prompt, target = batch.prompt_ids[0], batch.completion_ids[0]
    out = {}
    for b, pattern in itertools.product(range(TOY_L // TOY_BS), itertools.product([False, True], repeat=TOY_BS)):
        if not any(pattern):
            continue
        block = target[b * TOY_BS: (b + 1) * TOY_BS]
        noisy = torch.where(torch.tensor(pattern), model.mask_token_id, block)
        x = torch.cat([prompt, target[: b * TOY_BS], noisy])[None]
        with torch.no_grad():
            logp = torch.log_softmax(model(x)[0, -TOY_BS:].double(), -1)
        out[b, pattern] = sum(float(logp[j, block[j]]) for j in range(TOY_BS) if pattern[j])
    return out


def exact_expectation(sums: dict[tuple[int, tuple[bool, ...]], float], weighting: str) -> float:
    """Brute force over the independent t_0, t_1 ~ U(0, 1] and the masks of both blocks.

    Given t_b, a pattern with a masked of n = 2 tokens has probability t_b^a (1 - t_b)^(n - a).
      one_over_t: E = sum_b sum_m S_b(m) int t^(a-1) (1-t)^(2-a) dt = sum_b sum_m S_b(m) B(a, 3 - a),
                  B(1, 2) = 0!1!/2! = 1/2, B(2, 1) = 1/2;
      mean:       E = sum_{m0, m1} P(m0) P(m1) (S_0(m0) + S_1(m1)) / (a0 + a1) over pairs with a0 + a1 > 0,
                  P(m) = int t^a (1-t)^(2-a) dt = B(a + 1, 3 - a): B(1, 3) = 1/3, B(2, 2) = 1/6, B(3, 1) = 1/3.
    """
    patterns = list(itertools.product([False, True], repeat=TOY_BS))
    if weighting == "one_over_t":
        return sum(0.5 * value for value in sums.values())
    prob = {0: 1 / 3, 1: 1 / 6, 2: 1 / 3}
    total = 0.0
    for m0, m1 in itertools.product(patterns, patterns):
        a0, a1 = sum(m0), sum(m1)
        if a0 + a1:
            value = sums.get((0, m0), 0.0) + sums.get((1, m1), 0.0)
            total += prob[a0] * prob[a1] * value / (a0 + a1)
    return total


@pytest.mark.parametrize("weighting", ["one_over_t", "mean"])
def test_expectation_matches_brute_force_enumeration(weighting: str) -> None:
    model = tiny_model("block", TOY_BS, seed=2)
    rows = 20000
    one = EstimatorBatch(torch.tensor([[20, 21]]), torch.ones(1, 2, dtype=torch.long), torch.tensor([[30, 41, 52, 63]]),
                         torch.ones(1, TOY_L, dtype=torch.bool))
    many = EstimatorBatch(one.prompt_ids.repeat(rows, 1), one.prompt_mask.repeat(rows, 1),
                          one.completion_ids.repeat(rows, 1), one.completion_mask.repeat(rows, 1))
    est = get_estimator("staircase_elbo", num_samples=1, weighting=weighting)
    with torch.no_grad():
        values = est.estimate(model, many, torch.Generator().manual_seed(1)).seq_logp.double()
    mean, se = float(values.mean()), float(values.std() / math.sqrt(rows))
    sums = block_sums(model, one)
    exact = exact_expectation(sums, weighting)
    assert abs(mean - exact) < 4 * se, f"MC mean {mean:.4f} vs exact {exact:.4f} (se {se:.4f})"
    # The test has power: the other weighting's expectation is many standard errors away.
    other = exact_expectation(sums, "mean" if weighting == "one_over_t" else "one_over_t")
    assert abs(other - exact) > 10 * se


# --------------------------------------------------------------------------- coupling and contract


def test_shared_coupling_gives_ratio_exactly_one_and_independent_does_not() -> None:
    model = family_model("tiny_block")
    batch = make_batch(model)
    shared = get_estimator("staircase_elbo", num_samples=2, coupling="shared")
    for old_model in (model, copy.deepcopy(model)):
        new, old = shared.estimate_pair(model, old_model, batch, torch.Generator().manual_seed(11))
        assert torch.equal(new.seq_logp.detach(), old.seq_logp)
        assert new.seq_logp.requires_grad and not old.seq_logp.requires_grad
        assert torch.exp(new.seq_logp - old.seq_logp).detach().tolist() == [1.0, 1.0, 1.0]
    independent = get_estimator("staircase_elbo", num_samples=2)
    assert independent.coupling == "independent"
    new, old = independent.estimate_pair(model, model, batch, torch.Generator().manual_seed(11))
    assert float((new.seq_logp.detach() - old.seq_logp).abs().max()) > 1e-3


@pytest.mark.parametrize("family", ["tiny_block", "sdar", "llada2"])
def test_gradients_reach_the_parameters(family: str) -> None:
    model = family_model(family)
    batch = make_batch(model, length=8)
    out = get_estimator("staircase_elbo").estimate(model, batch, torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(out.seq_logp).all()) and bool((out.seq_logp < 0).all())
    out.seq_logp.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_the_generator_is_the_only_randomness() -> None:
    model = family_model("tiny_block")
    batch = make_batch(model)
    est = get_estimator("staircase_elbo", num_samples=2, t_sampling="stratified")
    state = torch.get_rng_state()
    with torch.no_grad():
        a = est.estimate(model, batch, torch.Generator().manual_seed(3)).seq_logp
        b = est.estimate(model, batch, torch.Generator().manual_seed(3)).seq_logp
        c = est.estimate(model, batch, torch.Generator().manual_seed(4)).seq_logp
    assert torch.equal(state, torch.get_rng_state())
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Stratified: sample k's block levels lie in (k/2, (k+1)/2].
    t = est.draw(model.spec, batch, torch.Generator().manual_seed(3)).t
    assert bool((t[0] <= 0.5).all()) and bool((t[1] > 0.5).all())


def test_config_builds_the_estimator_with_its_options() -> None:
    algorithm = AlgorithmConfig(estimator="staircase_elbo", num_mc_samples=3, elbo_weighting="one_over_t",
                                t_sampling="stratified", staircase_layout="per_block", estimator_chunk_rows=5)
    est = estimator_from_config(algorithm, DecodingConfig())
    assert (est.name, est.num_samples, est.weighting, est.t_sampling, est.layout, est.coupling, est.chunk_rows) == (
        "staircase_elbo", 3, "one_over_t", "stratified", "per_block", "independent", 5)


def test_errors_name_the_fix() -> None:
    full = tiny_model()
    batch = make_batch(full)
    with pytest.raises(ValueError, match="needs a block-diffusion model; model 'tiny' has full attention: use "
                                         "estimator 'elbo'"):
        get_estimator("staircase_elbo").estimate(full, batch, torch.Generator())
    block = family_model("tiny_block")
    with pytest.raises(ValueError, match="completion length 10 is not a multiple of the model's block size 4; set "
                                         "decoding.gen_length"):
        get_estimator("staircase_elbo").estimate(block, make_batch(block, length=10), torch.Generator())
    for option, value in (("layout", "stairs"), ("weighting", "sum"), ("t_sampling", "sobol")):
        with pytest.raises(ValueError, match=f"staircase_elbo: {option} '{value}' unknown; choose one of"):
            get_estimator("staircase_elbo", **{option: value})
    with pytest.raises(ValueError, match="does not support coupling 'complementary'"):
        get_estimator("staircase_elbo", coupling="complementary")
    broken = copy.deepcopy(block)
    with torch.no_grad():
        next(broken.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite logits on staircase estimator rows"):
        get_estimator("staircase_elbo").estimate(broken, make_batch(block), torch.Generator())
