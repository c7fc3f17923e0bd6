"""Stability under noisy ratio estimates, in miniature: GRPO vs StableDRL vs AGRPO vs diffu-GRPO.

Every run starts from the same SFT checkpoint (``--sft DIR``, or the demo's SFT config trained once and
cached under ``--cache``), uses the same RL recipe (``configs/demo_rl.yaml``: task, decoding, group
size, prompts per step, learning rate), the same seed set and the same budget (``rollout.steps``), and
runs ``system.driver.train`` in local mode. Only the algorithm differs:

- ``grpo``:       conditional PPO clip (eps 0.2), fixed 1/G, one sequence-level ratio per sample from
                  the length-normalised ELBO;
- ``stabledrl``:  unconditional clip (upper 5) and self-normalised weights per group, same ratios;
- ``agrpo``:      its own estimator: per-step likelihoods at k = 4 sampled denoising steps, old
                  log-probs cached at generation (exact only under random remasking; the rollouts here
                  use the recipe's low-confidence remasking, so its factorisation is approximate);
- ``diffu_grpo``: its own estimator: d1's one-step mean field, token-level clip 0.5, k3 KL 0.04.

The noisy setting (GRPO and StableDRL): independent masks for the new and old estimates, K = 1 Monte
Carlo sample, 4 inner updates per rollout batch, so the ratio is noisy even at theta = theta_old.

Per run, from its ``metrics.jsonl`` (r_t = ``rollout/reward_mean`` of step t, s_t = the mean of r over
the last ``W = 5`` steps up to t, fewer at the start):

- ``final_reward`` = s_T; ``best_reward`` = max_t s_t over full windows (t >= W: a lucky first batch
  is not a best); ``fall_from_best`` = best - final;
- ``collapse_step``: the first step t such that s_u < 0.5 * max(s_1 .. s_{t-1}) for every u >= t, i.e.
  the smoothed reward falls below half of the best it had reached and never comes back above it
  before the run ends; None when there is no such step;
- ``grad_spikes``: learner-flagged spikes (pre-clip gradient norm > ``algorithm.spike_factor`` x the
  running median, after 10 updates), summed over steps;
- ``max_ratio``: the largest per-step ``ratio/max`` (the step's raw estimated ratio maximum,
  averaged over its inner updates by the driver); ``mean_ess``: the mean over steps of ``ratio/ess``
  (1 / sum w_bar^2 per group, G for equal weights) and ``mean_ess_fraction`` (ess / G);
- ``nonfinite_steps``: steps with a non-finite loss (an overflowing ratio: inf x advantage); the
  monitor only alerts, so the run logs the step's rollouts and goes on;
  (one micro-batch per update, ``learner.micro_batch_size=64``: a failing update applies nothing; with
  several micro-batches the learner would apply the finite ones' gradients before raising);
- ``error``: a run that stops on an error (e.g. a non-finite loss) keeps the steps it logged, counts
  as collapsed at its last logged step, and carries the message. The collapse monitor only alerts
  (``monitor.action: alert``, also for NaN): a rollback would hide the collapse under study.
- ``test_score``: greedy ``actors.evaluate`` score of the final checkpoint on ``--eval-limit`` test
  examples (0: skipped).

Per method the JSON gives the mean and population std over seeds, every seed's values, and how many
runs collapsed. ``stability.png`` in ``--out`` shows the smoothed reward, max ratio, pre-clip
gradient norm and ESS fraction per step (mean over seeds, thin lines per seed).

    python bench/stability.py [--quick] [--out runs/stability] [--seeds 0 1 2] [--steps 30] [--set k=v]
    python bench/stability.py --summarize --out runs/stability   # statistics again, no training

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SFT_CONFIG = REPO / "configs" / "demo_sudoku_sft.yaml"
RL_CONFIG = REPO / "configs" / "demo_rl.yaml"
WINDOW = 5
BENCH = ["cluster.mode=local", "logging.progress=false", "logging.wandb_mode=disabled", "logging.kl_probe_size=0",
         "logging.table_every=0", "logging.histogram_every=1000000", "rollout.eval_every=0", "monitor.action=alert",
         "monitor.nonfinite_action=alert", "learner.micro_batch_size=64"]
COLLAPSE_FRACTION = 0.5
NOISY = ["algorithm.estimator=elbo", "algorithm.coupling=independent", "algorithm.num_mc_samples=1",
         "algorithm.elbo_weighting=mean", "learner.inner_updates=4"]
METHODS: dict[str, list[str]] = {
    "grpo": [*NOISY, "algorithm.name=grpo", "algorithm.grpo_level=sequence", "algorithm.grpo_eps=0.2",
             "algorithm.kl_beta=0.0"],
    "stabledrl": [*NOISY, "algorithm.name=stabledrl", "algorithm.clip_high=5.0"],
    "agrpo": ["learner.inner_updates=4", "algorithm.name=agrpo", "algorithm.estimator=agrpo",
              "algorithm.coupling=auto", "algorithm.agrpo_num_steps=4"],
    "diffu_grpo": ["learner.inner_updates=4", "algorithm.name=diffu_grpo", "algorithm.estimator=mean_field",
                   "algorithm.coupling=auto"],
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def smoothed(values: list[float], window: int = WINDOW) -> list[float]:
    """s_t = mean of values[max(0, t - window + 1) .. t]."""
    return [statistics.fmean(values[max(0, t - window + 1):t + 1]) for t in range(len(values))]


def collapse_step(smooth: list[float], fraction: float = COLLAPSE_FRACTION) -> int | None:
    """First 1-based step t with s_u < fraction * max(s_1 .. s_{t-1}) for all u >= t (see the docstring)."""
    for t in range(1, len(smooth)):
        level = fraction * max(smooth[:t])
        if all(s < level for s in smooth[t:]):
            return t + 1
    return None


def run_stats(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-run numbers of the module docstring from a run's metrics records."""
    if not metrics:
        raise ValueError("the run logged no RL step")
    rewards = [float(m["rollout/reward_mean"]) for m in metrics]
    smooth = smoothed(rewards)
    best = max(smooth[WINDOW - 1:] or smooth)  # full windows only, unless the run is shorter than one

    def values(key: str) -> list[float]:
        return [float(m[key]) for m in metrics if key in m and math.isfinite(float(m[key]))]

    ratios, ess, ess_frac = values("ratio/max"), values("ratio/ess"), values("ratio/ess_fraction")
    return {
        "final_reward": smooth[-1], "best_reward": best, "fall_from_best": best - smooth[-1],
        "collapse_step": collapse_step(smooth), "grad_spikes": int(sum(values("grad/spikes"))),
        "max_ratio": max(ratios) if ratios else None, "mean_ess": statistics.fmean(ess) if ess else None,
        "mean_ess_fraction": statistics.fmean(ess_frac) if ess_frac else None,
        "rewards": rewards, "smoothed": smooth, "ratio_max": [float(m.get("ratio/max", math.nan)) for m in metrics],
        "grad_norm": [float(m.get("grad/pre_clip_norm", math.nan)) for m in metrics],
        "ess_fraction": [float(m.get("ratio/ess_fraction", math.nan)) for m in metrics],
    }


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and population std over seeds of the scalar numbers; per-seed lists; collapse count."""
    out: dict[str, Any] = {"seeds": [r["seed"] for r in runs]}
    for key in ("final_reward", "best_reward", "fall_from_best", "grad_spikes", "nonfinite_steps", "max_ratio",
                "mean_ess", "mean_ess_fraction", "test_score", "seconds"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.fmean(vals) if vals else None
        out[f"{key}_std"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0 if vals else None
        out[f"{key}_per_seed"] = [r.get(key) for r in runs]
    out["max_ratio"] = max((r["max_ratio"] for r in runs if r["max_ratio"] is not None), default=None)
    out["collapse_step_per_seed"] = [r["collapse_step"] for r in runs]
    out["collapsed_runs"] = sum(r["collapse_step"] is not None for r in runs)
    return out


def sft_checkpoint(args: argparse.Namespace) -> str:
    if args.sft:
        if not Path(args.sft).is_dir():
            raise SystemExit(f"--sft {args.sft}: not a checkpoint directory; omit --sft to train one")
        return args.sft
    from learner.sft import cached_sft
    from system.config import load_config

    cfg = load_config(SFT_CONFIG, ["logging.progress=false", *args.sft_set])
    log(f"SFT checkpoint: cache {args.cache} (config {SFT_CONFIG.name})")
    with contextlib.redirect_stdout(sys.stderr):
        summary = cached_sft(cfg, args.cache)
    log(f"  {'reused' if summary['cached'] else 'trained'} {summary['checkpoint']}")
    return summary["checkpoint"]


def read_run(run_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """The run's per-step RL metrics under their canonical names (system/monitoring/names.py; a step-0
    evaluation left out) and its number of non-finite steps: steps whose loss or metrics were not
    finite (the monitor's ``nonfinite`` events; the run goes on, ``monitor.nonfinite_action=alert``)."""
    from system.monitoring.names import canonical_metrics
    from system.monitoring.records import latest_by_step, read_records

    path = run_dir / "metrics.jsonl"
    records = read_records(path) if path.is_file() else []
    metrics = [canonical_metrics(r) for r in latest_by_step(records)]
    nonfinite = {r["step"] for r in records if r.get("type") == "event" and r.get("detector") == "nonfinite"}
    return [m for m in metrics if "rollout/reward_mean" in m], len(nonfinite)


def finished_run_stats(method: str, seed: int, run_dir: Path, seconds: float, error: str | None) -> dict[str, Any]:
    """The per-run numbers of the module docstring, from what the run wrote under ``run_dir``."""
    metrics, nonfinite = read_run(run_dir)
    stats = {"method": method, "seed": seed, "seconds": seconds, "error": error, **run_stats(metrics),
             "nonfinite_steps": nonfinite}
    if error is not None and stats["collapse_step"] is None:
        stats["collapse_step"] = len(stats["rewards"])
    return stats


def resummarize(out: Path) -> dict[str, list[dict[str, Any]]]:
    """``--summarize``: the runs of a finished bench in ``out`` (``runs.json`` for what training alone
    knew: seconds, errors, test scores), with the statistics computed again from their metrics files."""
    path = out / "runs.json"
    if not path.is_file():
        raise SystemExit(f"--summarize {out}: no runs.json there; run the bench with --out {out} first")
    old = json.loads(path.read_text())
    runs: dict[str, list[dict[str, Any]]] = {}
    for method, seeds in old.items():
        runs[method] = []
        for r in seeds:
            stats = finished_run_stats(method, r["seed"], out / "runs" / f"{method}-seed{r['seed']}", r["seconds"],
                                       r.get("error"))
            runs[method].append({**stats, "test_score": r.get("test_score")})
    return runs


def train_one(method: str, seed: int, sft: str, args: argparse.Namespace, reward_worker: Any) -> dict[str, Any]:
    from system.config import load_config
    from system.driver import train

    run_dir = Path(args.out) / "runs" / f"{method}-seed{seed}"
    overrides = [f"model.path={sft}", f"seed={seed}", f"rollout.steps={args.steps}", f"output_dir={run_dir}",
                 *BENCH, *METHODS[method], *args.set]
    cfg = load_config(RL_CONFIG, overrides)
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    start, error = time.monotonic(), None
    try:
        with contextlib.redirect_stdout(sys.stderr):
            train(cfg)
    except Exception as e:  # e.g. a non-finite loss: the run collapsed; keep what it logged
        error = f"{type(e).__name__}: {e}"
        log(f"  the run stopped: {error}")
    seconds = time.monotonic() - start
    stats = finished_run_stats(method, seed, run_dir, seconds, error)
    final = run_dir / "final"
    if args.eval_limit and final.is_dir():
        from actors.evaluate import evaluate

        with contextlib.redirect_stdout(sys.stderr):
            stats["test_score"] = evaluate(cfg, final, limit=args.eval_limit, reward_worker=reward_worker)["score"]
    return stats


def plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("smoothed", f"rollout reward (mean of last {WINDOW} steps)", False),
              ("ratio_max", "max estimated ratio per step", True), ("grad_norm", "pre-clip gradient norm", True),
              ("ess_fraction", "ESS / G", False)]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    colors = {"grpo": "tab:red", "stabledrl": "tab:blue", "agrpo": "tab:green", "diffu_grpo": "tab:orange"}
    for ax, (key, title, logy) in zip(axes.flat, panels):
        for method, seeds in runs.items():
            series = [r[key] for r in seeds]
            steps = range(1, len(series[0]) + 1)
            for s in series:
                ax.plot(steps, s, color=colors.get(method), alpha=0.25, linewidth=0.8)
            mean = [statistics.fmean(v for v in col if math.isfinite(v)) if any(math.isfinite(v) for v in col)
                    else math.nan for col in zip(*series)]
            ax.plot(steps, mean, color=colors.get(method), linewidth=2, label=method)
        ax.set_title(title)
        ax.set_xlabel("RL step")
        if logy:
            ax.set_yscale("log")
    axes[0, 0].legend()
    fig.suptitle("GRPO vs StableDRL vs AGRPO vs diffu-GRPO from one SFT checkpoint (thin: seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/stability", help="output directory (runs, stability.png, result.json)")
    p.add_argument("--sft", default=None, help="SFT checkpoint to start from (default: train / reuse the cached one)")
    p.add_argument("--cache", default="runs/cache", help="where the SFT checkpoint is cached")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=30, help="RL steps per run (rollout.steps)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--eval-limit", type=int, default=64, help="test examples scored per final checkpoint (0: skip)")
    p.add_argument("--quick", action="store_true", help="1 seed, 6 steps, 16 test examples")
    p.add_argument("--summarize", action="store_true",
                   help="train nothing: compute the statistics again from the runs already in --out")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of every RL run (repeatable)")
    p.add_argument("--sft-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a key of the SFT config (repeatable)")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.eval_limit = args.seeds[:1], 6, min(args.eval_limit, 16)
    return args


