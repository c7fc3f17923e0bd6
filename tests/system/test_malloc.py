"""system/malloc.py: glibc's thresholds raised in this process (fewer page faults per step), the
opt-out variable, and a no-op elsewhere."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import resource, sys, torch
    from system.malloc import tune_malloc
    applied = tune_malloc() if sys.argv[1] == "tune" else False
    x = torch.randn(16, 64, 64)
    w = torch.randn(64, 10240)  # each product is 40 MiB: above glibc's largest dynamic mmap threshold (32 MiB)
    for _ in range(10):  # warm-up: the tuned heaps (one per thread arena) grow to hold blocks of these sizes
        (x @ w).softmax(-1).sum()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):  # the steady state
        (x @ w).softmax(-1).sum()
    print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _probe(mode: str, env: dict[str, str] | None = None) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_process_stops_faulting_its_tensors_in() -> None:
    import os

    tuned, faults_tuned = _probe("tune")
    plain, faults_plain = _probe("plain")
    assert tuned and not plain
    # without the tuning, 10 steps x 2 tensors of 40 MiB (10240 pages each) are faulted in every time
    assert faults_plain > 10 * 2 * 10240
    assert faults_tuned < faults_plain / 5  # steady state: (almost) nothing faulted in again
    off, _ = _probe("tune", {**os.environ, "STABLEDRL_MALLOC_TUNING": "0"})
    assert not off
