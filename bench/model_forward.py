"""CPU forward and forward+backward time of every model family, at batch 4 and sequence length 128.

Two sets of models, each run through the `DiffusionModel` adapter (so block families, SDAR and
LLaDA2.0, get their default block-causal mask) in fp32:

- ``fixture/<family>``: the tiny golden checkpoints ``../shared/fixtures/models/<family>`` (llada,
  dream, sdar, llada2; a family whose folder is absent is reported as skipped) loaded with
  `load_model`, plus ``fixture/tiny``, the built-in tiny model at its default config;
- ``100m/<family>``: one ~100M-parameter configuration per family (tiny, llada, dream, sdar, llada2),
  each the family's ``config.real.json`` (hub field names; the tiny family starts from its default
  config) with the size fields shrunk (:data:`SHRINK`: width 768, 8 layers, 32000-token vocabulary;
  LLaDA2.0 with 16 experts, top-2), randomly initialised under a fixed seed. The exact parameter
  count is reported.

Inputs are random token ids (fixed seed) with about half of the last 64 positions set to the mask
token. ``forward_ms``: one ``model(input_ids)`` in eval mode under ``torch.no_grad()``;
``forward_backward_ms``: in train mode, forward, the mean cross-entropy of the logits at the masked
positions against random targets, and ``.backward()``. Each is the median of ``runs`` timed calls
(``time.perf_counter``) after warm-up: 5 runs for the fixtures, 3 for the 100M models (fewer, and
said so by ``runs``, when a single call is so slow that the budget would be exceeded); the minimum is
reported too (``*_min_ms``), a steadier figure when other processes share the cores.

    python bench/model_forward.py [--threads 2] [--quick] [--families llada,sdar]

``--quick`` runs only the fixtures, with 2 runs each. Progress goes to stderr; the last stdout line is
one JSON object: ``{"device": "cpu", "threads": ..., "batch": 4, "length": 128, "torch": ...,
"results": {"fixture/llada": {"params", "forward_ms", "forward_backward_ms", "runs", ...}, ...,
"100m/llada": {...}}}``. About 2-4 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from system.config import ModelConfig, TinyModelConfig
from system.models.base import DiffusionModel
from system.models.build import new_tiny_model
from system.models.registry import get_family, load_model

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "models"
FAMILIES = ("tiny", "llada", "dream", "sdar", "llada2")
BATCH, LENGTH, MASKED_TAIL = 4, 128, 64
SEED = 0
# Seconds one timed measurement (the runs after warm-up) may take before the number of runs is lowered.
MEASURE_BUDGET_S = 30.0

_IDS = {"mask_token_id": 31999, "eos_token_id": 31998, "pad_token_id": 31998}
# Size fields set over each family's config.real.json: about 100-120M parameters, of which 49.2M are the
# 32000 x 768 embedding and output head.
SHRINK: dict[str, dict] = {
    "tiny": {
        "hidden_size": 768, "num_hidden_layers": 8, "num_attention_heads": 12, "intermediate_size": 2048,
        "vocab_size": 32000, **_IDS, "pad_token_id": 31997,
    },
    "llada": {
        "d_model": 768, "n_heads": 12, "n_kv_heads": 12, "n_layers": 8, "mlp_hidden_size": 2304,
        "vocab_size": 32000, "embedding_size": 32000, "max_sequence_length": 4096, **_IDS,
    },
    "dream": {
        "hidden_size": 768, "num_attention_heads": 12, "num_key_value_heads": 2, "num_hidden_layers": 8,
        "intermediate_size": 2816, "max_window_layers": 8, "vocab_size": 32000, "bos_token_id": 31998,
        **_IDS,
    },
    "sdar": {
        "hidden_size": 768, "num_attention_heads": 12, "num_key_value_heads": 3, "head_dim": 64,
        "num_hidden_layers": 8, "max_window_layers": 8, "intermediate_size": 2304, "vocab_size": 32000,
        "bos_token_id": 31998, **_IDS,
    },
    "llada2": {
        "hidden_size": 768, "num_attention_heads": 12, "num_key_value_heads": 3, "head_dim": 64,
        "rotary_dim": 32, "num_hidden_layers": 8, "max_window_layers": 8, "intermediate_size": 2048,
        "num_experts": 16, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
        "num_shared_experts": 1, "moe_intermediate_size": 192, "first_k_dense_replace": 1,
        "vocab_size": 32000, **_IDS,
    },
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_inputs(vocab: int, mask_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random ids ``[B, L]``, the masked positions (about half of the last 64) and random targets."""
    gen = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, vocab, (BATCH, LENGTH), generator=gen)
    ids[ids == mask_id] = (mask_id + 1) % vocab
    masked = torch.zeros(BATCH, LENGTH, dtype=torch.bool)
    masked[:, LENGTH - MASKED_TAIL:] = torch.rand(BATCH, MASKED_TAIL, generator=gen) < 0.5
    masked[:, -1] = True  # at least one target per row
    ids[masked] = mask_id
    targets = torch.randint(0, vocab, (BATCH, LENGTH), generator=gen)
    return ids, masked, targets


