"""Fast decoding (issue 18): the parallel unmasking rules by hand, the approximate caches against the full
pass, batched decoding equal to per-row decoding in every mode, the mode recorded, the log-ratio at
theta = theta_old per mode, and the config refusing AGRPO's cached old log-probs under an approximate cache."""

from __future__ import annotations

import pytest
import torch

from actors.decoding.caches import WindowCache
from actors.decoding.fast import FastDecoder, build_decoder
from actors.decoding.modes import decoder_mode, is_approximate
from actors.decoding.parallel import factor_count, threshold_count
from learner.estimators import batch_from_decode
from learner.estimators.agrpo import AgrpoEstimator
from system.config import Config, DecodingConfig
from system.models import DiffusionModel
from system.models.base import KVCache
from tests.conftest import family_model, tiny_model

INF = float("-inf")
FULL_MODES = [(cache, rule) for cache in ("none", "prefix", "dual") for rule in ("low_confidence", "threshold", "factor")]
PROMPTS = [[20, 21, 22, 23, 24], [30, 31], [40, 41, 42, 43, 44, 45, 46], [50 + j for j in range(12)]]


class LateEos(DiffusionModel):
    """The same model with EOS made certain from absolute position ``start`` on: rows of different prompt
    lengths fill a whole block with EOS (and stop) after different blocks."""

    def __init__(self, inner: DiffusionModel, start: int = 12) -> None:
        super().__init__(inner.net, inner.spec)
        self.start = start

    def forward(self, input_ids, **kwargs):  # type: ignore[no-untyped-def,override]
        logits = super().forward(input_ids, **kwargs).clone()
        late = (kwargs["position_ids"] >= self.start).to(logits.dtype)
        logits[..., self.spec.eos_token_id] += 100.0 * late
        return logits


def params(**kw) -> DecodingConfig:  # type: ignore[no-untyped-def]
    base = {"gen_length": 32, "block_length": 8, "steps": 16, "temperature": 0.0, "stop_at_eos": True,
            "use_cache": False, "confidence_threshold": 0.5, "parallel_factor": 1.0}
    return DecodingConfig(**{**base, **kw})


def test_threshold_and_factor_counts_by_hand() -> None:
    conf = torch.tensor([[0.95, 0.7, 0.92, INF], [0.1, 0.2, INF, INF]], dtype=torch.float64)
    # threshold 0.9: row 0 has 0.95 and 0.92; row 1 none -> at least 1.
    assert threshold_count(conf, 0.9).tolist() == [2, 1]
    # factor 1.0, row 0 sorted 0.95, 0.92, 0.7: n=1: 2 * 0.05 = 0.1 < 1; n=2: 3 * 0.08 = 0.24 < 1;
    # n=3: 4 * 0.3 = 1.2 >= 1 -> 2. Row 1: n=1: 2 * 0.8 = 1.6 -> none -> at least 1.
    assert factor_count(conf, 1.0).tolist() == [2, 1]
    # factor 1.3 lets row 0's third in (1.2 < 1.3), never the ineligible fourth.
    assert factor_count(conf, 1.3).tolist() == [3, 1]


@pytest.mark.parametrize("family", ["tiny", "llada", "dream"])
@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_a_window_over_unchanged_tokens_equals_the_full_pass(family: str, cache: str) -> None:
    """Right after the refresh the stored keys are exact, so a window call must reproduce the full pass:
    the cache layout, positions, padding mask and (Dream) the one-position lead are right."""
    model = family_model(family)
    x = torch.tensor([[5, 6, 7, 8, 9, 0, 0, 0, 0, 0, 0, 0]]).repeat(2, 1)
    x[:, 5:] = model.mask_token_id
    attn = torch.ones_like(x)
    attn[1, :2] = 0  # a left-padded row
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    stored = KVCache()
    with torch.no_grad():
        full = model(x, attention_mask=attn, position_ids=pos, cache=stored, store_cache=True)
        lead = 1 if model.spec.logits_shift else 0
        lo, hi = 7, 11
        q_lo, q_hi = lo - lead, hi if cache == "dual" else x.shape[1]
        part = model(x[:, q_lo:q_hi], attention_mask=attn, position_ids=pos[:, q_lo:q_hi],
                     cache=WindowCache(stored, q_lo, q_hi, lead))
    torch.testing.assert_close(part[:, lead:lead + hi - lo], full[:, lo:hi], atol=2e-5, rtol=1e-4)


def test_a_shifted_family_refuses_a_plain_cache() -> None:
    model = family_model("dream")
    with pytest.raises(ValueError, match="shifted-logit"):
        cache = KVCache()
        model(torch.tensor([[5, 6]]), cache=cache, store_cache=True)  # from position 0: allowed
        model(torch.tensor([[7]]), cache=cache)


