"""Block-diffusion speed: the one-pass staircase likelihood against a loop of per-block passes, and block
decoding with and without the exact KV cache of finished blocks, on the built-in tiny block model.

Likelihood: for each block size (4, 8, 32 by default) a tiny block model (same seed and dimensions) scores
``--batch`` random completions of ``--length`` tokens after ``--prompt-length`` prompt tokens with the
``staircase_elbo`` estimator (K = 1, every block at its own noise level), once with the one-pass layout
and once with ``layout: per_block`` (L / block_size separate block-causal passes) on the *same* draw.
Reported per block size: median seconds over ``--repeats`` of the forward pass alone (``no_grad``) and of
forward + backward (what the learner pays), and the largest absolute difference between the two layouts'
per-token log-probs; ``max_abs_diff`` is the largest over the block sizes.

Decoding: ``ReferenceDecoder`` with ``use_cache`` true and false on the block-size-4 model (block length
32, L / 2 steps (two tokens revealed per step), low-confidence remasking, greedy so both give the same tokens),
reported as completion tokens per second (median over ``--repeats``) and whether the outputs agree.

    python bench/staircase.py [--length 256] [--batch 4] [--repeats 3] [--threads 1]

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

from actors.decoding.reference import ReferenceDecoder
from learner.estimators import EstimatorBatch, get_estimator
from system.config import DecodingConfig, ModelConfig, TinyModelConfig
from system.models.base import DiffusionModel
from system.models.build import new_tiny_model


def block_model(block_size: int, args: argparse.Namespace) -> DiffusionModel:
    tiny = TinyModelConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=4,
                           intermediate_size=args.intermediate, max_position_embeddings=4096, attention="block",
                           block_size=block_size)
    return new_tiny_model(ModelConfig(tiny=tiny), seed=0)[0].eval()


def random_batch(model: DiffusionModel, args: argparse.Namespace) -> EstimatorBatch:
    gen = torch.Generator().manual_seed(0)
    low, high = 10, model.spec.vocab_size  # ids below 10 hold the tiny tokenizer's special tokens
    prompt = torch.randint(low, high, (args.batch, args.prompt_length), generator=gen)
    completion = torch.randint(low, high, (args.batch, args.length), generator=gen)
    return EstimatorBatch(prompt, torch.ones_like(prompt), completion, torch.ones_like(completion, dtype=torch.bool))


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def likelihood(block_size: int, args: argparse.Namespace) -> dict:
    model = block_model(block_size, args)
    batch = random_batch(model, args)
    one = get_estimator("staircase_elbo", num_samples=1, weighting="one_over_t")
    loop = get_estimator("staircase_elbo", num_samples=1, weighting="one_over_t", layout="per_block")
    draw = one.draw(model.spec, batch, torch.Generator().manual_seed(1))

    def forward(est):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            return est.row_logprobs(model, batch, draw)

    def train(est):  # type: ignore[no-untyped-def]
        model.zero_grad(set_to_none=True)
        est.score(model, batch, draw).seq_logp.sum().backward()

    diff = float((forward(one) - forward(loop)).abs().max())
    out = {
        "blocks": args.length // block_size,
        "one_pass_s": median_seconds(lambda: forward(one), args.repeats),
        "per_block_s": median_seconds(lambda: forward(loop), args.repeats),
        "one_pass_train_s": median_seconds(lambda: train(one), args.repeats),
        "per_block_train_s": median_seconds(lambda: train(loop), args.repeats),
        "max_abs_diff": diff,
        "scored_tokens": int(draw.scored.sum()),
    }
    out["speedup"] = out["per_block_s"] / out["one_pass_s"]
    out["train_speedup"] = out["per_block_train_s"] / out["one_pass_train_s"]
    return {k: round(v, 4) if isinstance(v, float) and k != "max_abs_diff" else v for k, v in out.items()}


def decoding(args: argparse.Namespace) -> dict:
    model = block_model(4, args)
    prompts = random_batch(model, args).prompt_ids.tolist()
    params = DecodingConfig(gen_length=args.length, block_length=32, steps=args.length // 2, temperature=0.0,
                            stop_at_eos=False)
    result, outputs = {}, {}
    for cached in (True, False):
        decoder = ReferenceDecoder(model, params.model_copy(update={"use_cache": cached}))
        outputs[cached] = decoder.generate(prompts, torch.Generator().manual_seed(0))
        seconds = median_seconds(lambda d=decoder: d.generate(prompts, torch.Generator().manual_seed(0)), args.repeats)
        key = "cached" if cached else "uncached"
        result[f"{key}_tokens_per_s"] = round(len(prompts) * args.length / seconds, 1)
        result[f"{key}_forward_passes"] = outputs[cached].forward_passes
        print(f"decode {key}: {result[f'{key}_tokens_per_s']} tokens/s", file=sys.stderr)
    result["speedup"] = round(result["cached_tokens_per_s"] / result["uncached_tokens_per_s"], 2)
    result["outputs_equal"] = bool(torch.equal(outputs[True].completion_ids, outputs[False].completion_ids))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=256, help="completion tokens L")
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[4, 8, 32])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (1: steadier on a shared machine)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=344)
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for bs in args.block_sizes:
        results[str(bs)] = likelihood(bs, args)
        print(f"block {bs}: {results[str(bs)]}", file=sys.stderr)
    report = {
        "completion_length": args.length, "prompt_length": args.prompt_length, "batch": args.batch,
        "model": {"hidden": args.hidden, "layers": args.layers}, "threads": args.threads,
        "likelihood": results, "max_abs_diff": max(r["max_abs_diff"] for r in results.values()),
        "decode": None if args.skip_decode else decoding(args),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