def median_ms(step: Callable[[], object], warmup: int, runs: int) -> tuple[float, float, int]:
    """Median and minimum milliseconds of ``runs`` calls after ``warmup`` calls; ``runs`` is lowered (to
    >= 1) when the warm-up shows that they would take more than MEASURE_BUDGET_S. Returns (median ms,
    min ms, runs used)."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    per_call = (time.perf_counter() - start) / max(warmup, 1)
    runs = max(1, min(runs, int(MEASURE_BUDGET_S / max(per_call, 1e-9))))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, min(times) * 1e3, runs


def measure(model: DiffusionModel, runs: int, warmup: int) -> dict:
    ids, masked, targets = make_inputs(model.spec.vocab_size, model.mask_token_id)

    def forward() -> None:
        with torch.no_grad():
            model(ids)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        logits = model(ids)
        loss = F.cross_entropy(logits[masked].float(), targets[masked])
        loss.backward()

    model.eval()
    fwd_ms, fwd_min, fwd_runs = median_ms(forward, warmup, runs)
    model.train()
    fb_ms, fb_min, fb_runs = median_ms(forward_backward, warmup, runs)
    model.zero_grad(set_to_none=True)
    model.eval()
    out = {
        "params": model.num_parameters(),
        "forward_ms": round(fwd_ms, 2),
        "forward_backward_ms": round(fb_ms, 2),
        "forward_min_ms": round(fwd_min, 2),
        "forward_backward_min_ms": round(fb_min, 2),
        "runs": fwd_runs if fwd_runs == fb_runs else {"forward": fwd_runs, "forward_backward": fb_runs},
        "attention": model.attention,
        "masked_positions": int(masked.sum()),
    }
    if model.block_size is not None:
        out["block_size"] = model.block_size
    return out


def real_config(family: str) -> dict | None:
    """The family's real-size hub config (the tiny family: its default config); None when absent."""
    if family == "tiny":
        return {"architectures": ["TinyDLM"], **TinyModelConfig().model_dump()}
    path = FIXTURES / family / "config.real.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def build_100m(family: str) -> DiffusionModel:
    base = real_config(family)
    assert base is not None
    config = {**base, **SHRINK[family]}
    fam = get_family(family)
    torch.manual_seed(SEED)
    net = fam.build_net(config).float()
    return DiffusionModel(net, fam.spec(config, None))


def run_one(name: str, build: Callable[[], DiffusionModel], runs: int, warmup: int) -> dict:
    start = time.perf_counter()
    model = build()
    built = time.perf_counter() - start
    log(f"{name}: {model.num_parameters():,} parameters (built in {built:.1f} s), timing ...")
    result = measure(model, runs, warmup)
    log(f"{name}: {result}")
    del model
    gc.collect()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="only the tiny fixtures, 2 runs each")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of the families")
    args = parser.parse_args()
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; known: {list(FAMILIES)}")
    torch.set_num_threads(args.threads)
    total = time.perf_counter()
    load_start = os.getloadavg()[0]
    results: dict[str, dict] = {}

    fixture_runs = 2 if args.quick else 5
    for family in families:
        name = f"fixture/{family}"
        if family == "tiny":
            results[name] = run_one(
                name, lambda: new_tiny_model(ModelConfig(), seed=SEED)[0], fixture_runs, warmup=2
            )
            continue
        directory = FIXTURES / family
        if not (directory / "config.json").is_file():
            results[name] = {"skipped": f"fixture folder {directory} is absent"}
            log(f"{name}: skipped, {directory} is absent")
            continue
        results[name] = run_one(
            name, lambda d=directory: load_model(d, dtype="float32"), fixture_runs, warmup=2
        )

    if not args.quick:
        for family in families:
            name = f"100m/{family}"
            if real_config(family) is None:
                where = FIXTURES / family / "config.real.json"
                results[name] = {"skipped": f"{where} is absent"}
                log(f"{name}: skipped, {where} is absent")
                continue
            result = run_one(name, lambda f=family: build_100m(f), runs=3, warmup=1)
            result["config"] = SHRINK[family]
            results[name] = result

    print(json.dumps({
        "bench": "model_forward", "device": "cpu", "threads": args.threads, "batch": BATCH,
        "length": LENGTH, "dtype": "float32", "torch": torch.__version__,
        "total_s": round(time.perf_counter() - total, 1),
        # 1-minute load averages at start and end: other processes on the cores make the times noisy.
        "load_average": [round(load_start, 2), round(os.getloadavg()[0], 2)], "results": results,
    }))


if __name__ == "__main__":
    main()