@pytest.mark.parametrize(("cache", "rule"), FULL_MODES)
def test_batched_equals_each_row_alone_full_attention(cache: str, rule: str) -> None:
    model = LateEos(tiny_model())
    decoder = build_decoder(model, params(cache=cache, remasking=rule))
    assert isinstance(decoder, FastDecoder) == (cache != "none")
    batched = decoder.generate(PROMPTS)
    # Rows stop after different blocks: the 12-token prompt after block 0, the 2-token one after block 2.
    assert len(set(batched.steps_taken.tolist())) > 1 and bool(batched.filled.any())
    for i, prompt in enumerate(PROMPTS):
        alone = decoder.generate([prompt])
        assert torch.equal(batched.completion_ids[i], alone.completion_ids[0]), (cache, rule, i)
        assert torch.equal(batched.unmask_step[i], alone.unmask_step[0])
        torch.testing.assert_close(batched.logprobs[i], alone.logprobs[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("rule", ["low_confidence", "threshold", "factor"])
def test_batched_equals_each_row_alone_block_cache(rule: str) -> None:
    model = LateEos(tiny_model("block", 4))
    decoder = build_decoder(model, params(use_cache=True, remasking=rule, cache="dual"))  # cache: n/a here
    assert decoder.mode == f"{rule}/block_cache"
    batched = decoder.generate(PROMPTS)
    for i, prompt in enumerate(PROMPTS):
        alone = decoder.generate([prompt])
        assert torch.equal(batched.completion_ids[i], alone.completion_ids[0])
        assert torch.equal(batched.unmask_step[i], alone.unmask_step[0])


def test_parallel_rules_and_caches_cut_the_work() -> None:
    """EOS certain everywhere: a parallel rule reveals a block per step; a cache runs fewer tokens."""
    model = LateEos(tiny_model(), start=0)
    tokens = {}
    for cache, rule in FULL_MODES:
        out = build_decoder(model, params(cache=cache, remasking=rule, stop_at_eos=False)).generate(PROMPTS)
        assert out.decoder == f"{rule}/{'no' if cache == 'none' else cache}_cache"
        if rule != "low_confidence":
            assert bool((out.steps_taken == 4).all())  # 4 blocks, one step each
        tokens[cache, rule] = out.forward_tokens
    assert tokens["dual", "low_confidence"] < tokens["prefix", "low_confidence"] < tokens["none", "low_confidence"]
    assert tokens["none", "threshold"] < tokens["none", "low_confidence"]


def test_mode_names_and_which_are_approximate() -> None:
    assert decoder_mode("full", params(cache="dual", remasking="threshold")) == "threshold/dual_cache"
    assert decoder_mode("block", params(cache="dual", use_cache=True)) == "low_confidence/block_cache"
    assert is_approximate("factor/prefix_cache") and not is_approximate("threshold/block_cache")
    assert not is_approximate("low_confidence/no_cache")


def log_ratio(model: DiffusionModel, decoding: DecodingConfig) -> float:
    """Largest |learner log-prob - recorded log-prob| at theta = theta_old over every scored step."""
    out = build_decoder(model, decoding).generate(PROMPTS, torch.Generator().manual_seed(0))
    est = AgrpoEstimator(num_steps=32, temperature=decoding.temperature)
    batch = batch_from_decode(out)
    new, old = est.estimate_pair(model, None, batch, torch.Generator().manual_seed(1))
    return float((new.token_logp - old.token_logp).abs()[new.token_mask].max())


@pytest.mark.parametrize(("cache", "rule"), [("none", "threshold"), ("none", "factor"), ("prefix", "threshold"),
                                             ("dual", "low_confidence")])
def test_the_learner_matches_exact_modes_and_not_approximate_ones(cache: str, rule: str) -> None:
    gap = log_ratio(tiny_model(), params(cache=cache, remasking=rule, temperature=1.0, stop_at_eos=False,
                                         confidence_threshold=0.02))
    if cache == "none":
        assert gap < 1e-4
    else:  # stale keys: the recorded log-probs are not the policy's
        assert 1e-4 < gap < 5.0


def test_config_refuses_cached_agrpo_old_logprobs_under_an_approximate_cache() -> None:
    algo = {"estimator": "agrpo", "agrpo_old_logprobs": "cached"}
    with pytest.raises(ValueError, match="agrpo_old_logprobs: recompute"):
        Config(decoding={"cache": "dual"}, algorithm=algo)
    Config(decoding={"cache": "dual"}, algorithm={**algo, "agrpo_old_logprobs": "recompute"})
    Config(decoding={"cache": "none"}, algorithm=algo)
    with pytest.raises(ValueError, match="cfg_scale"):
        DecodingConfig(cache="prefix", cfg_scale=1.0)


def test_the_bench_reports_every_mode_against_the_reference() -> None:
    from bench.decode_fast import MODES, main

    out = main(["--lengths", "32", "--batch", "2", "--repeats", "1", "--train-steps", "2", "--threads", "1"])
    modes = out["modes"]
    assert set(modes) == set(MODES) and modes["reference"]["speedup"] == 1.0
    for name, row in modes.items():
        assert {"tokens_per_s", "speedup", "score_delta", "agreement", "log_ratio_abs_max"} <= set(row)
        exact = "cache" not in row["decoder"] or row["decoder"].endswith("no_cache")
        assert (row["log_ratio_abs_max"] < 1e-4) == exact, name
    # The dual cache runs a block per step instead of the sequence.
    assert modes["dual"]["forward_tokens_per_token"] < modes["reference"]["forward_tokens_per_token"]


def test_rollouts_record_the_mode_that_decoded_them() -> None:
    from actors.rollout_worker import RolloutWorker
    from actors.tasks import load_task_data
    from system.config import load_config
    from tests.conftest import REPO

    cfg = load_config(REPO / "configs" / "fast_decoding_smoke.yaml")
    worker = RolloutWorker(cfg)
    train, _ = load_task_data(cfg.data)
    (group,) = worker.generate(train[:1], group_size=2)
    for rollout in group.rollouts:
        assert rollout.decoder == "threshold/dual_cache" and rollout.decode_stats["approximate_cache"] == 1.0
