"""The reference (LLaDA) decoder: schedule, determinism, monotone reveals, trajectory rebuild, random
remasking, early stop, guidance, filtering; the core properties on every model family."""

from __future__ import annotations

import pytest
import torch

from actors.decoding.reference import ReferenceDecoder, filter_logits, select_reveal
from system.config import DecodingConfig
from system.diffusion import positions_from_padding, rebuild_state
from system.models import DiffusionModel
from tests.conftest import ALL_FAMILIES, family_model, tiny_model


class Recorder(DiffusionModel):
    """The same model, remembering every input it was called with."""

    def __init__(self, inner: DiffusionModel, eos_bias: float = 0.0) -> None:
        super().__init__(inner.net, inner.spec)
        self.inputs: list[torch.Tensor] = []
        self.eos_bias = eos_bias

    def forward(self, input_ids, **kwargs):  # type: ignore[no-untyped-def,override]
        self.inputs.append(input_ids.clone())
        logits = super().forward(input_ids, **kwargs)
        if self.eos_bias:
            logits = logits.clone()
            logits[..., self.spec.eos_token_id] += self.eos_bias
        return logits


def params(**kw) -> DecodingConfig:  # type: ignore[no-untyped-def]
    base = {"gen_length": 16, "block_length": 8, "steps": 8, "temperature": 0.0, "stop_at_eos": False,
            "use_cache": False}
    return DecodingConfig(**{**base, **kw})


PROMPTS = [[20, 21, 22, 23, 24], [30, 31], [40, 41, 42, 43, 44, 45, 46]]


def test_schedule_spreads_remainder_to_early_steps() -> None:
    # gen 12, block 6 -> 2 blocks; 8 steps -> 4 per block; 6 tokens over 4 steps -> [2, 2, 1, 1].
    model = tiny_model()
    out = ReferenceDecoder(model, params(gen_length=12, block_length=6, steps=8)).generate(PROMPTS)
    for row in out.unmask_step:
        counts = torch.bincount(row, minlength=8).tolist()
        assert counts == [2, 2, 1, 1, 2, 2, 1, 1]
    # Block 0's tokens are revealed in steps 0-3, block 1's in steps 4-7.
    assert bool((out.unmask_step[:, :6] < 4).all()) and bool((out.unmask_step[:, 6:] >= 4).all())
    assert out.forward_passes == 8 * len(PROMPTS)


def test_greedy_is_deterministic_and_sampling_follows_the_generator() -> None:
    model = tiny_model()
    greedy = ReferenceDecoder(model, params())
    a = greedy.generate(PROMPTS, torch.Generator().manual_seed(1)).completion_ids
    b = greedy.generate(PROMPTS, torch.Generator().manual_seed(2)).completion_ids
    assert torch.equal(a, b)
    sampler = ReferenceDecoder(model, params(temperature=1.0))
    s1 = sampler.generate(PROMPTS, torch.Generator().manual_seed(7))
    s2 = sampler.generate(PROMPTS, torch.Generator().manual_seed(7))
    s3 = sampler.generate(PROMPTS, torch.Generator().manual_seed(8))
    assert torch.equal(s1.completion_ids, s2.completion_ids) and torch.equal(s1.unmask_step, s2.unmask_step)
    assert not torch.equal(s1.completion_ids, s3.completion_ids)


