"""``stabledrl demo``: the mission end to end on a CPU with the tiny dLLM.

1. generate the task's data (sudoku 4x4 by default: unique-solution puzzles, test split sharing no
   solution grid with training; ``--task countdown`` or ``copy`` / ``add`` by flag);
2. masked-diffusion SFT of the tiny model to a partial-credit starting policy (cached under
   ``RUN/sft/sft-<hash of the SFT config>``, or ``--sft-cache DIR``: a second run with the same config
   and ``--sft-seed`` reuses it);
3. evaluate it on the test split (greedy, the reward's own scoring);
4. StableDRL through the Ray path on a local cluster bound to 127.0.0.1: rollout actor, reward
   worker, DeepSpeed learner, weight transport through the Ray object store; wandb offline;
5. evaluate again, print the before / after table, write the report (PNG + HTML);
6. last line: one JSON object (``score_before``, ``score_after``, ``steps``, ``seconds``, ...).

Seeds: ``--seed`` seeds the RL stage (prompt order, rollout sampling, the estimator's masks),
``--sft-seed`` the SFT stage (init, data order, masks). The task data and its test split never change
with either, so every run is scored on the same puzzles; runs with one ``--sft-seed`` start RL from
the same checkpoint (bench/demo_seeds.py measures RL's seed-to-seed spread that way).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from system.config import Config, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def sft_config(task: str, overrides: list[str], seed: int = 0) -> Config:
    """The SFT stage. ``seed`` seeds the model's init, the data order and the masks; the task data
    (``data.seed``) stays fixed, so every seed is scored on the same test split."""
    base = CONFIGS / f"demo_{task}_sft.yaml"  # sudoku, countdown; the synthetic tasks use tiny_sft.yaml
    if not base.is_file():
        base = CONFIGS / "tiny_sft.yaml"
    return load_config(base, [f"data.task={task}", f"seed={seed}", *overrides])


def _set_fields(overrides: list[str], section: str) -> set[str]:
    """The fields of ``section`` that ``--set section.field=...`` overrides name."""
    return {o.split("=", 1)[0].split(".")[1] for o in overrides if o.startswith(section + ".") and "=" in o}


def rl_config(sft: Config, checkpoint: str, run_dir: Path, overrides: list[str], seed: int = 0) -> Config:
    """The RL stage (configs/demo_rl.yaml) from ``checkpoint`` with ``seed``, and the SFT stage's task data
    and decoding shape, so the policy is trained and scored on what it was fine-tuned on; a field that
    ``overrides`` sets explicitly (``--set data.num_train=...``) keeps the RL stage's value."""
    cfg = load_config(CONFIGS / "demo_rl.yaml", [f"output_dir={run_dir / 'rl'}", f"seed={seed}", *overrides])
    own_data, own_decoding = _set_fields(overrides, "data"), _set_fields(overrides, "decoding")
    data = sft.data.model_copy(update={k: getattr(cfg.data, k) for k in own_data})
    shape = {k: getattr(sft.decoding, k) for k in ("gen_length", "block_length", "steps") if k not in own_decoding}
    update = {"model": cfg.model.model_copy(update={"path": checkpoint}), "data": data,
              "decoding": cfg.decoding.model_copy(update=shape)}
    return cfg.model_copy(update=update)


def table(before: dict[str, Any], after: dict[str, Any]) -> str:
    rows = [("score (mean reward)", "score"), ("accuracy (exact)", "accuracy"),
            ("completion length", "completion_length")]
    lines = [f"{'':<22}{'after SFT':>12}{'after RL':>12}{'change':>10}"]
    for label, key in rows:
        a, b = float(before[key]), float(after[key])
        lines.append(f"{label:<22}{a:>12.4f}{b:>12.4f}{b - a:>+10.4f}")
    return "\n".join(lines)


def run_demo(task: str, run_dir: Path, sft_overrides: list[str], rl_overrides: list[str],
             limit: int | None, seed: int = 0, sft_seed: int = 0, sft_cache: Path | None = None) -> dict[str, Any]:
    from actors.evaluate import evaluate
    from learner.sft import cached_sft
    from system.driver import train
    from system.monitoring.report import write_report

    start = time.monotonic()
    sft = sft_config(task, sft_overrides, sft_seed)
    stage = cached_sft(sft, sft_cache or run_dir / "sft")  # sft-<hash of the config>: a second run reuses it
    checkpoint, cached = stage["checkpoint"], stage["cached"]
    before = evaluate(sft, checkpoint, limit)
    rl = rl_config(sft, checkpoint, run_dir, rl_overrides, seed)
    summary = train(rl)
    after = evaluate(sft, summary["checkpoint"], limit)
    report = write_report(Path(rl.output_dir))
    print("\n" + table(before, after))
    return {
        "task": task, "seed": seed, "sft_seed": sft_seed, "score_before": round(before["score"], 4), "score_after": round(after["score"], 4),
        "accuracy_before": round(before["accuracy"], 4), "accuracy_after": round(after["accuracy"], 4),
        "test_examples": after["examples"], "steps": summary["steps"], "algorithm": rl.algorithm.name,
        "cluster": rl.cluster.mode, "sft_cached": cached, "report": str(report.get("png", "")),
        "wandb": rl.logging.wandb_mode, "seconds": round(time.monotonic() - start, 1),
    }


def print_result(result: dict[str, Any]) -> None:
    print(json.dumps(result))
