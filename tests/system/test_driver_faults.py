"""Faults and bad input at the driver's boundaries (issue 19), in local mode with the tiny model: each
bad input exits through ``stabledrl train`` with one line naming the file, key or path and the fix
(status 2) and leaves an existing run directory as it was; a reward error is reported as one; a
finished run continues to more steps from the checkpoint of its last step."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from system.cli import main
from system.config import load_config
from system.driver import train
from system.errors import RewardFailed
from tests.conftest import run_records
from tests.system.test_driver import SMALL, fail_the_second_call


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run (rollout.checkpoint_every=0: the last step is still checkpointed)."""
    run = tmp_path_factory.mktemp("finished")
    train(load_config(None, [*SMALL, f"output_dir={run}", "rollout.steps=2"]))
    return run


def run_files(run: Path) -> dict[str, bytes]:
    """What a failed start must not touch: the run's resolved config and its metrics log."""
    return {name: (run / name).read_bytes() for name in ("config.yaml", "metrics.jsonl")}


def cli_train(run: Path, capsys: pytest.CaptureFixture[str], *extra: str, resume: Path | None = None) -> tuple[int, str]:
    """``stabledrl train`` into ``run``: (exit status, stderr)."""
    sets = [arg for item in [*SMALL, "rollout.steps=3", *extra] for arg in ("--set", item)]
    argv = ["train", "-c", "configs/smoke.yaml", "--run-dir", str(run), *sets]
    code = main([*argv, "--resume", str(resume)] if resume is not None else argv)
    return code, capsys.readouterr().err


def test_the_last_step_is_checkpointed_and_a_finished_run_continues(finished: Path, tmp_path: Path) -> None:
    last = finished / "checkpoints" / "step-2"
    assert (last / "driver.json").is_file() and (last / "learner").is_dir()
    cfg = load_config(None, [*SMALL, f"output_dir={tmp_path}", "rollout.steps=4"])
    summary = train(cfg, resume=last)
    assert summary["steps"] == 4 and summary["version"] == 4
    assert [m["step"] for m in run_records(tmp_path)] == [3, 4]
    assert (tmp_path / "checkpoints" / "step-4" / "driver.json").is_file()


def bad_resume_dirs(finished: Path, tmp_path: Path) -> dict[str, Path]:
    """Copies of the last checkpoint, each damaged in one way."""
    last = finished / "checkpoints" / "step-2"
    corrupt, no_rng = tmp_path / "corrupt" / "checkpoints" / "step-2", tmp_path / "no_rng" / "checkpoints" / "step-2"
    for copy in (corrupt, no_rng):
        shutil.copytree(last, copy)
    (corrupt / "driver.json").write_text('{"step": 2, "vers')
    (no_rng / "driver_rng.pt").unlink()
    return {"corrupt": corrupt, "no_rng": no_rng}


def test_bad_resume_paths_exit_2_with_one_line_and_touch_nothing(finished: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = run_files(finished)
    bad = bad_resume_dirs(finished, tmp_path)
    last = str(finished / "checkpoints" / "step-2")
    cases = [  # (resume path, extra --set, what the one line must say)
        (finished / "final", (), ["holds the final policy weights", f"latest complete checkpoint of that run is {last}"]),
        (finished, (), ["is a run directory, not a checkpoint", last]),
        (tmp_path / "nowhere", (), ["does not exist", "pass a RUN_DIR/checkpoints/step-N directory"]),
        (bad["corrupt"], (), [f"{bad['corrupt']}/driver.json is damaged (not valid JSON"]),
        (bad["no_rng"], (), [f"{bad['no_rng']}/driver_rng.pt is missing: the checkpoint is incomplete"]),
        (Path(last), ("rollout.steps=2",), ["is at step 2 and rollout.steps is 2", "--set rollout.steps=4"]),
    ]
    for resume, extra, wants in cases:
        code, err = cli_train(finished, capsys, *extra, resume=resume)
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), (resume, err)
        assert all(want in err for want in wants), (resume, err)
        assert run_files(finished) == before, resume


def test_a_bad_model_path_exits_2_with_one_line_and_touches_nothing(finished: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A missing path is refused before any worker starts; a directory without a checkpoint is found by
    the rollout worker's constructor, and its error reaches the CLI through WorkerStartError."""
    before = run_files(finished)
    code, err = cli_train(finished, capsys, "model.path=/no/such/model")
    assert code == 2 and err.count("\n") == 1, err
    assert "model path /no/such/model does not exist: set model.path to a local checkpoint directory" in err
    code, err = cli_train(finished, capsys, f"model.path={tmp_path}")
    assert code == 2 and err == f"error: {tmp_path}/config.json is missing: a checkpoint directory needs " \
        "config.json beside its weights\n", err
    assert run_files(finished) == before


@pytest.mark.parametrize(("assignment", "want"), [
    ("model.dtype=float16", "model.dtype=float16 on model.device=cpu"),
    ("algorithm.clip_low=0", "algorithm.clip_low = 0: a ratio bound must be positive and finite"),
])
def test_a_setting_that_fails_at_step_1_is_refused_at_start(finished: Path, capsys: pytest.CaptureFixture[str],
                                                            assignment: str, want: str) -> None:
    before = run_files(finished)
    code, err = cli_train(finished, capsys, assignment)
    assert code == 2 and err.count("\n") == 1 and want in err, err
    assert run_files(finished) == before


def test_a_start_that_fails_in_the_restore_writes_nothing(finished: Path, tmp_path: Path) -> None:
    """The checkpoint passes the driver's checks but does not fit the model: nothing of the new run
    directory is written (config.yaml, metrics.jsonl used to be written before the workers started)."""
    from system.errors import CheckpointError

    cfg = load_config(None, [*SMALL, f"output_dir={tmp_path / 'wide'}", "model.tiny.hidden_size=64"])
    with pytest.raises(CheckpointError, match="does not fit this model") as info:
        train(cfg, resume=finished / "checkpoints" / "step-2")
    assert "\n" not in str(info.value) and "size mismatch for net.embed_tokens.weight" in str(info.value)
    assert str(info.value).endswith("more); resume with the model settings of the run that wrote it (its config.yaml)")
    assert not (tmp_path / "wide" / "config.yaml").exists() and not (tmp_path / "wide" / "metrics.jsonl").exists()


def test_a_reward_error_is_reported_as_a_reward_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.reward_worker import RewardWorker

    fail_the_second_call(monkeypatch, RewardWorker, "score", BrokenPipeError("injected"))
    cfg = load_config(None, [*SMALL, f"output_dir={tmp_path}", "rollout.checkpoint_every=1"])
    with pytest.raises(RewardFailed, match=r"^the reward workers failed at step 2: reward\[0\]\.score .*"
                                           r"BrokenPipeError: injected; resume with --resume .*step-1$"):
        train(cfg)