def train_all(sft: str, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    from actors.reward_worker import RewardWorker
    from system.config import load_config

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.methods}
    with RewardWorker(load_config(RL_CONFIG).reward) as reward_worker:
        for seed in args.seeds:
            for method in args.methods:
                log(f"{method} seed {seed}: {args.steps} steps")
                stats = train_one(method, seed, sft, args, reward_worker)
                runs[method].append(stats)
                log(f"  final {stats['final_reward']:.3f} best {stats['best_reward']:.3f} collapse "
                    f"{stats['collapse_step']} spikes {stats['grad_spikes']} non-finite {stats['nonfinite_steps']} "
                    f"max ratio {stats['max_ratio']} test {stats.get('test_score')} ({stats['seconds']:.0f} s)")
    return runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    if args.summarize:  # what the training run recorded, statistics computed again
        runs = resummarize(out)
        previous = json.loads((out / "result.json").read_text()) if (out / "result.json").is_file() else {}
        sft, steps, seeds = previous.get("sft_checkpoint"), previous.get("steps"), previous.get("seeds")
        settings, start = previous.get("settings", {}), start - float(previous.get("seconds", 0.0))
    else:
        sft, steps, seeds = sft_checkpoint(args), args.steps, args.seeds
        settings = {m: METHODS[m] + args.set for m in args.methods}
        runs = train_all(sft, args)
    plot(runs, out / "stability.png")
    (out / "runs.json").write_text(json.dumps(runs))
    result = {"bench": "stability", "sft_checkpoint": sft, "steps": steps, "seeds": seeds,
              "settings": settings, "window": WINDOW,
              "collapse_fraction": COLLAPSE_FRACTION, "methods": {m: aggregate(r) for m, r in runs.items()},
              "plot": str(out / "stability.png"), "seconds": round(time.monotonic() - start, 1)}
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":  # the guard RewardWorker's forkserver processes need
    print(json.dumps(main()))