def test_sampling_does_not_touch_global_rng() -> None:
    model = tiny_model()
    state = torch.get_rng_state()
    ReferenceDecoder(model, params(temperature=1.0, remasking="random")).generate(PROMPTS, torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_trajectory_rebuilds_the_states_and_logprobs_the_decoder_saw(family: str) -> None:
    model = Recorder(family_model(family))
    prompts = [[(i * 7 + j) % 90 + 10 for j in range(n)] for i, n in enumerate([5, 2, 7])]
    p = params(temperature=0.7, top_k=50, top_p=0.95)
    out = ReferenceDecoder(model, p).generate(prompts, torch.Generator().manual_seed(3))
    plen = out.prompt_ids.shape[1]
    assert len(model.inputs) == p.steps
    mask_id = model.mask_token_id
    for step, seen in enumerate(model.inputs):
        rebuilt = rebuild_state(out.completion_ids, out.unmask_step, step, mask_id)
        assert torch.equal(seen[:, plen:], rebuilt), f"state before step {step} differs"
        assert torch.equal(seen[:, :plen], out.prompt_ids)
    # Revealed tokens never change: every non-mask token seen at any step is the final token.
    for seen in model.inputs:
        shown = seen[:, plen:] != mask_id
        assert torch.equal(seen[:, plen:][shown], out.completion_ids[shown])
    # Log-probs recomputed at the rebuilt states equal the recorded ones.
    pad = torch.cat([out.prompt_mask, torch.ones_like(out.completion_ids)], dim=1)
    for step in range(p.steps):
        x = torch.cat([out.prompt_ids, rebuild_state(out.completion_ids, out.unmask_step, step, mask_id)], dim=1)
        with torch.no_grad():
            logits = DiffusionModel.forward(model, x, attention_mask=pad, position_ids=positions_from_padding(pad))
        logp = torch.log_softmax(filter_logits(logits[:, plen:].float(), 50, 0.95).double() / 0.7, dim=-1)
        token_logp = logp.gather(-1, out.completion_ids[..., None]).squeeze(-1).float()
        here = out.unmask_step == step
        torch.testing.assert_close(token_logp[here], out.logprobs[here], atol=1e-5, rtol=0)
    assert bool((out.entropies >= 0).all()) and bool((out.unmask_step >= 0).all())


def test_random_remasking_is_uniform_over_masked_positions() -> None:
    # One block of 8, one reveal per step: the position revealed first must be uniform over the 8.
    model = tiny_model()
    n = 800
    p = params(gen_length=8, block_length=8, steps=8, remasking="random")
    out = ReferenceDecoder(model, p).generate([[20, 21, 22]] * n, torch.Generator().manual_seed(0))
    first = (out.unmask_step == 0).float().argmax(-1)
    counts = torch.bincount(first, minlength=8).double()
    expected = n / 8
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 24.3, f"chi-square {chi2:.1f} over 7 dof (p < 0.001): counts {counts.tolist()}"
    # Second reveal: uniform over the 7 positions still masked, never the first one again.
    second = (out.unmask_step == 1).float().argmax(-1)
    assert bool((second != first).all())


def test_rows_of_different_prompt_lengths_decode_as_if_alone() -> None:
    model = tiny_model()
    decoder = ReferenceDecoder(model, params())
    batched = decoder.generate(PROMPTS).completion_ids
    for i, prompt in enumerate(PROMPTS):
        alone = decoder.generate([prompt]).completion_ids
        assert torch.equal(batched[i], alone[0])


def test_rows_stop_once_a_block_is_all_eos() -> None:
    model = Recorder(tiny_model(), eos_bias=100.0)
    p = params(gen_length=24, block_length=8, steps=12, stop_at_eos=True)
    out = ReferenceDecoder(model, p).generate(PROMPTS)
    eos = model.spec.eos_token_id
    assert bool((out.completion_ids == eos).all())
    assert bool(out.filled[:, 8:].all()) and not bool(out.filled[:, :8].any())
    assert out.steps_taken.tolist() == [4, 4, 4]  # block 0 only: 12 steps / 3 blocks
    assert bool((out.unmask_step[:, 8:] == 3).all())
    assert len(model.inputs) == 4 and out.forward_passes == 4 * len(PROMPTS)


def test_classifier_free_guidance_masks_the_prompt_and_doubles_the_passes() -> None:
    model = Recorder(tiny_model())
    out = ReferenceDecoder(model, params(cfg_scale=1.5)).generate(PROMPTS)
    assert out.forward_passes == 2 * 8 * len(PROMPTS)
    x = model.inputs[0]
    cond, uncond = x.chunk(2)
    plen = out.prompt_ids.shape[1]
    real = out.prompt_mask.bool()
    assert bool((uncond[:, :plen][real] == model.mask_token_id).all())
    assert torch.equal(cond[:, :plen], out.prompt_ids)
    plain = ReferenceDecoder(tiny_model(), params()).generate(PROMPTS)
    assert not torch.equal(plain.completion_ids, out.completion_ids)


def test_filter_logits_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.2, 0.1]]))
    # top-k 2 keeps 0.5 and the first... both 0.2 tie at the 2nd value: ties are kept.
    assert torch.isfinite(filter_logits(logits, 2, None)).tolist() == [[True, True, True, False]]
    # top-p 0.6: mass before each sorted token: 0, 0.5, 0.7, 0.9 -> keep the first two.
    kept = torch.isfinite(filter_logits(logits, None, 0.6))
    assert kept.sum().item() == 2 and kept[0, 0].item()
    # top-p 0.5: the mass before the 2nd token is already 0.5 -> keep only the top token.
    assert torch.isfinite(filter_logits(logits, None, 0.5)).tolist() == [[True, False, False, False]]


