"""Reading checkpoints from local directories: config.json, safetensors (single file or sharded with an
index), loading weights by the hub's tensor names into a network built on the meta device.

Every failure names the file and the fix; nothing here downloads anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from system.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found") from e
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_config(path: str | Path) -> tuple[Path, dict]:
    """Return (directory, config.json contents), failing clearly on a bad path."""
    directory = Path(path).expanduser()
    if not directory.exists():
        raise CheckpointError(f"model path {directory} does not exist: set model.path to a local checkpoint directory")
    if not directory.is_dir():
        raise CheckpointError(f"model path {directory} is not a directory: point model.path at the checkpoint folder")
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{config_path} is missing: a checkpoint directory needs config.json beside its weights"
        )
    return directory, read_json(config_path)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: the single file, or every shard the index names."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no 'weight_map' object; re-save the checkpoint")
        shards = sorted({str(v) for v in weight_map.values()})
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shards that are missing: {missing[:3]}")
        return [directory / s for s in shards]
    single = directory / SINGLE_FILE
    if single.is_file():
        return [single]
    others = sorted(p.name for p in directory.glob("*.safetensors"))
    if others:
        return [directory / name for name in others]
    bins = sorted(p.name for p in directory.glob("*.bin"))
    hint = f" (found {bins[:3]}: convert them to safetensors)" if bins else ""
    raise CheckpointError(f"{directory} has no weights: expected {SINGLE_FILE} or {INDEX_FILE}{hint}")


def iter_shards(files: list[Path]) -> Iterator[dict[str, torch.Tensor]]:
    """Yield one shard's tensors at a time (so peak memory is one shard, not the model)."""
    for file in files:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                tensors[name] = f.get_tensor(name)
        yield tensors


def checkpoint_names(files: list[Path]) -> dict[str, tuple[int, ...]]:
    names: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                names[name] = tuple(f.get_slice(name).get_shape())
    return names


def _first(items: list[str], n: int = 5) -> str:
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def check_weights(net: nn.Module, directory: Path) -> list[Path]:
    """The checkpoint's weight files, once every tensor ``net`` expects is in them with its shape and no
    other tensor is; a CheckpointError names the first missing, unexpected or misshapen tensor."""
    files = weight_files(directory)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = checkpoint_names(files)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        raise CheckpointError(
            f"{directory}: {len(missing)} tensor(s) missing from the checkpoint: {_first(missing)}; "
            "is this checkpoint of the architecture named in config.json?"
        )
    if unexpected:
        raise CheckpointError(
            f"{directory}: {len(unexpected)} unexpected tensor(s): {_first(unexpected)}; "
            "config.json does not describe these weights"
        )
    for name, shape in expected.items():
        if found[name] != shape:
            raise CheckpointError(
                f"{directory}: tensor {name} has shape {list(found[name])}, expected {list(shape)} "
                "from config.json"
            )
    return files


def load_weights(
    net: nn.Module, directory: Path, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> nn.Module:
    """Load a checkpoint's safetensors into ``net`` (built on the meta device) by tensor name.

    Checks before loading anything: every parameter the network expects is present, no tensor is
    unexpected, and every shape matches. Then loads shard by shard with ``assign=True``.
    """
    files = check_weights(net, directory)
    for shard in iter_shards(files):
        shard = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in shard.items()}
        net.load_state_dict(shard, strict=False, assign=True)
    # Non-persistent buffers (e.g. RoPE tables) are not in the checkpoint: the network rebuilds them.
    reset = getattr(net, "reset_buffers", None)
    if callable(reset):
        reset(device)
    leftover = [n for n, p in net.named_parameters() if p.is_meta]
    leftover += [n for n, b in net.named_buffers() if b.is_meta]
    if leftover:
        raise CheckpointError(f"{directory}: tensors never loaded: {_first(leftover)}")
    return net
