"""Shared test fixtures: tiny models of every family, and the location of the golden fixtures."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from system.config import ModelConfig, TinyModelConfig
from system.models import DiffusionModel, load_model
from system.models.build import new_tiny_model
from system.monitoring.records import read_records

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "models"
REAL_FAMILIES = ("llada", "dream", "sdar", "llada2")
ALL_FAMILIES = ("tiny", "tiny_block", *REAL_FAMILIES)

# One intra-op thread per test process: pytest-xdist runs one process per core, and oversubscribed
# threads are several times slower than one.
torch.set_num_threads(1)


def fixture_dir(family: str) -> Path:
    path = FIXTURES / family
    if not (path / "golden.safetensors").is_file():
        pytest.skip(f"golden fixtures not found at {path} (../shared is absent in a user's clone)")
    return path


def tiny_model(attention: str = "full", block_size: int | None = None, seed: int = 0) -> DiffusionModel:
    cfg = ModelConfig(tiny=TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=64, attention=attention, block_size=block_size))
    model, _ = new_tiny_model(cfg, seed)
    return model.eval()


def family_model(family: str) -> DiffusionModel:
    """A small model of ``family``: the built-in tiny model, or a real-family golden fixture."""
    if family == "tiny":
        return tiny_model()
    if family == "tiny_block":
        return tiny_model("block", 4)
    overrides = {"block_size": 4} if family == "llada2" else None
    return load_model(fixture_dir(family), overrides=overrides).eval()


def poison_loss_input(monkeypatch: pytest.MonkeyPatch, poisoned: Callable[[int], bool]) -> None:
    """Make the learner's new log-probs NaN on the ``loss_input`` calls (1-based count, one per micro-batch
    and inner update) for which ``poisoned(n)`` is true."""
    import learner.learner as learner_module

    real, calls = learner_module.loss_input, {"n": 0}

    def poison(loss, new, old, ref, advantages, group_ids):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        inp = real(loss, new, old, ref, advantages, group_ids)
        if poisoned(calls["n"]):
            inp.new_logp = inp.new_logp * float("nan")
        return inp

    monkeypatch.setattr(learner_module, "loss_input", poison)


def run_records(run_dir: Path, kind: str = "metrics") -> list[dict]:
    """The records of one type (metrics, event, histogram) of a run's metrics.jsonl, in file order."""
    return [r for r in read_records(run_dir / "metrics.jsonl") if r["type"] == kind]
