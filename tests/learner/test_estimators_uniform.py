"""The uniform-noise block ELBO (learner/estimators/uniform.py) against brute force: the closed-form KL
term against its definition, the bound against the exact log-likelihood (tight for the exact posterior),
the one-pass staircase against per-block inference, and the estimator's mean against the ELBO of a
tiny DiffusionGemma computed by enumerating every noisy canvas."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from learner.estimators import EstimatorBatch, get_estimator
from learner.estimators.uniform import (
    T_HI,
    T_LO,
    UniformDraw,
    elbo_rate,
    staircase_logits,
    uniform_kl_terms,
)
from system.models.diffusion_gemma import DiffusionGemmaAdapter, build_tiny
from tests.conftest import tiny_model


def q_token(z: int, x: int, t: float, vocab: int) -> float:
    """Forward kernel q_t(z | x) = (1 - t) [z = x] + t / V."""
    return (1.0 - t) * (z == x) + t / vocab


def kl_by_definition(p: list[float], z: int, x: int, t: float) -> float:
    """sum_{y != z} rh - r + r log(r / rh), with r(y) = q(y|x)/q(z|x), rh(y) = sum_x' p(x') q(y|x')/q(z|x')."""
    vocab, total = len(p), 0.0
    for y in range(vocab):
        if y == z:
            continue
        r = q_token(y, x, t, vocab) / q_token(z, x, t, vocab)
        rh = sum(p[k] * q_token(y, k, t, vocab) / q_token(z, k, t, vocab) for k in range(vocab))
        total += rh - r + r * math.log(r / rh)
    return total


def test_closed_form_equals_definition() -> None:
    gen = torch.Generator().manual_seed(0)
    vocab = 5
    for _ in range(3):
        p = torch.softmax(2 * torch.randn(vocab, generator=gen, dtype=torch.float64), -1)
        for z, x, t in itertools.product(range(vocab), range(vocab), (1e-3, 0.3, 0.95)):
            got = uniform_kl_terms(p.log()[None], torch.tensor([z]), torch.tensor([x]), torch.tensor([t],
                                   dtype=torch.float64)).item()
            assert got == pytest.approx(kl_by_definition(p.tolist(), z, x, t), rel=1e-9, abs=1e-12)


def gauss_t(nodes: int, lo: float = 0.0, hi: float = 1.0) -> list[tuple[float, float]]:
    """(t, weight) of Gauss-Legendre on t = lo + (hi - lo) u^3 (the cube tames the log singularity at 0)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    u = (x + 1) / 2
    return [(lo + (hi - lo) * float(ui) ** 3, float(wi) / 2 * 3 * float(ui) ** 2 * (hi - lo)) for ui, wi in zip(u, w)]


def test_bound_is_tight_for_the_exact_posterior() -> None:
    """Data: a law over all 9 sequences of 2 tokens from 3. With the exact posterior marginals as the
    denoiser the reverse chain is exact and the ELBO equals log p_data(x) (the path ends at x)."""
    vocab, length = 3, 2
    seqs = list(itertools.product(range(vocab), repeat=length))
    p_data = torch.softmax(torch.randn(len(seqs), generator=torch.Generator().manual_seed(1), dtype=torch.float64), 0)

    def integrand(x: tuple[int, ...], t: float) -> float:
        value = 0.0
        for z in seqs:
            post = torch.tensor([p_data[j].item() * math.prod(q_token(z[i], s[i], t, vocab) for i in range(length))
                                 for j, s in enumerate(seqs)], dtype=torch.float64)
            post = post / post.sum()
            marg = torch.zeros(length, vocab, dtype=torch.float64)
            for j, s in enumerate(seqs):
                marg[torch.arange(length), torch.tensor(s)] += post[j]
            kl = uniform_kl_terms(marg.log(), torch.tensor(z), torch.tensor(x), torch.full((length,), t,
                                  dtype=torch.float64))
            value += math.prod(q_token(z[i], x[i], t, vocab) for i in range(length)) * kl.sum().item()
        return value / ((1.0 - t) * vocab)

    for index in (0, 4, 7):
        elbo = -sum(w * integrand(seqs[index], t) for t, w in gauss_t(60))
        assert elbo == pytest.approx(math.log(p_data[index].item()), abs=1e-7)


