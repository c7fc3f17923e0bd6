"""SPG block-random estimator: the vectorised masks against a loop over the same uniforms, the EUBO by
hand, and the whole estimate (ELBO, EUBO, mix) against a naive per-row loop."""

from __future__ import annotations

import math

import torch

from learner.estimators import EstimatorBatch, get_estimator
from learner.estimators.spg import block_random_masks, eubo
from system.diffusion import positions_from_padding
from tests.conftest import tiny_model


def naive_masks(scored: list[bool], bs: int, ub: float, uc: float, upos: list[float], uclean: list[float],
                p: float) -> tuple[list[bool], list[bool]]:
    """The SPG masking of one row, written as a loop from the module docstring."""
    length = len(scored)
    blocks = [range(lo, min(length, lo + bs)) for lo in range(0, length, bs)]
    usable = [i for i, blk in enumerate(blocks) if any(scored[j] for j in blk)]
    b = usable[min(int(ub * len(usable)), len(usable) - 1)] if usable else 0
    candidates = [j for j in blocks[b] if scored[j]]
    n = min(int(uc * len(candidates)) + 1, len(candidates))
    chosen = set(sorted(candidates, key=lambda j: upos[j])[:n])
    masked = []
    for j in range(length):
        blk = j // bs
        if not scored[j] or blk > b:
            masked.append(True)
        elif blk == b:
            masked.append(j in chosen)
        else:
            masked.append(uclean[j] < p)
    return masked, [m and s for m, s in zip(masked, scored)]


def test_block_random_masks_equal_a_loop_over_the_same_uniforms() -> None:
    g = torch.Generator().manual_seed(0)
    rows, length, bs = 64, 10, 4  # 3 blocks, the last one of 2 tokens
    scored = torch.rand(rows, length, generator=g) < 0.7
    scored[0] = False  # no scored token at all
    scored[1] = torch.tensor([True] * 6 + [False] * 4)  # a prefix, as after an early stop
    ub, uc = torch.rand(rows, generator=g, dtype=torch.float64), torch.rand(rows, generator=g, dtype=torch.float64)
    upos = torch.rand(rows, length, generator=g, dtype=torch.float64)
    uclean = torch.rand(rows, length, generator=g, dtype=torch.float64)
    masked, scored_set = block_random_masks(scored, bs, ub, uc, upos, uclean, 0.3)
    for r in range(rows):
        m, s = naive_masks(scored[r].tolist(), bs, float(ub[r]), float(uc[r]), upos[r].tolist(), uclean[r].tolist(), 0.3)
        assert masked[r].tolist() == m and scored_set[r].tolist() == s, f"row {r}"
    # Every row with a scored token scores at least one; the row without scores none.
    assert bool((scored_set.sum(-1)[2:] >= 1).all()) and int(scored_set[0].sum()) == 0


def test_eubo_by_hand() -> None:
    # K = 2 samples, row 0 with 2 scored tokens, beta = 2. Sample 0 masks both tokens (p = 0.5, 0.25),
    # sample 1 masks token 0 only (p = 0.5). t_0 = 2/2 = 1, t_1 = 1/2.
    #   token 0: (1/2) (0.5^2 / 1 + 0.5^2 / 0.5) = (1/2) (0.25 + 0.5) = 0.375
    #   token 1: (1/2) (0.25^2 / 1)             = 0.03125
    #   EUBO = mean_j (1/2) log(.) = (log 0.375 + log 0.03125) / 4 = -1.1116415
    # Row 1 has no scored token: EUBO 0 and a finite (zero) gradient.
    logp = torch.tensor([[[math.log(0.5), math.log(0.25)], [0.0, 0.0]],
                         [[math.log(0.5), -3.0], [0.0, 0.0]]], requires_grad=True)
    scored_set = torch.tensor([[[True, True], [False, False]], [[True, False], [False, False]]])
    value = eubo(logp, scored_set, torch.tensor([2, 0]), beta=2.0)
    torch.testing.assert_close(value, torch.tensor([(math.log(0.375) + math.log(0.03125)) / 4, 0.0]))
    value.sum().backward()
    assert logp.grad is not None and bool(torch.isfinite(logp.grad).all())
    assert float(logp.grad[1, 0, 1]) == 0.0 and float(logp.grad[:, 1].abs().sum()) == 0.0


def spg_batch() -> EstimatorBatch:
    prompt_ids = torch.tensor([[0, 21, 22, 23], [30, 31, 32, 33]])
    prompt_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    completion = torch.tensor([[40 + j for j in range(8)], [50 + j for j in range(5)] + [1, 1, 1]])
    completion_mask = torch.tensor([[True] * 8, [True] * 5 + [False] * 3])
    return EstimatorBatch(prompt_ids, prompt_mask, completion, completion_mask)


def test_spg_estimate_equals_a_naive_loop() -> None:
    model = tiny_model()
    batch = spg_batch()
    est = get_estimator("spg", num_samples=3, block_size=3, beta=1.5, mix_weight=0.5)
    draw = est.draw(model.spec, batch, torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = est.score(model, batch, draw)
    k, bsz, glen = 3, 2, 8
    elbo, upper = [], []
    for b in range(bsz):
        per_sample, terms = [], {}
        for s in range(k):
            n = s * bsz + b
            x = torch.cat([draw.noisy_prompt[n], draw.noisy_completion[n]])[None]
            pad = torch.cat([batch.prompt_mask[b], torch.ones(glen, dtype=torch.long)])[None]
            with torch.no_grad():
                logits = model(x, attention_mask=pad, position_ids=positions_from_padding(pad))[0, -glen:]
            logp = torch.log_softmax(logits.double(), -1)
            members = [j for j in range(glen) if draw.scored[n, j]]
            assert members and all(batch.completion_mask[b, j] for j in members)
            vals = [float(logp[j, batch.completion_ids[b, j]]) for j in members]
            per_sample.append(sum(vals) / len(vals))
            t_hat = len(members) / int(batch.completion_mask[b].sum())
            for j, v in zip(members, vals):
                terms.setdefault(j, []).append(math.exp(1.5 * v) / t_hat)
        elbo.append(sum(per_sample) / k)
        upper.append(sum(math.log(sum(v) / k) / 1.5 for v in terms.values()) / len(terms))
    torch.testing.assert_close(out.seq_logp.double(), torch.tensor(elbo, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.extras["eubo"].double(), torch.tensor(upper, dtype=torch.float64), atol=1e-5, rtol=0)
    mix = 0.5 * out.extras["eubo"] + 0.5 * out.seq_logp
    torch.testing.assert_close(out.extras["negative_surrogate"], mix, atol=0, rtol=0)
    assert out.extras["num_passes"].tolist() == [3.0, 3.0]
