"""User-facing error types, raised at the boundaries (configs, data files, checkpoints) with messages
that name the file, row, field or path and the fix. Kept free of heavy imports so the CLI can catch
them without loading torch."""


class ConfigError(ValueError):
    """A configuration that cannot be used; raised before any work starts."""


class DataError(ValueError):
    """A data file that cannot be used; the message names file, row and field."""


class CheckpointError(ValueError):
    """A checkpoint directory or model spec that cannot be loaded; the message names the path and the fix."""


class RunFailed(RuntimeError):
    """A worker role failed mid-run: the run stops (exit status 1), naming the role, the step, the error
    and the checkpoint to resume from. Not a bad input, so not a ValueError."""

    role = "a worker"

    def __init__(self, step: int, error: BaseException, last_good: int | None, run: str) -> None:
        where = (f"resume with --resume {run}/checkpoints/step-{last_good}" if last_good is not None
                 else "no checkpoint was written (set rollout.checkpoint_every)")
        super().__init__(f"{self.role} failed at step {step}: {error}; {where}")


class LearnerFailed(RunFailed):
    """The learner failed (a rank died, or train_on raised)."""

    role = "the learner"


class RewardFailed(RunFailed):
    """The reward workers failed (a reward worker died, or score raised): not the learner's fault."""

    role = "the reward workers"
