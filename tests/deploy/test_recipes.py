"""The recipes under configs/recipes/: each validates (tests/test_config.py loads every YAML too), runs
StableDRL with the hyperparameters research/ALGORITHMS.md gives for the StableDRL code, says in a comment
where a value is not published, uses the GPUs it says, keeps each run's files apart, and is listed in
the README's configs table. Also the cluster settings placement by node kind rests on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from system.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "configs" / "recipes"
RUNS = sorted(p for p in RECIPES.glob("*.yaml") if not p.stem.endswith("_base"))
LR = {"gsm8k": 2.0e-6, "math": 2.0e-6, "countdown": 1.0e-6, "sudoku": 1.0e-6, "code": 2.0e-6}


def test_every_task_has_a_llada_recipe_and_the_block_model_one() -> None:
    names = {p.stem for p in RUNS}
    assert {f"llada8b_stabledrl_{task}" for task in LR} | {"sdar8b_stabledrl_math"} <= names


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_recipe_has_the_stabledrl_code_hyperparameters(path: Path) -> None:
    cfg = load_config(path)
    a, r, lr = cfg.algorithm, cfg.rollout, cfg.learner
    assert (a.name, a.kl_beta, a.clip_low, a.clip_high, a.std_normalize) == ("stabledrl", 0.0, None, 5.0, False)
    assert (r.group_size, lr.inner_updates, lr.grad_clip, r.mode, r.max_staleness) == (16, 2, 0.2, "sync", 0)
    assert lr.lr == LR[cfg.data.task] if path.stem.startswith("llada8b") else lr.lr > 0
    if path.stem.startswith("llada8b"):
        d = cfg.decoding
        assert (d.gen_length, d.steps, d.block_length, d.temperature) == (256, 128, 32, 0.9)
        assert (a.estimator, a.num_mc_samples, a.coupling) == ("spg", 2, "independent")
    else:  # the block model: staircase likelihood over its own block size
        assert a.estimator == "staircase_elbo" and cfg.decoding.block_length == 4
    text = path.read_text() + (RECIPES / "llada8b_stabledrl_base.yaml").read_text()
    assert "not published" in text and "stabledrl eval" in text and "time per" in text.lower()


@pytest.mark.parametrize("path", RUNS, ids=lambda p: p.stem)
def test_recipe_uses_eight_gpus_and_its_own_files(path: Path) -> None:
    cfg = load_config(path)
    c = cfg.cluster
    assert c.num_learner_ranks * c.learner_gpus + cfg.rollout.num_actors * c.rollout_gpus == 8
    assert c.learner_backend == "nccl" and cfg.model.device == "cuda" and cfg.model.path.startswith("/mnt/shared/")
    assert cfg.rollout.prompts_per_step % c.num_learner_ranks == 0
    assert cfg.learner.micro_batch_size >= cfg.rollout.group_size  # at least one group per micro-batch
    others = [load_config(p) for p in RUNS if p != path]
    assert cfg.output_dir not in {o.output_dir for o in others}
    assert cfg.rollout.weight_dir not in {o.rollout.weight_dir for o in others}


def test_readme_lists_every_recipe() -> None:
    readme = (REPO / "README.md").read_text()
    named = set(re.findall(r"recipes/([\w.]+\.yaml)", readme))
    for stem, choices, ext in re.findall(r"recipes/(\w*)\{([\w,]+)\}(\.yaml)", readme):  # a_{x,y}.yaml
        named |= {f"{stem}{choice}{ext}" for choice in choices.split(",")}
    assert {p.name for p in RUNS} <= named, "README's configs table lacks a recipe"


def test_custom_resources_are_validated() -> None:
    cfg = load_config(None, ["cluster.learner_resources={learner_node: 1}"])
    assert cfg.cluster.learner_resources == {"learner_node": 1.0} and cfg.cluster.rollout_resources == {}
    for bad in ("cluster.rollout_resources={GPU: 1}", "cluster.reward_resources={reward_node: 0}"):
        with pytest.raises(ConfigError, match=r"_resources .*custom resource names with amounts > 0"):
            load_config(None, [bad])
