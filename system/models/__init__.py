"""dLLM model core shared by actors and learner: the `DiffusionModel` adapter, the model families and
the loader. Importing this package registers the built-in tiny model with transformers' Auto classes."""

from system.models.base import DiffusionModel, KVCache, ModelSpec, block_causal_mask, padding_to_4d
from system.models.loading import CheckpointError
from system.models.registry import available_families, build_on_meta, get_family, load_model

# Register the tiny family with transformers' Auto classes on import.
from system.models import tiny as _tiny  # noqa: E402,F401  isort: skip

__all__ = [
    "CheckpointError",
    "DiffusionModel",
    "KVCache",
    "ModelSpec",
    "available_families",
    "block_causal_mask",
    "build_on_meta",
    "get_family",
    "load_model",
    "padding_to_4d",
]
