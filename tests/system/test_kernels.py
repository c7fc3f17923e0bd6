"""Pinned CPU kernels (system/kernels.py): they take effect, they are refused once torch is loaded, and
with them a machine with AVX-512 computes bit for bit what an AVX2-only machine computes (emulated here by
restricting MKL, ATen and oneDNN to AVX2), while without them the two differ."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
X86 = platform.machine().lower() in ("x86_64", "amd64")
AVX2_ONLY = {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

# A few SFT-like steps of a small MLP with AdamW; prints a digest of the final weights.
TRAIN = """
import hashlib, sys
from system.kernels import pin_cpu_kernels
if sys.argv[1] == "pin":
    pin_cpu_kernels(threads=2)
import torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(64, 172), torch.nn.SiLU(), torch.nn.Linear(172, 111))
opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
x, y = torch.randn(256, 64), torch.randint(0, 111, (256,))
for _ in range(30):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
print(torch.backends.cpu.get_cpu_capability(), hashlib.sha256(b"".join(
    p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()[:16])
"""


def _run(mode: str, extra: dict[str, str]) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*AVX2_ONLY, "MKL_CBWR", "STABLEDRL_PIN_KERNELS")}
    env.update({"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", **extra})
    out = subprocess.run([sys.executable, "-c", TRAIN, mode], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=120, check=True).stdout.split()
    return out[0], out[1]


@pytest.mark.skipif(not X86, reason="the pins are for x86-64")
def test_pinned_kernels_compute_what_an_avx2_machine_computes() -> None:
    capability, pinned = _run("pin", {})
    assert capability == "AVX2"
    assert _run("pin", AVX2_ONLY)[1] == pinned  # pinned on an AVX2-only machine: the same bits
    native_capability, native = _run("native", {})
    if native_capability != "AVX512":
        pytest.skip(f"this machine offers {native_capability}: nothing to pin away")
    assert native != pinned  # unpinned, an AVX-512 machine computes other bits


def test_pins_are_refused_after_torch_and_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch  # noqa: F401  (loaded: too late to pin)

    from system.kernels import pin_cpu_kernels

    monkeypatch.delenv("STABLEDRL_PIN_KERNELS", raising=False)
    with pytest.raises(RuntimeError, match="before torch is imported"):
        pin_cpu_kernels()
    monkeypatch.setenv("STABLEDRL_PIN_KERNELS", "0")
    assert pin_cpu_kernels() == {}
