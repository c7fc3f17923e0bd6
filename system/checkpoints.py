"""Run checkpoints: what the driver keeps beside the learner's own checkpoint, the checks a ``--resume``
path passes before any worker starts, and the restore.

``RUN/checkpoints/step-N/`` holds ``learner/`` (model, optimizer, LR schedule, the learner's counters:
DeepSpeed's checkpoint, written by every rank), ``driver_rng.pt`` (the rollout workers' RNG states and
the prompt sampler's cursor) and ``driver.json`` (step, policy version, metric history, buffer counters).
``stream.pt`` (``rollout.mode: stream`` only) holds the stream's queued groups and the prompts issued but not
yet delivered, which a resumed run re-issues first. ``driver.json`` is written last and atomically, so its presence marks a complete checkpoint. A run also
checkpoints its last step, so a finished run can be continued to a larger ``rollout.steps``.
``RUN/final`` is different: the final policy in HF format, for ``sample`` / ``eval`` / ``model.path``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from system.buffer import BufferStats, RolloutBuffer
from system.errors import CheckpointError, ConfigError
from system.workers.base import WorkerGroupError

if TYPE_CHECKING:  # the driver imports this module
    from system.driver import PromptSampler, Workers

DRIVER_META, DRIVER_RNG, LEARNER_DIR, STREAM_STATE = "driver.json", "driver_rng.pt", "learner", "stream.pt"
META_KEYS = {"step": int, "version": int, "history": list, "buffer": dict}


@dataclass
class RunState:
    """What the driver itself must restore on resume (the workers save their own parts)."""

    step: int = 0
    version: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step}"


def latest_checkpoint(run: Path, exclude: Path | None = None) -> Path | None:
    """The complete checkpoint (one with driver.json) of ``run`` with the highest step, if any."""
    steps = [(int(p.name.removeprefix("step-")), p) for p in (run / "checkpoints").glob("step-*")
             if p.name.removeprefix("step-").isdigit() and (p / DRIVER_META).is_file() and p != exclude]
    return max(steps)[1] if steps else None


def _elsewhere(path: Path) -> str:
    """Where the user might resume from instead: the latest other complete checkpoint of the same run."""
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent if path.name == "final" else path
    latest = latest_checkpoint(run, exclude=path)
    if latest is not None:
        return f"; the latest complete checkpoint of that run is {latest}"
    return "; pass a RUN_DIR/checkpoints/step-N directory to --resume"


def read_checkpoint(path: Path) -> dict[str, Any]:
    """``driver.json`` of the run checkpoint ``path``, after checking that the checkpoint is whole; a
    CheckpointError names the file that is wrong and where to resume from instead."""
    meta = path / DRIVER_META
    if not meta.is_file():
        what = ("holds the final policy weights (for sample, eval or model.path), not a run checkpoint"
                if (path / "config.json").is_file() else
                "is a run directory, not a checkpoint" if (path / "checkpoints").is_dir() else
                "does not exist" if not path.exists() else "is not a stabledrl run checkpoint (no driver.json)")
        raise CheckpointError(f"--resume {path} {what}{_elsewhere(path)}")
    try:
        saved = json.loads(meta.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta} is damaged (not valid JSON: {e}){_elsewhere(path)}") from None
    bad = [k for k, kind in META_KEYS.items() if not isinstance(saved, dict) or not isinstance(saved.get(k), kind)]
    if bad:
        raise CheckpointError(f"{meta} is damaged (missing or wrong {', '.join(bad)}){_elsewhere(path)}")
    for part in (DRIVER_RNG, LEARNER_DIR):
        if not (path / part).exists():
            raise CheckpointError(f"{path / part} is missing: the checkpoint is incomplete{_elsewhere(path)}")
    return saved


def check_resume(path: Path, steps: int) -> dict[str, Any]:
    """``read_checkpoint``, plus: the checkpoint must leave steps to run (a finished run continues only
    to a larger ``rollout.steps``)."""
    saved = read_checkpoint(path)
    if saved["step"] >= steps:
        raise ConfigError(f"--resume {path} is at step {saved['step']} and rollout.steps is {steps}: nothing "
                          f"left to run; to continue, raise it, e.g. --set rollout.steps={saved['step'] + steps}")
    return saved


def one_line(message: str) -> str:
    """A long multi-line error (torch lists every tensor whose shape differs) as its first two lines."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
    return " ".join(lines[:2]) + more


def save_checkpoint(workers: Workers, state: RunState, sampler: PromptSampler, buffer: RolloutBuffer,
                    path: Path, stream: dict[str, Any] | None = None) -> Path:
    """Learner (model, optimizer, schedule, counters), rollout RNG states, sampler cursor, version and
    metric history under ``path``, and the ``stream`` state when given; driver.json last, through a
    temporary file (see the module docstring)."""
    path.mkdir(parents=True, exist_ok=True)
    workers.learner.call("save_checkpoint", str(path))
    torch.save({"rollout_rng": workers.rollout.call("rng_state"), "sampler": sampler.state()}, path / DRIVER_RNG)
    if stream is not None:
        torch.save(stream, path / STREAM_STATE)
    meta = {"step": state.step, "version": state.version, "history": state.history, "buffer": asdict(buffer.stats)}
    tmp = path / f".{DRIVER_META}.tmp"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, path / DRIVER_META)
    return path


def restore_checkpoint(workers: Workers, sampler: PromptSampler, buffer: RolloutBuffer, path: Path,
                       saved: dict[str, Any] | None = None) -> RunState:
    """Load the run checkpoint ``path`` into the learner, the rollout workers' RNGs, the sampler and the
    buffer (``saved``: its driver.json, if already read). The caller publishes the restored policy."""
    saved = read_checkpoint(path) if saved is None else saved
    try:
        workers.learner.call("load_checkpoint", str(path))
    except WorkerGroupError as e:  # a checkpoint that does not fit is the user's input: say so plainly
        cause = getattr(e, "cause", None)
        if isinstance(cause, CheckpointError):
            raise CheckpointError(f"{one_line(str(cause))}; resume with the model settings of the run that wrote "
                                  "it (its config.yaml)") from e
        if "CheckpointError" in str(e):
            raise CheckpointError(str(e)) from e
        raise
    try:
        rng = torch.load(path / DRIVER_RNG, weights_only=False)
        rollout_rng, sampler_state = rng["rollout_rng"], rng["sampler"]
    except Exception as e:  # torch.load raises many types for a truncated or foreign file
        raise CheckpointError(f"{path / DRIVER_RNG} is damaged ({type(e).__name__}: {e}){_elsewhere(path)}") from e
    for i, rng_state in enumerate(rollout_rng[: workers.rollout.size]):
        workers.rollout.call_one(i, "set_rng_state", rng_state)
    sampler.load_state(sampler_state)
    buffer.stats = BufferStats(**saved["buffer"])
    buffer.groups.clear()  # anything queued or seen after the checkpoint is from a discarded future
    buffer.seen.clear()
    return RunState(int(saved["step"]), int(saved["version"]), list(saved["history"]))


def load_stream_state(path: Path) -> dict[str, Any] | None:
    """The stream state of the run checkpoint ``path`` (None: a sync / async checkpoint has none)."""
    file = path / STREAM_STATE
    if not file.is_file():
        return None
    try:
        return torch.load(file, weights_only=False)
    except Exception as e:  # torch.load raises many types for a truncated or foreign file
        raise CheckpointError(f"{file} is damaged ({type(e).__name__}: {e}){_elsewhere(path)}") from e
