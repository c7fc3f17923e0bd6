"""Model families by name, and `load_model`: a local checkpoint directory -> `DiffusionModel`.

A family module (``system/models/<name>.py``) defines ``FAMILY = Family(...)``: the ``architectures``
strings of config.json it accepts, ``build_net(config) -> nn.Module`` (called under a device context,
the meta device when loading), and ``spec(config, directory) -> ModelSpec`` with the per-family
defaults for special ids and block size. A family may supply ``load_net`` to load differently
(the built-in tiny model uses transformers' ``from_pretrained``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from system.models.base import DiffusionModel, ModelSpec
from system.models.loading import CheckpointError, load_weights, read_config

# name -> module; imported lazily so that a family's dependencies load only when it is used.
FAMILY_MODULES: dict[str, str] = {
    "tiny": "system.models.tiny",
    "llada": "system.models.llada",
    "dream": "system.models.dream",
    "sdar": "system.models.sdar",
    "llada2": "system.models.llada2",
    "diffusion_gemma": "system.models.diffusion_gemma",
}


@dataclass(frozen=True)
class Family:
    name: str
    architectures: tuple[str, ...]
    build_net: Callable[[dict], nn.Module]
    spec: Callable[[dict, Path | None], ModelSpec]
    load_net: Callable[[Path, dict, torch.dtype, str], nn.Module] | None = None
    adapter: type[DiffusionModel] = DiffusionModel  # a family whose contract differs subclasses it


def get_family(name: str) -> Family:
    if name not in FAMILY_MODULES:
        raise KeyError(f"unknown model family {name!r}; known: {sorted(FAMILY_MODULES)}")
    return importlib.import_module(FAMILY_MODULES[name]).FAMILY


def available_families() -> dict[str, Family]:
    out = {}
    for name in FAMILY_MODULES:
        try:
            out[name] = get_family(name)
        except ModuleNotFoundError:
            continue
    return out


def family_for_config(config: dict, where: str = "config.json") -> Family:
    archs = config.get("architectures") or []
    families = available_families()
    for family in families.values():
        if any(a in family.architectures for a in archs):
            return family
    known = sorted(a for f in families.values() for a in f.architectures)
    raise CheckpointError(
        f"{where}: architecture {archs or config.get('model_type')!r} is not one stabledrl implements; "
        f"known architectures: {known}"
    )


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device) -> torch.dtype:
    """``auto`` -> fp32 on CPU, bf16 on GPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(table)} or 'auto'")
    return table[dtype]


def load_model(
    path: str | Path,
    *,
    dtype: str | torch.dtype | None = "auto",
    device: str | torch.device = "cpu",
    overrides: dict[str, Any] | None = None,
) -> DiffusionModel:
    """Load a local checkpoint directory of any known family as a `DiffusionModel`.

    ``overrides`` sets ModelSpec fields (mask_token_id, block_size, ...) over the family defaults.
    """
    directory, config = read_config(path)
    family = family_for_config(config, str(directory / "config.json"))
    torch_dtype = resolve_dtype(dtype, device)
    # Overrides act as config.json values, so they also rescue a checkpoint whose own ids are unusable.
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    spec = family.spec({**config, **given}, directory).with_overrides(**given)
    if family.load_net is not None:
        net = family.load_net(directory, config, torch_dtype, str(device))
    else:
        with torch.device("meta"):
            net = family.build_net(config)
        net = load_weights(net, directory, torch_dtype, device)
    net.eval()
    return family.adapter(net, spec)


def build_on_meta(config: dict) -> nn.Module:
    """Build a family's network on the meta device from a config dict (no memory, no weights)."""
    family = family_for_config(config)
    with torch.device("meta"):
        return family.build_net(config)
