"""Pinned CPU kernels, so that a CPU run's numbers travel between x86-64 machines.

PyTorch's CPU wheel picks its kernels by what the processor offers: ATen's vectorised loops by ISA
(AVX-512 where present, else AVX2), MKL's GEMM by processor and ISA, oneDNN by ISA, and many reductions
split their work by the number of threads. Each choice changes the order of floating-point additions,
and a training run compounds the last-bit differences: the demo's SFT stage scored 0.5336 on one
machine and 0.7434 on another (seed 0, same code and wheel; README, "The two commands"). Pinning every
choice to what any x86-64 machine since 2013 offers makes the arithmetic the same everywhere:

- ``ATEN_CPU_CAPABILITY=avx2``: ATen's AVX2 kernels, not AVX-512 where the processor has it;
- ``MKL_CBWR=AVX2,STRICT``: MKL's conditional numerical reproducibility (the same code path on every
  processor with AVX2, strict bitwise results);
- ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN's kernels likewise;
- ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` = ``threads``: the same split of every parallel loop.

They must be set before torch is imported (``pin_cpu_kernels`` refuses afterwards) and are inherited by
the processes a run starts (Ray's workers included). ``STABLEDRL_PIN_KERNELS=0`` leaves the machine's own
choice. Other architectures (ARM) are left alone: no pin makes them agree with x86-64.
"""

from __future__ import annotations

import os
import platform
import sys

PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def pinned_environment(threads: int) -> dict[str, str]:
    """The variables ``pin_cpu_kernels`` sets (empty off x86-64)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return {}
    return {**PINNED, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def pin_cpu_kernels(threads: int = 2) -> dict[str, str]:
    """Set the pinned kernel choices in this process's environment; returns what was set (nothing when
    ``STABLEDRL_PIN_KERNELS=0``). A variable the user set already is kept.

    Raises:
        RuntimeError: torch is already imported (the choices would not take effect).
    """
    if os.environ.get("STABLEDRL_PIN_KERNELS", "1") == "0":
        return {}
    if "torch" in sys.modules:
        raise RuntimeError("pin_cpu_kernels must run before torch is imported")
    chosen = {k: v for k, v in pinned_environment(threads).items() if k not in os.environ}
    os.environ.update(chosen)
    return chosen