def test_select_reveal_takes_the_k_most_confident_eligible() -> None:
    conf = torch.tensor([[0.1, 0.9, float("-inf"), 0.5], [0.3, 0.3, 0.2, float("-inf")]])
    chosen = select_reveal(conf, torch.tensor([2, 5]))
    # Row 0: 0.9 and 0.5. Row 1: only 3 eligible positions although k = 5.
    assert chosen.tolist() == [[False, True, False, True], [True, True, True, False]]


def test_block_model_needs_block_length_multiple_of_its_block_size() -> None:
    with pytest.raises(ValueError, match="multiple of the model's block size"):
        ReferenceDecoder(tiny_model("block", 4), params(gen_length=12, block_length=6, steps=4))


@pytest.mark.parametrize("family", ["tiny_block", "sdar", "llada2"])
@pytest.mark.parametrize("remasking", ["low_confidence", "threshold"])
def test_block_kv_cache_decoding_equals_uncached(family: str, remasking: str) -> None:
    model = family_model(family)
    prompts = [[(i * 11 + j) % 90 + 10 for j in range(n)] for i, n in enumerate([5, 2, 8])]
    kw = {"temperature": 0.8, "remasking": remasking, "confidence_threshold": 0.2, "stop_at_eos": True}
    plain = ReferenceDecoder(model, params(**kw)).generate(prompts, torch.Generator().manual_seed(5))
    cached_decoder = ReferenceDecoder(model, params(use_cache=True, **kw))
    assert cached_decoder.use_cache
    cached = cached_decoder.generate(prompts, torch.Generator().manual_seed(5))
    assert torch.equal(plain.completion_ids, cached.completion_ids)
    assert torch.equal(plain.unmask_step, cached.unmask_step)
    torch.testing.assert_close(plain.logprobs, cached.logprobs, atol=1e-5, rtol=0)


def test_threshold_remasking_reveals_confident_positions_together() -> None:
    # With threshold 1e-9 every masked position qualifies: one step per block.
    model = tiny_model()
    out = ReferenceDecoder(model, params(remasking="threshold", confidence_threshold=1e-9)).generate(PROMPTS)
    assert out.unmask_step[:, :8].eq(0).all() and out.unmask_step[:, 8:].eq(1).all()
    assert out.forward_passes == 2 * len(PROMPTS)
    # With threshold 1 (never reached) exactly one position per step is revealed: 8 steps per block.
    out = ReferenceDecoder(model, params(remasking="threshold", confidence_threshold=1.0)).generate(PROMPTS)
    assert sorted(out.unmask_step[0].tolist()) == list(range(16))
