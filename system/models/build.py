"""Build the policy a run starts from: load a checkpoint directory (any family, with its tokenizer)
or, when ``model.path`` is unset, a freshly initialised tiny model with the built-in tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from system.config import ModelConfig
from system.models.base import DiffusionModel
from system.models.loading import CheckpointError
from system.models.registry import load_model, resolve_dtype
from system.models.tiny import FAMILY as TINY
from system.models.tiny import TinyDLMConfig
from system.models.tokenizer import build_tokenizer, special_ids


def spec_overrides(cfg: ModelConfig) -> dict:
    return {"mask_token_id": cfg.mask_token_id, "eos_token_id": cfg.eos_token_id, "block_size": cfg.block_size}


def new_tiny_model(cfg: ModelConfig, seed: int) -> tuple[DiffusionModel, PreTrainedTokenizerBase]:
    """A randomly initialised tiny model (seeded, without touching the global RNG) and its tokenizer."""
    tokenizer = build_tokenizer()
    arch = cfg.tiny.model_dump()
    config = TinyDLMConfig(architectures=["TinyDLM"], **arch, **special_ids(tokenizer))
    fork_devices: list = []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        net = TINY.build_net(config.to_dict())
    net = net.to(device=cfg.device, dtype=resolve_dtype(cfg.dtype, cfg.device))
    spec = TINY.spec(config.to_dict(), None).with_overrides(**spec_overrides(cfg))
    return DiffusionModel(net, spec), tokenizer


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: no tokenizer could be loaded ({e}); save the tokenizer beside the weights"
        ) from e


def build_policy(cfg: ModelConfig, seed: int = 0) -> tuple[DiffusionModel, PreTrainedTokenizerBase]:
    """The model and tokenizer named by the model config."""
    if cfg.path is None:
        return new_tiny_model(cfg, seed)
    model = load_model(cfg.path, dtype=cfg.dtype, device=cfg.device, overrides=spec_overrides(cfg))
    if cfg.gradient_checkpointing:
        model.net.gradient_checkpointing = True
    return model, load_tokenizer(cfg.path)


def save_policy(model: DiffusionModel, tokenizer: PreTrainedTokenizerBase, path: str | Path) -> Path:
    """Save in HF format (weights + config + tokenizer) so ``load_model`` / ``from_pretrained`` read it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not hasattr(model.net, "save_pretrained"):
        raise NotImplementedError(f"saving the {model.spec.arch} family is not supported yet")
    model.net.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path
