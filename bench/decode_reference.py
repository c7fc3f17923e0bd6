"""Speed of the reference (LLaDA) decoder on the built-in tiny model.

For generation lengths 64, 128 and 256 (block 32, steps = length / 2, greedy, no early stop), decodes a
batch of prompts and reports generated tokens per second and forward passes per generated token
(row-level passes / generated tokens; 0.5 by construction of steps = L / 2, lower with early stop).

    python bench/decode_reference.py [--batch 8] [--repeats 3] [--threads 2]

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from actors.decoding.reference import ReferenceDecoder
from system.config import DecodingConfig, ModelConfig
from system.models.build import new_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lengths", default="64,128,256")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = new_tiny_model(ModelConfig(), seed=0)
    model.eval()
    prompts = [[20 + (i * 3 + j) % 80 for j in range(12 + i % 5)] for i in range(args.batch)]
    results = {}
    for length in (int(x) for x in args.lengths.split(",")):
        params = DecodingConfig(gen_length=length, block_length=32, steps=length // 2, stop_at_eos=False)
        decoder = ReferenceDecoder(model, params)
        decoder.generate(prompts[:2])  # warm-up
        times, passes = [], 0
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = decoder.generate(prompts)
            times.append(time.perf_counter() - start)
            passes = out.forward_passes
        seconds = statistics.median(times)
        tokens = args.batch * length
        results[str(length)] = {
            "tokens_per_s": round(tokens / seconds, 1),
            "forward_passes_per_token": round(passes / tokens, 4),
            "seconds": round(seconds, 3),
            "steps": params.steps,
        }
        print(f"L={length}: {results[str(length)]}", file=sys.stderr)
    print(json.dumps({
        "bench": "decode_reference", "model": "tiny", "parameters": model.num_parameters(), "batch": args.batch,
        "block_length": 32, "threads": args.threads, "torch": torch.__version__, "results": results,
    }))


if __name__ == "__main__":
    main()
