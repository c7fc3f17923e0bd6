"""`stabledrl demo` end to end at a tiny budget: data, SFT (then cached), eval, RL, eval, report, the
final JSON line; the Ray path with wandb offline in the slow tier; the acceptance summary of
bench/demo_seeds.py on hand-written numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.demo_seeds import by_sft_seed, summarize
from system.demo import rl_config, run_demo, sft_config

REPO = Path(__file__).resolve().parents[2]
SFT = ["sft.steps=12", "sft.eval_examples=4", "sft.warmup_steps=2", "data.num_train=48", "data.num_test=8"]
RL = ["rollout.steps=2", "rollout.prompts_per_step=2", "rollout.group_size=4", "learner.micro_batch_size=8",
      "logging.progress=false"]


def test_demo_local_then_cached_sft(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = [*RL, "cluster.mode=local", "logging.wandb_mode=disabled"]
    result = run_demo("sudoku", tmp_path, SFT, overrides, limit=4, seed=1, sft_seed=3)
    assert result["steps"] == 2 and result["seed"] == 1 and result["sft_seed"] == 3 and result["test_examples"] == 4
    assert not result["sft_cached"] and result["cluster"] == "local" and result["algorithm"] == "stabledrl"
    for key in ("score_before", "score_after"):
        assert 0.0 <= result[key] <= 1.0
    assert Path(result["report"]).is_file() and (tmp_path / "rl" / "report.html").is_file()
    table = capsys.readouterr().out
    assert "after SFT" in table and "after RL" in table and "score (mean reward)" in table
    # the RL run started from the SFT checkpoint (trained with seed 3) and trained with its own seed
    (sft_dir,) = (tmp_path / "sft").glob("sft-*")
    assert yaml.safe_load((sft_dir / "config.yaml").read_text())["seed"] == 3
    rl_config = yaml.safe_load((tmp_path / "rl" / "config.yaml").read_text())
    assert rl_config["model"]["path"] == str(sft_dir / "final") and rl_config["seed"] == 1

    weights = next((sft_dir / "final").glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    # another RL seed from the same SFT checkpoint, through a shared cache directory
    cache = tmp_path / "shared-sft"
    sft_dir.parent.rename(cache)
    again = run_demo("sudoku", tmp_path / "other", SFT, overrides, limit=4, seed=2, sft_seed=3, sft_cache=cache)
    assert again["sft_cached"] and (cache / sft_dir.name / "final" / weights.name).stat().st_mtime_ns == stamp
    assert again["score_before"] == result["score_before"]  # the same checkpoint, greedy decoding
    assert yaml.safe_load((tmp_path / "other" / "rl" / "config.yaml").read_text())["seed"] == 2
    # another SFT seed is another SFT run: the cache is keyed by the whole config
    other = run_demo("sudoku", tmp_path / "other", SFT, overrides, limit=4, seed=2, sft_seed=4, sft_cache=cache)
    assert not other["sft_cached"] and len(list(cache.glob("sft-*"))) == 2


@pytest.mark.parametrize("task", ["sudoku", "countdown"])
def test_each_puzzle_task_has_an_sft_stage_whose_prompts_and_targets_fit(task: str) -> None:
    """--task picks configs/demo_<task>_sft.yaml (the synthetic tasks: tiny_sft.yaml); its left-truncated
    prompts keep the puzzle, and gen_length holds the whole SFT target with room for the end."""
    from actors.tasks import load_task_data
    from actors.tasks.prompts import PromptStyle, prompt_ids
    from learner.sft import sft_target
    from system.demo import sft_config
    from system.models.build import build_tokenizer

    cfg = sft_config(task, ["data.num_train=8", "data.num_test=8"])
    assert cfg.data.task == task and sft_config("add", []).data.task == "add"
    tok = build_tokenizer()
    train, _ = load_task_data(cfg.data)
    for ex in train:
        prompt = tok.decode(prompt_ids(tok, ex, PromptStyle.from_config(cfg.data), cfg.data.max_prompt_length))
        instance = f"{ex.reference['numbers']}\nTarget: {ex.reference['target']}" if task == "countdown" \
            else ex.reference["puzzle"]
        assert instance in prompt, prompt
        assert len(tok(sft_target(ex))["input_ids"]) < cfg.decoding.gen_length


def test_acceptance_summary_by_hand() -> None:
    runs = [{"seed": 0, "score_before": 0.50, "score_after": 0.60},
            {"seed": 1, "score_before": 0.52, "score_after": 0.58},
            {"seed": 2, "score_before": 0.51, "score_after": 0.62}]
    s = summarize(runs)
    assert s["gain"] == pytest.approx([0.10, 0.06, 0.11])
    assert s["mean_gain"] == pytest.approx(0.09)
    assert s["spread_after"] == pytest.approx(0.04) and s["spread_before"] == pytest.approx(0.02)
    assert s["beats_spread"]
    # gains 0.10, 0.06, 0.19: a mean gain inside the spread of the after-RL scores does not count
    runs[2]["score_after"] = 0.70
    s = summarize(runs)
    assert s["spread_after"] == pytest.approx(0.12) and s["mean_gain"] == pytest.approx(0.35 / 3)
    assert not s["beats_spread"]
    # nor does a seed that lost ground
    runs[2]["score_after"], runs[1]["score_after"] = 0.62, 0.51
    assert not summarize(runs)["beats_spread"]


def test_grid_acceptance_by_hand() -> None:
    """Two SFT seeds x two RL seeds: gains and RL spreads per SFT seed, the 5x criterion."""
    runs = [{"seed": 0, "sft_seed": 0, "score_before": 0.30, "score_after": 0.52},
            {"seed": 1, "sft_seed": 0, "score_before": 0.30, "score_after": 0.50},  # mean gain 0.21, spread 0.02
            {"seed": 0, "sft_seed": 1, "score_before": 0.40, "score_after": 0.55},
            {"seed": 1, "sft_seed": 1, "score_before": 0.40, "score_after": 0.50}]  # mean gain 0.125, spread 0.05
    per = by_sft_seed(runs, spread_factor=5.0)
    assert per["0"]["mean_gain"] == pytest.approx(0.21) and per["0"]["rl_spread"] == pytest.approx(0.02)
    assert per["0"]["gain_over_spread"] == pytest.approx(10.5) and per["0"]["gain_beats_spread"]
    assert per["1"]["gain"] == pytest.approx([0.15, 0.10]) and per["1"]["gain_over_spread"] == pytest.approx(2.5)
    assert not per["1"]["gain_beats_spread"]


def test_rl_stage_takes_the_sft_data_unless_set_explicitly(tmp_path: Path) -> None:
    sft = sft_config("sudoku", ["data.num_train=64"])
    cfg = rl_config(sft, "ckpt", tmp_path, [])
    assert cfg.data.num_train == 64 and cfg.decoding.gen_length == sft.decoding.gen_length
    cfg = rl_config(sft, "ckpt", tmp_path, ["data.num_train=32", "decoding.steps=8"])
    assert cfg.data.num_train == 32 and cfg.data.task == "sudoku" and cfg.decoding.steps == 8


@pytest.mark.slow
def test_demo_command_through_ray_with_wandb_offline(tmp_path: Path) -> None:
    """The README's command at a tiny budget: a local Ray cluster on 127.0.0.1 (configs/demo_rl.yaml),
    wandb offline, and one JSON object as the last stdout line."""
    cmd = [sys.executable, "-m", "system.cli", "demo", "--run-dir", str(tmp_path), "--limit", "4"]
    cmd += [a for o in RL for a in ("--set", o)] + [a for o in SFT for a in ("--sft-set", o)]
    env = {**os.environ, "WANDB_SILENT": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["cluster"] == "ray" and result["wandb"] == "offline" and result["steps"] == 2
    assert {"score_before", "score_after", "steps", "seconds"} <= set(result)
    assert list((tmp_path / "rl" / "wandb").glob("offline-run-*")), "no offline wandb run was written"
    assert Path(result["report"]).is_file()
