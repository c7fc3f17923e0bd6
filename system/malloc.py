"""glibc allocator settings for CPU training processes.

glibc serves an allocation above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) with a
fresh ``mmap`` and returns it with ``munmap`` when freed. CPU tensors of a decode or training step
(logits, activations) are allocated and freed every forward pass, so every step page-faults its
working set in again: measured here on a 2-core machine, a loop of [64, 58, 4096] matmul + softmax
spent 20 of its 23 s in the kernel (5.9 M minor faults). With the mmap threshold and the trim
threshold at 1 GiB the freed blocks stay in the heap for the next step: 10 s, no faults. The price is
that up to the peak working set stays resident between steps (the CUDA caching allocator makes the
same trade on the GPU).

:func:`tune_malloc` applies it in the current process (``mallopt``, effective for later allocations):
the CLI, ``system.driver.train`` and ``learner.sft.run_sft`` call it (for library use without the CLI),
and every Ray actor of a worker group calls it before building its worker.
``STABLEDRL_MALLOC_TUNING=0`` turns it off; it is a no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # 1 GiB: glibc accepts an mmap threshold up to half its heap maximum
ENV = "STABLEDRL_MALLOC_TUNING"

_applied: bool | None = None


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds (module docstring); True when they are in effect.
    Idempotent; never raises."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))
    return _applied
