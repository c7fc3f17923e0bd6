"""The diffusion_gemma family (transformers' DiffusionGemmaForBlockDiffusion behind our adapter) and its
decoder (actors/decoding/uniform_block.py) against transformers' own ``generate``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from actors.decoding.uniform_block import UniformDecodeConfig, eb_accept, uniform_generate
from system.cli import cmd_model_inspect
from system.errors import CheckpointError
from system.models import load_model
from system.models.diffusion_gemma import DiffusionGemmaAdapter, build_tiny

PLEN, CANVAS = 5, 8


def prompts(bsz: int = 3, pad_first: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts ``[B, 5]`` (row 0 has ``pad_first`` pads) over ids 3..59."""
    ids = torch.randint(3, 60, (bsz, PLEN), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(bsz, PLEN, dtype=torch.long)
    mask[0, :pad_first], ids[0, :pad_first] = 0, 0
    return ids, mask


def canvas_logits(model: DiffusionGemmaAdapter, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    cache = model.encode(ids, mask.bool(), model.new_cache(), torch.arange(PLEN)[None])
    canvas = torch.randint(0, 64, (ids.shape[0], CANVAS), generator=torch.Generator().manual_seed(1))
    keys = torch.cat([mask.bool(), torch.ones(ids.shape[0], CANVAS, dtype=torch.bool)], dim=1)
    pos = torch.arange(PLEN, PLEN + CANVAS)[None]
    return model.denoise(canvas, cache, pos, model.decoder_masks(canvas, cache, keys))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DiffusionGemmaAdapter]:
    model = build_tiny(0)
    path = tmp_path_factory.mktemp("dg")
    model.net.save_pretrained(str(path))
    return path, model


@torch.no_grad()
def test_save_load_round_trip_and_inspect(saved: tuple[Path, DiffusionGemmaAdapter],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path, model = saved
    loaded = load_model(path)
    assert isinstance(loaded, DiffusionGemmaAdapter) and loaded.spec == model.spec
    ids, mask = prompts()
    assert torch.equal(canvas_logits(loaded, ids, mask), canvas_logits(model, ids, mask))
    net = loaded.net
    assert net.lm_head.weight is net.model.decoder.embed_tokens.weight  # ties survive loading
    assert net.model.encoder.language_model.layers[0].self_attn.q_proj.weight is \
        net.model.decoder.layers[0].self_attn.q_proj.weight
    cmd_model_inspect(argparse.Namespace(path=str(path), dtype="float32"))
    out = capsys.readouterr().out
    assert "diffusion_gemma" in out and "block_size" in out


def test_missing_tensor_is_refused(saved: tuple[Path, DiffusionGemmaAdapter], tmp_path: Path) -> None:
    path, _ = saved
    for name in ("config.json", "generation_config.json"):
        (tmp_path / name).write_text((path / name).read_text())
    tensors = load_file(str(path / "model.safetensors"))
    tensors.pop("model.decoder.self_conditioning.pre_norm.weight")
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model(tmp_path)


@torch.no_grad()
def test_transport_state_dict_round_trip(saved: tuple[Path, DiffusionGemmaAdapter]) -> None:
    """The weight transports carry ``net.state_dict()``: both spellings of the shared weights; loading it
    into another model writes each tied tensor and keeps the ties."""
    _, model = saved
    other = build_tiny(seed=1)
    names = set(model.net.state_dict())
    assert {"model.decoder.embed_tokens.weight", "model.encoder.language_model.embed_tokens.weight",
            "lm_head.weight", "model.decoder.self_conditioning.pre_norm.weight"} <= names
    other.net.load_state_dict(model.net.state_dict(), strict=True)
    ids, mask = prompts()
    assert torch.equal(canvas_logits(other, ids, mask), canvas_logits(model, ids, mask))
    assert other.net.lm_head.weight is other.net.model.decoder.embed_tokens.weight


def test_masked_forward_is_refused() -> None:
    with pytest.raises(NotImplementedError, match="no mask token"):
        build_tiny(0)(torch.zeros(1, 4, dtype=torch.long))


def test_eb_accept_by_hand() -> None:
    # Entropies 0 (one-hot), log 2 (two equal), log 4: sorted cumsum - current = 0, 0, log 2.
    big = 50.0
    logits = torch.tensor([[[big, 0, 0, 0], [0, 0, 0, 0], [big, big, 0, 0]]]).float()
    assert eb_accept(logits, 0.5).tolist() == [[True, False, True]]  # log 2 = 0.69 > 0.5 stops the third
    assert eb_accept(logits, 0.7).tolist() == [[True, True, True]]


def boosted_eos(scale: float) -> DiffusionGemmaAdapter:
    """A tiny model whose EOS embedding (tied to its logit row) is scaled, so rows end early."""
    model = build_tiny(0)
    with torch.no_grad():
        model.net.model.decoder.embed_tokens.weight[model.spec.eos_token_id] *= scale
    return model


@pytest.mark.parametrize("case", ["random", "eos", "adaptive_stop"])
@torch.no_grad()
def test_decoder_equals_transformers_generate(case: str) -> None:
    model = {"random": build_tiny(0), "eos": boosted_eos(3.0), "adaptive_stop": boosted_eos(3.0)}[case]
    cfg = UniformDecodeConfig(max_denoising_steps=5)
    if case == "adaptive_stop":  # rows stop at steps 4, 3, 3 (mean entropy of a near-uniform 64-way law < 4.14)
        cfg = UniformDecodeConfig(max_denoising_steps=5, stability_threshold=0, confidence_threshold=4.14)
    ids, mask = prompts(bsz=4 if case == "eos" else 3)
    ours = uniform_generate(model, ids, mask, 3 * CANVAS, cfg, torch.Generator().manual_seed(5))
    torch.manual_seed(5)
    ref = model.net.generate(ids, attention_mask=mask, max_new_tokens=3 * CANVAS, eos_token_id=1, pad_token_id=0,
                             **{k: getattr(cfg, k) for k in ("max_denoising_steps", "t_min", "t_max",
                                                             "stability_threshold", "confidence_threshold")})
    new = ref.sequences[:, PLEN:]
    assert torch.equal(ours.completion_ids[:, :new.shape[1]], new)
    assert bool((ours.completion_ids[:, new.shape[1]:] == 0).all())  # generate stopped: ours pads the rest
    passes = ours.trajectory.steps.sum(-1).float()
    assert torch.allclose(ref.tokens_per_forward, (~ours.filled).sum(-1) / passes)
    if case == "eos":
        assert bool(ours.filled[:, -1].all()) and not bool(ours.filled[:, 0].any())
    if case == "adaptive_stop":
        assert ours.trajectory.steps[:, 0].tolist() == [4, 3, 3]


@torch.no_grad()
def test_trajectory_replays_the_committed_block() -> None:
    """The recorded canvases rebuild every decoder pass: replaying block 0 (self-conditioning = the
    previous replayed step's tempered logits) gives the committed tokens and the recorded acceptances."""
    model, cfg = build_tiny(0), UniformDecodeConfig(max_denoising_steps=4)
    ids, mask = prompts()
    out = uniform_generate(model, ids, mask, 2 * CANVAS, cfg, torch.Generator().manual_seed(3))
    cache = model.encode(ids, mask.bool(), model.new_cache(), torch.arange(PLEN)[None])
    keys = torch.cat([mask.bool(), torch.ones(3, CANVAS, dtype=torch.bool)], dim=1)
    pos, self_cond = torch.arange(PLEN, PLEN + CANVAS)[None], None
    canvases = out.trajectory.canvases[:, 0]
    for i, step in enumerate(range(cfg.max_denoising_steps, 0, -1)):
        masks = model.decoder_masks(canvases[:, i], cache, keys)
        self_cond = model.denoise(canvases[:, i], cache, pos, masks, self_cond) / cfg.temperature(step)
        assert torch.equal(eb_accept(self_cond, cfg.entropy_bound), out.trajectory.accepted[:, 0, i])
    assert torch.equal(self_cond.argmax(-1), out.completion_ids[:, :CANVAS])


def test_gen_length_must_be_whole_canvases() -> None:
    ids, mask = prompts()
    with pytest.raises(ValueError, match="multiple of the canvas length 8"):
        uniform_generate(build_tiny(0), ids, mask, 12, UniformDecodeConfig(), torch.Generator())



def smoke_run(tmp_path: Path, overrides: list[str]) -> None:
    """configs/diffusion_gemma_smoke.yaml, 2 steps: rollouts from the uniform decoder, ratios from
    uniform_elbo (shared draws: exactly 1 at the one inner update), a checkpoint that loads back."""
    from system.config import load_config
    from system.driver import train
    from system.models.diffusion_gemma import save_tiny
    from tests.conftest import REPO, run_records

    save_tiny(tmp_path / "ckpt")
    cfg = load_config(REPO / "configs" / "diffusion_gemma_smoke.yaml", [
        f"model.path={tmp_path / 'ckpt'}", f"output_dir={tmp_path / 'run'}", "rollout.steps=2",
        "learner.inner_updates=1", "logging.progress=false", "logging.wandb_mode=disabled", *overrides])
    result = train(cfg)
    assert result["steps"] == 2 and result["version"] == 2
    records = [r for r in run_records(tmp_path / "run") if "ratio/mean" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["ratio/max"] == pytest.approx(1.0, abs=1e-5) for r in records)
    assert isinstance(load_model(result["checkpoint"]), DiffusionGemmaAdapter)


@pytest.mark.parametrize("algorithm", ["stabledrl", "grpo"])
def test_rl_runs_in_local_mode(tmp_path: Path, algorithm: str) -> None:
    smoke_run(tmp_path, [f"algorithm.name={algorithm}"])


@pytest.mark.slow
def test_stabledrl_runs_in_ray_mode(tmp_path: Path) -> None:
    """The same run with Ray actors on a local cluster (about a minute on 2 cores, mostly Ray start-up)."""
    smoke_run(tmp_path, ["cluster.mode=ray", "cluster.num_cpus=2", "cluster.rollout_cpus=0.5",
                         "cluster.reward_cpus=0.5", "cluster.learner_cpus=1.0"])
