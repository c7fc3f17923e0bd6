"""Masked-diffusion SFT: the loss by hand, the loss falls, the trained tiny model beats chance, the
checkpoint reloads, and bad data fails naming the file and row."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from actors.tasks.synthetic import TextExample
from learner.sft import SFTBatch, encode_examples, load_examples, run_sft, sft_loss
from system.config import load_config
from system.data import DataError
from system.models import load_model
from system.models.tokenizer import build_tokenizer
from tests.conftest import tiny_model


class ConstantLogits(torch.nn.Module):
    """A network whose logits are the same learnable vector at every position."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(vocab))

    def forward(self, input_ids, mask, pos, cache, store):  # type: ignore[no-untyped-def]
        return self.bias.expand(*input_ids.shape, -1)


def test_sft_loss_by_hand() -> None:
    # Uniform logits over V tokens: every masked token costs log V.
    model = tiny_model()
    vocab = model.spec.vocab_size
    uniform = type(model)(ConstantLogits(vocab), model.spec)
    completion = torch.arange(30, 46)[None]  # 16 tokens
    batch = SFTBatch(torch.tensor([[20, 21]]), torch.tensor([[1, 1]]), completion)
    # Recompute t and the mask that seed 0 draws: t = 1 - u (float64), then one uniform per token.
    gen = torch.Generator().manual_seed(0)
    t = float((1.0 - torch.rand(1, generator=gen, dtype=torch.float64)).float())
    masked = int((torch.rand((1, 16), generator=gen) < t).sum())
    assert masked > 0
    # mean: every masked token costs log V, so the mean is log V.
    loss_mean, stats = sft_loss(uniform, batch, torch.Generator().manual_seed(0), "mean")
    assert math.isclose(float(loss_mean), math.log(vocab), rel_tol=1e-5)
    assert math.isclose(stats["mask_rate"], masked / 16, rel_tol=1e-6)
    # elbo: (masked * log V) / (t * L) with L = 16.
    loss_elbo, _ = sft_loss(uniform, batch, torch.Generator().manual_seed(0), "elbo")
    assert math.isclose(float(loss_elbo), masked * math.log(vocab) / (t * 16), rel_tol=1e-5)
    with pytest.raises(ValueError, match="weighting"):
        sft_loss(uniform, batch, torch.Generator(), "sum")


def _config(tmp_path: Path, **extra: str):  # type: ignore[no-untyped-def]
    overrides = {
        "output_dir": str(tmp_path / "run"), "data.task": "copy", "data.num_train": 2000, "data.num_test": 40,
        "decoding.gen_length": 8, "decoding.block_length": 8, "decoding.steps": 8,
        "model.tiny.hidden_size": 64, "model.tiny.num_hidden_layers": 2, "model.tiny.intermediate_size": 172,
        "sft.steps": 150, "sft.batch_size": 32, "sft.lr": 3e-3, "sft.warmup_steps": 10, "sft.eval_examples": 40,
        "logging.progress": False, **extra,
    }
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("sft")
    return tmp, run_sft(_config(tmp))


def test_sft_loss_falls_and_model_beats_chance(trained: tuple[Path, dict]) -> None:
    tmp, summary = trained
    assert summary["loss_last"] < 0.5 * summary["loss_first"]
    metrics = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 150 and all(math.isfinite(m["sft/loss"]) for m in metrics)
    samples = json.loads((tmp / "run" / "samples.json").read_text())
    # Chance for a digit at a given position is 1/10; the trained model copies far better.
    hits = total = 0
    for s in samples:
        total += len(s["target"])
        hits += sum(a == b for a, b in zip(s["output"], s["target"]))
    assert hits / total > 0.3, f"digit accuracy {hits / total:.2f} is not above chance (0.1)"


def test_checkpoint_reloads_with_identical_logits(trained: tuple[Path, dict]) -> None:
    _, summary = trained
    model = load_model(summary["checkpoint"])
    again = load_model(summary["checkpoint"])
    x = torch.tensor([[3, 20, 21, 22, 2, 2]])
    assert torch.equal(model(x), again(x))
    assert (Path(summary["checkpoint"]) / "tokenizer.json").is_file()


def test_completion_longer_than_gen_length_is_rejected() -> None:
    tok = build_tokenizer()
    with pytest.raises(DataError, match="example x1: completion has 12 tokens"):
        encode_examples(tok, [TextExample("x1", "copy", "123456789012")], 8, 1, 64)


def test_jsonl_data_with_a_missing_field_names_file_and_row(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n')
    cfg = _config(tmp_path, **{"data.train_path": str(path)})
    with pytest.raises(DataError, match=r"train.jsonl: row 2: missing field 'completion'"):
        load_examples(cfg.data)
