"""bench/gpu.py on the CPU with --quick: every section runs on tiny shapes and reports in the one JSON
line; the RL step says it is skipped where DeepSpeed is absent (a bare GPU box)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from bench import gpu


def test_gpu_bench_runs_on_the_cpu_in_quick_mode(capsys: pytest.CaptureFixture) -> None:
    gpu.main(["--device", "cpu", "--quick", "--sections", "goldens,throughput,decoding"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["bench"] == "gpu" and result["device"] == "cpu"
    for family, row in result["goldens"].items():
        if "skipped" not in row:
            assert row["float32"] < 1e-4, family
            assert row["bfloat16"] < (1.2 if family == "llada2" else 0.3), family
    for row in result["throughput"].values():
        assert "skipped" in row or (row["forward_ms"] > 0 and row["forward_backward_tflops"] > 0)
    assert result["decoding"]["tokens_per_s"] > 0


def test_the_rl_step_is_skipped_and_says_why_without_deepspeed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    assert gpu.rl_step(gpu.torch.device("cpu"), quick=True) == {"skipped": "needs deepspeed (not installed)"}
