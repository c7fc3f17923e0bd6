"""A CPU stand-in for "the model is on CUDA": tensors made without an explicit device must not meet the
model's tensors.

On a GPU, ``torch.arange(n)`` lands on the CPU while the model and the batch are on CUDA, and mixing the
two raises. On a CPU-only machine both are the CPU, so such a bug passes every test. `strict_devices`
restores the distinction: the model and the batch stay on the CPU, the *default* device becomes
``meta`` (so a tensor made without ``device=`` lands elsewhere), and a `TorchFunctionMode` checks every
torch call for tensors on two devices. The mode is needed because PyTorch itself lets a meta tensor
slip into some CPU ops (``scatter_``'s source, an index) and returns garbage instead of raising.

It is stricter than CUDA in two harmless ways: a 0-dim tensor made without a device and an index tensor
on the other device raise too (both cost a host-device copy on a GPU anyway). Random draws are checked
for the generator's device: ``torch.rand(..., generator=g)`` must produce its tensor where ``g`` lives,
which is what CUDA requires of a CUDA tensor.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

#: the default device inside the guard: where a tensor made without ``device=`` goes.
STRAY = torch.device("meta")


class MixedDeviceError(RuntimeError):
    """Raised by `strict_devices` when one torch call sees tensors on two devices."""


def _devices(args: tuple[Any, ...], kwargs: dict[str, Any]) -> set[torch.device]:
    return {leaf.device for leaf in tree_leaves((args, kwargs)) if isinstance(leaf, torch.Tensor)}


def _generator_device(kwargs: dict[str, Any]) -> torch.device | None:
    gen = kwargs.get("generator")
    return gen.device if isinstance(gen, torch.Generator) else None


class _SameDevice(TorchFunctionMode):
    """Raise `MixedDeviceError` when a call's tensor arguments span devices, or when a generator drives
    a draw whose output is on another device."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        devices = _devices(args, kwargs)
        name = getattr(func, "__name__", str(func))
        if len(devices) > 1 and name not in _MOVES:
            raise MixedDeviceError(f"{name}: tensors on {sorted(map(str, devices))} in one call "
                                   "(a tensor made without device=? it would be on the CPU next to CUDA ones)")
        out = func(*args, **kwargs)
        gen_device = _generator_device(kwargs)
        if gen_device is not None and isinstance(out, torch.Tensor) and out.device != gen_device:
            raise MixedDeviceError(f"{name}: a {gen_device} generator drew a tensor on {out.device} "
                                   "(CUDA needs the generator on the tensor's device)")
        return out


# Calls whose job is to move data between devices (their arguments may legitimately differ).
_MOVES = frozenset({"to", "copy_", "cpu", "cuda", "__get__", "__set__"})


@contextmanager
def strict_devices() -> Iterator[None]:
    """Run the body with ``meta`` as the default device and the mixed-device check on. Build the model
    and the inputs before entering (explicitly on the CPU, as a GPU run puts them on CUDA)."""
    with torch.device(STRAY), _SameDevice():
        yield