def prompts(bsz: int, plen: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, vocab - 3, (bsz, plen), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(bsz, plen, dtype=torch.long)
    mask[0, :2], ids[0, :2] = 0, 0
    return ids, mask


@torch.no_grad()
def test_staircase_equals_per_block_inference() -> None:
    """One pass over all blocks = the decoder's per-block passes (left padding, window 6 < 17 tokens)."""
    model = build_tiny(0, sliding_window=6, canvas_length=4)
    ids, mask = prompts(3, 5, 64)
    gen = torch.Generator().manual_seed(2)
    clean, noisy = torch.randint(3, 60, (3, 12), generator=gen), torch.randint(0, 64, (3, 12), generator=gen)
    one_pass = staircase_logits(model, ids, mask, clean, noisy)
    cache, context, keys, pos = model.new_cache(), ids, mask.bool(), torch.arange(5)[None]
    for k in range(3):
        cache = model.encode(context, keys, cache, pos)
        pos = torch.arange(5 + 4 * k, 9 + 4 * k)[None]
        keys = torch.cat([keys, torch.ones(3, 4, dtype=torch.bool)], dim=1)
        canvas = noisy[:, 4 * k:4 * k + 4]
        block = model.denoise(canvas, cache, pos, model.decoder_masks(canvas, cache, keys))
        torch.testing.assert_close(one_pass[:, 4 * k:4 * k + 4], block, atol=2e-6, rtol=0)
        context = clean[:, 4 * k:4 * k + 4]


@pytest.fixture(scope="module")
def enumerable() -> tuple[DiffusionGemmaAdapter, EstimatorBatch]:
    """Vocabulary 8, one canvas of 2 tokens: 64 noisy canvases to enumerate."""
    model = build_tiny(3, vocab_size=8, canvas_length=2)
    ids, mask = prompts(1, 3, 8)
    batch = EstimatorBatch(prompt_ids=ids, prompt_mask=mask, completion_ids=torch.tensor([[4, 3]]),
                           completion_mask=torch.ones(1, 2, dtype=torch.bool))
    return model, batch


def all_canvases(vocab: int, length: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(vocab), repeat=length)))


@torch.no_grad()
def test_estimator_equals_enumeration_at_fixed_noise(enumerable: tuple[DiffusionGemmaAdapter, EstimatorBatch]) -> None:
    """Given t, the estimator's terms weighted by q_t(z|x) over all 64 canvases z equal the integrand
    -(T_HI - T_LO) beta_t / V E_z sum_i K_i computed from per-canvas logits."""
    model, batch = enumerable
    est = get_estimator("uniform_elbo")
    z_all = all_canvases(8, 2)
    n = z_all.shape[0]
    one = EstimatorBatch(prompt_ids=batch.prompt_ids.repeat(n, 1), prompt_mask=batch.prompt_mask.repeat(n, 1),
                         completion_ids=batch.completion_ids.repeat(n, 1),
                         completion_mask=batch.completion_mask.repeat(n, 1))
    logp = torch.log_softmax(staircase_logits(model, one.prompt_ids, one.prompt_mask, one.completion_ids, z_all), -1)
    x = batch.completion_ids[0]
    for t in (0.05, 0.5, 0.9):
        t_rows = torch.full((n, 2), t, dtype=torch.float64)
        terms = est.sample_terms(model, one, UniformDraw(noisy=z_all, t=t_rows, weight=torch.full_like(t_rows, T_HI - T_LO),
                                                              num_samples=1))
        q = torch.tensor([q_token(int(z[0]), int(x[0]), t, 8) * q_token(int(z[1]), int(x[1]), t, 8) for z in z_all])
        kl = uniform_kl_terms(logp.double(), z_all, x.expand(n, 2), t_rows).sum(-1)
        want = -(T_HI - T_LO) * elbo_rate(torch.tensor(t), 8) * (q * kl).sum()
        assert (q * terms.sum(-1).double()).sum().item() == pytest.approx(want.item(), rel=1e-5)


@torch.no_grad()
def test_estimator_mean_is_the_enumerated_elbo(enumerable: tuple[DiffusionGemmaAdapter, EstimatorBatch]) -> None:
    """3,000 draws (t and z) average to the ELBO integrated by quadrature over t and enumeration over z,
    with t drawn log-uniformly (the default importance sampler) or uniformly."""
    model, batch = enumerable
    z_all = all_canvases(8, 2)
    n = z_all.shape[0]
    logits = staircase_logits(model, batch.prompt_ids.repeat(n, 1), batch.prompt_mask.repeat(n, 1),
                              batch.completion_ids.repeat(n, 1), z_all)
    logp, x = torch.log_softmax(logits, -1).double(), batch.completion_ids[0]
    exact = 0.0
    for t, w in gauss_t(48, T_LO, T_HI):
        q = torch.tensor([q_token(int(z[0]), int(x[0]), t, 8) * q_token(int(z[1]), int(x[1]), t, 8) for z in z_all])
        kl = uniform_kl_terms(logp, z_all, x.expand(n, 2), torch.full((n, 2), t, dtype=torch.float64)).sum(-1)
        exact -= w * elbo_rate(torch.tensor(t), 8).item() * (q * kl).sum().item()
    assert exact < 0
    for t_sampling in ("log_uniform", "uniform"):
        est = get_estimator("uniform_elbo", num_samples=3000, t_sampling=t_sampling)
        samples = est.estimate(model, batch, torch.Generator().manual_seed(0)).extras["sample_seq_logp"][:, 0]
        stderr = samples.double().std().item() / math.sqrt(samples.numel())
        assert abs(samples.double().mean().item() - exact) < 4 * stderr, (t_sampling, samples.mean(), exact, stderr)


