"""Checkpoint loading by tensor name: sharded checkpoints with an index, shard-by-shard loading onto a
network built on the meta device, and the errors for broken directories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from system.errors import CheckpointError
from system.models import load_model
from system.models.loading import INDEX_FILE, load_weights, weight_files
from system.models.registry import build_on_meta
from tests.conftest import tiny_model


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    model = tiny_model()
    path = tmp_path_factory.mktemp("sharded")
    model.net.save_pretrained(str(path), max_shard_size="40KB")
    return path, model


def test_sharded_checkpoint_loads_shard_by_shard(sharded: tuple[Path, torch.nn.Module]) -> None:
    path, model = sharded
    files = weight_files(path)
    assert (path / INDEX_FILE).is_file() and len(files) > 1
    config = json.loads((path / "config.json").read_text())
    net = build_on_meta(config)
    assert all(p.is_meta for p in net.parameters())
    net = load_weights(net, path, torch.float32)
    x = torch.tensor([[5, 20, 21, 2, 2, 1]])
    assert torch.equal(net.eval()(x), model.net(x))
    assert torch.equal(load_model(path)(x), model(x))


def test_index_naming_a_missing_shard_fails(sharded: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    path, _ = sharded
    broken = tmp_path / "broken"
    shutil.copytree(path, broken)
    victim = weight_files(broken)[0]
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"names shards that are missing: \\['{victim.name}'\\]"):
        weight_files(broken)


def test_bin_weights_are_named_with_the_fix(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="convert them to safetensors"):
        weight_files(tmp_path)


def test_bf16_load_keeps_names_and_casts(sharded: tuple[Path, torch.nn.Module]) -> None:
    path, _ = sharded
    config = json.loads((path / "config.json").read_text())
    net = load_weights(build_on_meta(config), path, torch.bfloat16)
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
