"""Noise floor and cost of the likelihood / ratio estimators on the built-in tiny model.

Decodes a batch of completions (LLaDA sampler, temperature 0.7, top-k 50, top-p 0.95), then for each
estimator and coupling draws ``--repeats`` estimate pairs at theta = theta_old (the new model and a
deep copy as the old one) and reports, over all sequences and draws:

- the std, mean and 99th percentile of log(ratio), and the 99th percentile of |log(ratio)|: the
  noise floor (0 for shared / complementary couplings; AGRPO compares with the cached decoder
  log-probs, so its floor is the recompute error);
- forward passes per sequence (new + old estimate; cached AGRPO old log-probs cost none);
- seconds per 1,000 completion tokens for one estimate pair (new with autograd on, no backward; the
  median over the repeats; ``load_average_1m`` says how busy the machine was).

Estimator options are the `AlgorithmConfig` defaults (K = 2, SPG block 32, AGRPO k = 24, ...).
The tiny model is untrained unless ``--model-path`` names a checkpoint (e.g. after `stabledrl sft`).

The ``uniform_*`` labels measure the uniform-noise estimator (`learner.estimators.uniform`) the same way
on a tiny random DiffusionGemma (vocabulary 256, hidden 64, canvas 32), whose completions come from its
own decoder (actors/decoding/uniform_block.py, 8 steps): its noise floor sits next to the masked ones.

    python bench/estimators.py [--batch 16] [--gen-length 64] [--repeats 10] [--threads 2]

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

from actors.decoding.reference import ReferenceDecoder
from actors.decoding.uniform_block import UniformDecodeConfig, uniform_generate
from learner.estimators import batch_from_decode, estimator_from_config, get_estimator
from system.config import AlgorithmConfig, DecodingConfig, ModelConfig
from system.models import load_model
from system.models.build import new_tiny_model
from system.models.diffusion_gemma import build_tiny

SETTINGS = {  # label -> AlgorithmConfig fields
    "mean_field/shared": {"estimator": "mean_field", "coupling": "shared"},
    "mean_field/independent": {"estimator": "mean_field", "coupling": "independent"},
    "elbo_mean/independent": {"estimator": "elbo", "coupling": "independent"},
    "elbo_mean/shared": {"estimator": "elbo", "coupling": "shared"},
    "elbo_mean/complementary": {"estimator": "elbo", "coupling": "complementary"},
    "elbo_1/t/independent": {"estimator": "elbo", "coupling": "independent", "elbo_weighting": "one_over_t"},
    "elbo_1/t/shared": {"estimator": "elbo", "coupling": "shared", "elbo_weighting": "one_over_t"},
    "elbo_1/t/complementary": {"estimator": "elbo", "coupling": "complementary", "elbo_weighting": "one_over_t"},
    "spg/independent": {"estimator": "spg", "coupling": "independent"},
    "spg/shared": {"estimator": "spg", "coupling": "shared"},
    "agrpo_uniform/cached": {"estimator": "agrpo", "agrpo_sampling": "uniform"},
    "agrpo_entropy/cached": {"estimator": "agrpo", "agrpo_sampling": "entropy"},
}
UNIFORM_SETTINGS = {  # label -> uniform_elbo options (tiny DiffusionGemma); K = 2 as the masked ones
    "uniform_elbo/independent": {"coupling": "independent"},
    "uniform_elbo/shared": {"coupling": "shared"},
    "uniform_elbo_log_stratified/independent": {"coupling": "independent", "t_sampling": "log_stratified"},
    "uniform_elbo_t_uniform/independent": {"coupling": "independent", "t_sampling": "uniform"},
    "uniform_elbo_two_pass/independent": {"coupling": "independent", "self_conditioning": "two_pass"},
    "uniform_flat_ce/independent": {"coupling": "independent", "weighting": "flat_ce"},
}


def quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.double(), q))


def measure(model, old_model, batch, estimator, repeats: int, seed: int) -> dict:  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(seed)
    log_ratios, times, passes = [], [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        new, old = estimator.estimate_pair(model, old_model, batch, generator)
        times.append(time.perf_counter() - start)
        log_ratios.append((new.seq_logp.detach() - old.seq_logp).double())
        cached = estimator.name == "agrpo" and estimator.old_source == "cached"
        passes = float(new.extras["num_passes"].mean()) * (1 if cached else 2)
    lr = torch.cat(log_ratios)
    tokens = batch.completion_ids.numel()
    return {
        "log_ratio_std": round(float(lr.std()), 6),
        "log_ratio_mean": round(float(lr.mean()), 6),
        "log_ratio_p99": round(quantile(lr, 0.99), 6),
        "abs_log_ratio_p99": round(quantile(lr.abs(), 0.99), 6),
        "forward_passes_per_sequence": passes,
        "seconds_per_1k_tokens": round(statistics.median(times) / tokens * 1000, 5),
    }


def uniform_results(labels: list[str], args: argparse.Namespace) -> dict:
    """The ``uniform_*`` labels on a tiny random DiffusionGemma and completions from its own decoder."""
    if not labels:
        return {}
    model = build_tiny(0, vocab_size=256, hidden_size=64, canvas_length=32, sliding_window=64)
    prompts = torch.tensor([[20 + (i * 3 + j) % 80 for j in range(12)] for i in range(args.batch)])
    length = -(-args.gen_length // 32) * 32
    print(f"decoding {args.batch} x {length} tokens (tiny DiffusionGemma)", file=sys.stderr)
    with torch.no_grad():
        out = uniform_generate(model, prompts, torch.ones_like(prompts), length,
                               UniformDecodeConfig(max_denoising_steps=8), torch.Generator().manual_seed(0))
    batch, old_model, results = batch_from_decode(out), copy.deepcopy(model), {}
    for i, label in enumerate(labels):
        estimator = get_estimator("uniform_elbo", num_samples=2, **UNIFORM_SETTINGS[label])
        estimator.estimate_pair(model, old_model, batch, torch.Generator().manual_seed(0))  # warm-up
        results[label] = measure(model, old_model, batch, estimator, args.repeats, seed=2000 + i)
        results[label]["model"] = f"tiny diffusion_gemma ({model.num_parameters()} parameters)"
        print(f"{label}: {results[label]}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--gen-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-path", default=None, help="a checkpoint directory (default: untrained tiny model)")
    parser.add_argument("--only", default=None, help="comma-separated labels to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model_path:
        model = load_model(args.model_path).eval()
    else:
        model, _ = new_tiny_model(ModelConfig(), seed=0)
        model.eval()
    decoding = DecodingConfig(gen_length=args.gen_length, block_length=32, steps=args.gen_length // 2,
                              temperature=0.7, top_k=50, top_p=0.95, stop_at_eos=False)
    prompts = [[20 + (i * 3 + j) % 80 for j in range(12 + i % 5)] for i in range(args.batch)]
    print(f"decoding {args.batch} x {args.gen_length} tokens", file=sys.stderr)
    out = ReferenceDecoder(model, decoding).generate(prompts, torch.Generator().manual_seed(0))
    batch = batch_from_decode(out)
    old_model = copy.deepcopy(model)
    labels = args.only.split(",") if args.only else [*SETTINGS, *UNIFORM_SETTINGS]
    results = uniform_results([x for x in labels if x in UNIFORM_SETTINGS], args)
    for i, label in enumerate(x for x in labels if x not in UNIFORM_SETTINGS):
        estimator = estimator_from_config(AlgorithmConfig(**SETTINGS[label]), decoding)
        estimator.estimate_pair(model, old_model, batch, torch.Generator().manual_seed(0))  # warm-up
        results[label] = measure(model, old_model, batch, estimator, args.repeats, seed=1000 + i)
        print(f"{label}: {results[label]}", file=sys.stderr)
    print(json.dumps({
        "bench": "estimators", "model": args.model_path or "tiny", "parameters": model.num_parameters(),
        "batch": args.batch, "gen_length": args.gen_length, "repeats": args.repeats, "threads": args.threads,
        "theta": "theta_old (new model vs a deep copy)", "torch": torch.__version__,
        "load_average_1m": round(os.getloadavg()[0], 2), "results": results,
    }))


if __name__ == "__main__":
    main()