def test_shared_coupling_ratio_is_one_and_gradients_flow(
        enumerable: tuple[DiffusionGemmaAdapter, EstimatorBatch]) -> None:
    model, batch = enumerable
    for options in ({}, {"self_conditioning": "two_pass", "weighting": "flat_ce", "num_samples": 2}):
        est = get_estimator("uniform_elbo", **options)
        new, old = est.estimate_pair(model, model, batch, torch.Generator().manual_seed(4))
        assert torch.equal(new.seq_logp.detach(), old.seq_logp)
        new.seq_logp.sum().backward()
        grad = model.net.model.decoder.layers[0].self_attn.q_proj.weight.grad
        assert grad is not None and bool(grad.abs().sum() > 0)
        model.net.zero_grad()


def test_masked_model_is_refused(enumerable: tuple[DiffusionGemmaAdapter, EstimatorBatch]) -> None:
    _, batch = enumerable
    with pytest.raises(ValueError, match="uniform-noise model"):
        get_estimator("uniform_elbo").estimate(tiny_model(), batch, torch.Generator())


def test_estimator_and_decoder_keep_to_the_models_device() -> None:
    """Under the device guard's mixed-device check the decoder and the estimator keep every tensor on the
    model's device. Not under its stray (meta) default device: transformers' own sliding-window cache
    layer builds a tensor on the default device (``cache_utils`` ``lazy_initialization``)."""
    from actors.decoding.uniform_block import UniformDecodeConfig, uniform_generate
    from learner.estimators import batch_from_decode
    from tests.device_guard import _SameDevice

    model = build_tiny(0, canvas_length=4)
    ids, mask = prompts(2, 5, 64)
    gen = torch.Generator(device="cpu").manual_seed(0)
    with _SameDevice():
        out = uniform_generate(model, ids, mask, 8, UniformDecodeConfig(max_denoising_steps=2), gen)
        batch = batch_from_decode(out)
        new, old = get_estimator("uniform_elbo", self_conditioning="two_pass").estimate_pair(model, model, batch, gen)
        new.seq_logp.sum().backward()
    assert new.seq_logp.device == model.device


def test_chunked_rows_equal_one_pass(enumerable: tuple[DiffusionGemmaAdapter, EstimatorBatch]) -> None:
    model, batch = enumerable
    batch = EstimatorBatch(prompt_ids=batch.prompt_ids.repeat(3, 1), prompt_mask=batch.prompt_mask.repeat(3, 1),
                           completion_ids=batch.completion_ids.repeat(3, 1),
                           completion_mask=batch.completion_mask.repeat(3, 1))
    with torch.no_grad():
        one = get_estimator("uniform_elbo", num_samples=2).estimate(model, batch, torch.Generator().manual_seed(9))
        two = get_estimator("uniform_elbo", num_samples=2, chunk_rows=4).estimate(
            model, batch, torch.Generator().manual_seed(9))
    torch.testing.assert_close(one.seq_logp, two.seq_logp, atol=1e-5, rtol=1e-5)


def test_sft_with_the_published_objective_fits_a_completion() -> None:
    """uniform_sft_loss (flat CE, t ~ U(1e-3, 1), self-conditioning p = 0.5, encoder AR co-loss): 30 Adam
    steps on one batch lower it, reach the self-conditioning MLP and the encoder's final norm, and raise
    the uniform ELBO of the completions (shared draw, before vs after)."""
    from learner.uniform_sft import UniformSftConfig, uniform_sft_loss

    model = build_tiny(0, canvas_length=4).train()
    ids, mask = prompts(2, 5, 64)
    batch = EstimatorBatch(prompt_ids=ids, prompt_mask=mask, completion_ids=torch.randint(3, 60, (2, 8),
                           generator=torch.Generator().manual_seed(7)), completion_mask=torch.ones(2, 8, dtype=torch.bool))
    est = get_estimator("uniform_elbo", num_samples=4)
    draw = est.draw(model.spec, batch, torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = est.score(model, batch, draw).seq_logp
    opt = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    gen, losses = torch.Generator().manual_seed(0), []
    for step in range(30):
        loss, parts = uniform_sft_loss(model, batch, gen, UniformSftConfig(self_conditioning_p=1.0 if step == 0 else 0.5))
        opt.zero_grad()
        loss.backward()
        if step == 0:
            net = model.net.model
            assert net.decoder.self_conditioning.pre_norm.weight.grad is not None
            assert net.encoder.language_model.norm.weight.grad is not None
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    with torch.no_grad():
        after = est.score(model, batch, draw).seq_logp
    assert bool((after > before).all()), (before, after)
