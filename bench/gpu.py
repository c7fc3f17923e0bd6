"""One GPU, one JSON line: what a user's first hour on a single accelerator would measure (issue 17).

Sections (each reports ``{"skipped": reason}`` instead of failing when something it needs is absent):

- ``goldens``: every family's golden fixture (``../shared/fixtures/models``) on the device in fp32 and
  bf16, the largest distance to the original's fp32 logits on the staircase case (fp32 should be ~1e-5;
  bf16 ~0.1, LLaDA2 ~1.0 from 2-3 tokens whose experts flip, as in the original, see tests/models/test_bf16.py);
- ``throughput``: each family's real shape (``config.real.json``, built with `build_on_meta`, random bf16
  weights) on ``batch x length`` tokens: forward and forward + backward ms and TFLOP/s, counted as
  2 (forward) or 6 (forward + backward) x the parameters a token passes through (embeddings excluded,
  MoE experts weighted by top_k / num_experts) + the attention matmuls (4 x L x width per token and
  layer, x3 with backward);
- ``decoding``: the reference decoder on the LLaDA-8B shape (random bf16 weights), L = 256, block 32,
  128 steps, 8 rows: tokens per second;
- ``rl_step``: three RL steps of a mid-size tiny-family model in local mode (configs/smoke.yaml with a
  wider model), seconds per phase (generation, reward, learner, sync) of the steps after the first; needs
  DeepSpeed (and pydantic, as every section but ``goldens`` and ``throughput`` does not).

    python bench/gpu.py [--device cuda] [--quick] [--sections goldens,throughput,decoding,rl_step]

``--quick`` shrinks every shape (a 2-layer, width-64 version of each family, L = 16 decoding, a 1-step
RL run) so that ``--device cpu --quick`` finishes in seconds: the test suite runs it. The full run is
sized for under 8 minutes on one H200. It needs PyTorch, transformers, safetensors, pyyaml and pydantic
(see the README's Benchmarks section for the wheels to bring to a box without registry access); Ray,
DeepSpeed and wandb are optional. Progress goes to stderr; the last stdout line is the JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from system.models.base import DiffusionModel  # noqa: E402
from system.models.registry import build_on_meta, family_for_config, load_model  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures" / "models"
FAMILIES = ("llada", "dream", "sdar", "llada2")
SECTIONS = ("goldens", "throughput", "decoding", "rl_step")
# Size fields over config.real.json for --quick: two layers of width 64, a 512-token vocabulary.
_IDS = {"vocab_size": 512, "mask_token_id": 503, "eos_token_id": 500, "pad_token_id": 500}
QUICK: dict[str, dict] = {
    "llada": {"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128,
              "embedding_size": 512, **_IDS},
    "dream": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 2,
              "intermediate_size": 128, "max_window_layers": 2, "bos_token_id": 500, **_IDS},
    "sdar": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
             "num_hidden_layers": 2, "max_window_layers": 2, "intermediate_size": 128, "bos_token_id": 500, **_IDS},
    "llada2": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
               "rotary_dim": 8, "num_hidden_layers": 2, "max_window_layers": 2, "intermediate_size": 128,
               "num_experts": 8, "num_experts_per_tok": 2, "n_group": 4, "topk_group": 2,
               "num_shared_experts": 1, "moe_intermediate_size": 32, "first_k_dense_replace": 1, **_IDS},
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def significant(x: float) -> float:
    return float(f"{x:.4g}")


def timed(step: Callable[[], object], device: torch.device, runs: int) -> float:
    """Median seconds of ``runs`` calls after one warm-up call."""
    step()
    sync(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----------------------------------------------------------------------------- goldens


def goldens(device: torch.device) -> dict:
    """Max |logits - original fp32 golden| per family and dtype, staircase case, on ``device``."""
    from safetensors.torch import load_file

    out: dict = {}
    for family in FAMILIES:
        path = FIXTURES / family
        if not (path / "golden.safetensors").is_file():
            out[family] = {"skipped": f"no fixtures at {path}"}
            continue
        g = load_file(str(path / "golden.safetensors"), device=str(device))
        overrides = {"block_size": 4} if family == "llada2" else None
        row = {}
        for dtype in ("float32", "bfloat16"):
            model = load_model(path, dtype=dtype, overrides=overrides).to(device).eval()
            with torch.no_grad():
                logits = model.net(g["staircase_input_ids"], g["staircase_mask"], g["staircase_position_ids"],
                                   None, False)
            row[dtype] = round(float((logits.float() - g["logits_staircase"]).abs().max()), 6)
        out[family] = row
        log(f"goldens {family}: {row}")
    return out


# ----------------------------------------------------------------------------- throughput


def real_shape(family: str, quick: bool) -> dict:
    config = json.loads((FIXTURES / family / "config.real.json").read_text(encoding="utf-8"))
    return {**config, **QUICK[family]} if quick else config


def random_model(config: dict, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    """A family's network at ``config``'s shape with random weights (N(0, 0.02); norms 1), built on meta and
    materialised on ``device`` (no host copy of the weights)."""
    net = build_on_meta(config).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
            if not tensor.is_floating_point():
                continue
            if "norm" in name or name.endswith("ln_f.weight"):
                tensor.fill_(1.0)
            elif "bias" in name:
                tensor.zero_()
            else:
                tensor.normal_(0.0, 0.02, generator=gen)
    return DiffusionModel(net.to(dtype), family_for_config(config).spec(config, None)).eval()


def matmul_flops_per_token(model: DiffusionModel, config: dict, length: int) -> float:
    """Forward FLOPs per token: 2 x the weights it is multiplied by + the attention scores and values."""
    top_k, experts = config.get("num_experts_per_tok"), config.get("num_experts")
    active = 0.0
    for name, p in model.net.named_parameters():
        if "embed" in name or "wte" in name:
            continue
        share = top_k / experts if (".experts." in name and top_k and experts) else 1.0
        active += p.numel() * share
    layers = config.get("num_hidden_layers") or config.get("n_layers") or 0
    width = config.get("hidden_size") or config.get("d_model") or 0
    return 2 * active + 4 * length * width * layers


def time_family(model: DiffusionModel, ids: torch.Tensor, quick: bool) -> tuple[float, float]:
    """Median seconds of a forward (eval, no grad) and of a forward + backward (train mode; cross-entropy
    on the last 64 positions)."""
    device = ids.device

    def forward() -> None:
        with torch.no_grad():
            model(ids)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(ids)[:, -64:].float().flatten(0, 1), ids[:, -64:].flatten()).backward()

    fwd = timed(forward, device, 2 if quick else 5)
    model.train()
    fb = timed(forward_backward, device, 1 if quick else 3)
    model.zero_grad(set_to_none=True)
    return fwd, fb


def throughput(device: torch.device, quick: bool) -> dict:
    batch, length = (2, 32) if quick else (8, 320)
    out: dict = {}
    for family in FAMILIES:
        if not (FIXTURES / family / "config.real.json").is_file():
            out[family] = {"skipped": "no config.real.json"}
            continue
        config = real_shape(family, quick)
        model = random_model(config, device, torch.bfloat16)
        ids = torch.randint(0, model.spec.vocab_size, (batch, length), device=device)
        flops = matmul_flops_per_token(model, config, length) * batch * length
        fwd, fb = time_family(model, ids, quick)
        out[family] = {"params": model.num_parameters(), "tokens": batch * length,
                       "forward_ms": round(fwd * 1e3, 2), "forward_tflops": significant(flops / fwd / 1e12),
                       "forward_backward_ms": round(fb * 1e3, 2),
                       "forward_backward_tflops": significant(3 * flops / fb / 1e12)}
        log(f"throughput {family}: {out[family]}")
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------------------- decoding and the RL step


def decoding(device: torch.device, quick: bool) -> dict:
    from actors.decoding.reference import ReferenceDecoder
    from system.config import DecodingConfig

    length, block, steps, rows = (16, 8, 8, 2) if quick else (256, 32, 128, 8)
    model = random_model(real_shape("llada", quick), device, torch.bfloat16)
    params = DecodingConfig(gen_length=length, block_length=block, steps=steps, stop_at_eos=False)
    decoder = ReferenceDecoder(model, params)
    prompts = [[20 + (i * 7 + j) % 400 for j in range(40 + 3 * i)] for i in range(rows)]
    gen = torch.Generator(device=device).manual_seed(0)
    seconds = timed(lambda: decoder.generate(prompts, gen), device, 1)
    return {"shape": "llada-8b" if not quick else "llada-quick", "rows": rows, "gen_length": length,
            "block_length": block, "steps": steps, "seconds": round(seconds, 3),
            "tokens_per_s": round(rows * length / seconds, 1)}


def rl_step(device: torch.device, quick: bool) -> dict:
    missing = [m for m in ("deepspeed", "pydantic") if importlib.util.find_spec(m) is None]
    if missing:
        return {"skipped": f"needs {', '.join(missing)} (not installed)"}
    from system.config import load_config
    from system.driver import train
    from system.monitoring.records import read_records

    steps = 2 if quick else 4
    width = ["model.tiny.hidden_size=64", "model.tiny.num_hidden_layers=2", "model.tiny.intermediate_size=128"] if quick \
        else ["model.tiny.hidden_size=1024", "model.tiny.num_hidden_layers=16", "model.tiny.num_attention_heads=16",
              "model.tiny.intermediate_size=2816", "decoding.gen_length=128", "decoding.block_length=32",
              "decoding.steps=64", "rollout.group_size=8", "rollout.prompts_per_step=4",
              "learner.micro_batch_size=16"]
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"output_dir={tmp}", f"rollout.steps={steps}", f"model.device={device}",
                     "logging.progress=false", *width]
        start = time.perf_counter()
        train(load_config(REPO / "configs" / "smoke.yaml", overrides))
        total = time.perf_counter() - start
        records = [r for r in read_records(Path(tmp) / "metrics.jsonl") if r["type"] == "metrics"][1:]
    phases = ("generation", "reward", "learner", "sync", "step")
    result = {p: round(statistics.mean(r.get(f"timing/{p}", 0.0) for r in records), 3) for p in phases} \
        if records else {}
    return {"steps_measured": len(records), "seconds_per_phase": result, "wall_s": round(total, 1)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny shapes (seconds on a CPU)")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch.cuda.is_available() is False (use --device cpu --quick)")
    runners = {"goldens": lambda: goldens(device), "throughput": lambda: throughput(device, args.quick),
               "decoding": lambda: decoding(device, args.quick), "rl_step": lambda: rl_step(device, args.quick)}
    result: dict = {"bench": "gpu", "device": str(device), "quick": args.quick, "torch": torch.__version__}
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)
    start = time.perf_counter()
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            result[name] = runners[name]()
        except ImportError as e:  # a bare box: say what is missing, run the rest
            result[name] = {"skipped": f"import failed: {e}"}
        log(f"{name}: {time.perf_counter() - t0:.1f} s")
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
