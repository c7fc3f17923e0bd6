"""Fast decoding modes against the reference sampler in the same run (issue 18).

Speed: per mode, generated tokens/s and forward-token work per generated token (query tokens run through
the model / tokens generated), at each ``--lengths`` L, block 32, the reference at L / 2 steps
(low_confidence, no cache), greedy, no early stop; ``speedup`` = the mode's tokens/s over the reference's
(the fastest of ``--repeats`` runs), ``work_speedup`` = the reference's forward tokens over the mode's.

Accuracy (the tiny shape): a tiny full-attention model is first trained for ``--train-steps`` with the
masked-diffusion SFT loss (learner.sft.sft_loss) on a task whose completions are as long as the
generation (at least 128 tokens, so that caching matters): the prompt is 8 random tokens and the
completion repeats them to length L. ``score`` is the greedy token accuracy on held-out prompts (percent),
``score_delta`` the mode's score minus the reference's, ``agreement`` the percent of tokens equal to the
reference's greedy output.

Truth: ``log_ratio_abs_mean`` / ``log_ratio_abs_max`` compare, at theta = theta_old, the log-probs a mode
recorded with the ones the learner computes on the rebuilt states (the AGRPO estimator, all steps
sampled): 0 up to float noise for exact modes, the approximation error of an approximate cache.

``--shape llada-8b`` (a GPU): the LLaDA-8B shape with random bf16 weights, speed only (random weights say
nothing about accuracy).

    python bench/decode_fast.py [--lengths 256,512] [--batch 8] [--train-steps 400] [--threads 2]

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from actors.decoding.fast import build_decoder
from actors.decoding.reference import DecodeOutput
from learner.estimators import batch_from_decode
from learner.estimators.agrpo import AgrpoEstimator
from learner.sft import SFTBatch, sft_loss
from system.config import DecodingConfig, ModelConfig, TinyModelConfig
from system.diffusion import left_pad
from system.models import DiffusionModel
from system.models.build import new_tiny_model

PERIOD = 8
MODES: dict[str, dict] = {
    "reference": {},
    "threshold": {"remasking": "threshold"},
    "prefix": {"cache": "prefix"},
    "dual": {"cache": "dual"},
    "threshold+prefix": {"remasking": "threshold", "cache": "prefix"},
    "threshold+dual": {"remasking": "threshold", "cache": "dual"},
    "factor+dual": {"remasking": "factor", "cache": "dual"},
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def periodic_rows(n: int, length: int, generator: torch.Generator) -> tuple[list[list[int]], torch.Tensor]:
    """``n`` prompts of PERIOD random tokens in [10, 100) and their completions (the prompt repeated to
    ``length``)."""
    prompts = torch.randint(10, 100, (n, PERIOD), generator=generator, device=generator.device)
    completions = prompts.repeat(1, -(-length // PERIOD))[:, :length]
    return prompts.tolist(), completions


def train_tiny(length: int, steps: int, seed: int) -> DiffusionModel:
    """A tiny full-attention model trained on the periodic task (masked-diffusion loss, AdamW)."""
    cfg = ModelConfig(tiny=TinyModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=172))
    model, _ = new_tiny_model(cfg, seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator(device=model.device).manual_seed(seed)
    for step in range(steps):
        prompts, completions = periodic_rows(16, length, gen)
        ids, mask = left_pad(prompts, model.spec.pad_token_id)
        loss, stats = sft_loss(model, SFTBatch(prompt_ids=ids, prompt_mask=mask, completion=completions), gen, "mean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"train step {step}: masked nll {stats['masked_nll']:.3f}")
    return model.eval()


def llada_8b(device: torch.device) -> DiffusionModel:
    """The LLaDA-8B shape with random bf16 weights (bench/gpu.py's builder)."""
    from bench.gpu import random_model, real_shape

    return random_model(real_shape("llada", False), device, torch.bfloat16).eval()


def log_ratio(model: DiffusionModel, out: DecodeOutput) -> tuple[float, float]:
    """|learner log-prob - recorded log-prob| at theta = theta_old over the scored tokens: (mean, max)."""
    num_steps = int(out.unmask_step.max()) + 1
    est = AgrpoEstimator(num_steps=num_steps, temperature=0.0)
    with torch.no_grad():
        new, old = est.estimate_pair(model, None, batch_from_decode(out), torch.Generator().manual_seed(0))
    gap = (new.token_logp - old.token_logp).abs()[new.token_mask]
    return float(gap.detach().mean()), float(gap.detach().max())


def run_mode(model: DiffusionModel, params: DecodingConfig, prompts: list[list[int]], repeats: int,
             ) -> tuple[DecodeOutput, float]:
    """Decode ``prompts`` ``repeats`` times (after a warm-up): the last output and the fastest seconds (the
    least disturbed by other processes on a shared machine)."""
    decoder = build_decoder(model, params)
    decoder.generate(prompts[:2])
    times = []
    for _ in range(repeats):
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = decoder.generate(prompts)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return out, min(times)


def bench_length(model: DiffusionModel, length: int, args: argparse.Namespace, accuracy: bool) -> dict:
    gen = torch.Generator().manual_seed(1234 + length)
    prompts, target = periodic_rows(args.batch, length, gen)
    base = {"gen_length": length, "block_length": 32, "steps": length // 2, "temperature": 0.0,
            "stop_at_eos": False, "use_cache": False, "confidence_threshold": args.threshold,
            "parallel_factor": args.factor}
    rows: dict[str, dict] = {}
    ref_out = None
    for name, update in MODES.items():
        out, seconds = run_mode(model, DecodingConfig(**{**base, **update}), prompts, args.repeats)
        tokens = args.batch * length
        row = {"decoder": out.decoder, "tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 3),
               "forward_tokens_per_token": round(out.forward_tokens / tokens, 3),
               "steps_per_row": float(out.steps_taken.float().mean())}
        if ref_out is None:
            ref_out = out
        row["speedup"] = round(row["tokens_per_s"] / rows["reference"]["tokens_per_s"], 2) if rows else 1.0
        # The same ratio in forward-token work: exact, and free of the noise of a shared machine.
        ref_work = rows["reference"]["forward_tokens_per_token"] if rows else row["forward_tokens_per_token"]
        row["work_speedup"] = round(ref_work / row["forward_tokens_per_token"], 2)
        if accuracy:
            completion = out.completion_ids.cpu()
            row["score"] = round(100 * float((completion == target).float().mean()), 2)
            row["agreement"] = round(100 * float((completion == ref_out.completion_ids.cpu()).float().mean()), 2)
            row["score_delta"] = round(row["score"] - rows["reference"]["score"], 2) if rows else 0.0
            mean_gap, max_gap = log_ratio(model, out)
            row["log_ratio_abs_mean"], row["log_ratio_abs_max"] = float(f"{mean_gap:.3g}"), float(f"{max_gap:.3g}")
        rows[name] = row
        log(f"L={length} {name}: {row}")
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=["tiny", "llada-8b"], default="tiny")
    parser.add_argument("--lengths", default="256,512")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--factor", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.shape == "tiny":
        model = train_tiny(lengths[0], args.train_steps, args.seed)
    else:
        model = llada_8b(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    results = {str(length): bench_length(model, length, args, accuracy=args.shape == "tiny" and i == 0)
               for i, length in enumerate(lengths)}
    summary = {"bench": "decode_fast", "shape": args.shape, "parameters": model.num_parameters(),
               "device": str(model.device), "batch": args.batch, "block_length": 32, "threads": args.threads,
               "train_steps": args.train_steps if args.shape == "tiny" else 0, "threshold": args.threshold,
               "factor": args.factor, "torch": torch.__version__, "lengths": results,
               "modes": results[str(lengths[0])]}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
