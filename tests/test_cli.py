"""The ``stabledrl`` command line: help, config validation errors (exit 2, message on stderr),
``model inspect`` and ``sample`` on a tiny checkpoint.

The entry point itself (``python -m system.cli``) is run as a subprocess; the rest call ``main(argv)``
in-process (each subprocess pays ~5 s of torch/transformers imports)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from system.cli import main
from system.config import ModelConfig, TinyModelConfig
from system.models.build import new_tiny_model, save_policy

REPO = Path(__file__).resolve().parents[1]
ARGVS = {
    "help": ["--help"],
    "bad_config": ["config", "--set", "decoding.steps=3"],
}


@pytest.fixture(scope="module")
def subprocess_runs() -> dict[str, tuple[int, str, str]]:
    """Start every subprocess at once (they are import-bound), then collect (rc, stdout, stderr)."""
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "system.cli", *argv], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, argv in ARGVS.items()
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=120)
        out[name] = (proc.returncode, stdout, stderr)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = ModelConfig(tiny=TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=64))
    model, tokenizer = new_tiny_model(cfg, seed=0)
    return save_policy(model, tokenizer, tmp_path_factory.mktemp("cli") / "tiny")


def test_help_lists_commands(subprocess_runs: dict[str, tuple[int, str, str]]) -> None:
    rc, stdout, stderr = subprocess_runs["help"]
    assert rc == 0, stderr
    for command in ("config", "sft", "sample", "model", "demo"):
        assert f"\n    {command} " in stdout, (command, stdout)


def test_bad_config_exits_2_with_message(subprocess_runs: dict[str, tuple[int, str, str]]) -> None:
    rc, stdout, stderr = subprocess_runs["bad_config"]
    assert rc == 2
    assert stdout == ""
    # default gen_length 128 / block_length 32 = 4 blocks; 3 steps is not a multiple of 4
    assert stderr.startswith("error: invalid configuration (defaults with --set decoding.steps=3):")
    assert "decoding: steps (3) must be a multiple of the number of blocks" in stderr


def test_config_prints_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    assert main(["config", "--set", "sft.steps=7", "--set", "logging.tags=[x]"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["sft"]["steps"] == 7
    assert out["logging"]["tags"] == ["x"]
    assert out["decoding"]["gen_length"] == 128  # default


def test_config_unknown_key_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "sft.stepz=7"]) == 2
    err = capsys.readouterr().err
    assert "sft.stepz: unknown key" in err


def test_config_missing_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "none.yaml"
    assert main(["config", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"error: config file {missing} not found\n"


def test_model_inspect(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "inspect", str(checkpoint)]) == 0
    lines = capsys.readouterr().out.splitlines()
    info = dict(line.split(None, 1) for line in lines)
    assert info["path"] == str(checkpoint)
    assert info["family"] == "tiny"
    assert info["attention"] == "full"
    # embed 111*32 = 3552; per layer 4*32*32 + 3*32*64 + 2*32 = 10304, x2 = 20608; norm 32;
    # lm_head 111*32 = 3552; total 27744
    assert info["parameters"] == "27744"
    assert info["dtype"] == "float32"
    assert (info["vocab_size"], info["mask_token_id"], info["eos_token_id"], info["pad_token_id"]) == (
        "111", "2", "1", "0")


def test_model_inspect_bfloat16(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["model", "inspect", str(checkpoint), "--dtype", "bfloat16"]) == 0
    info = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert (info["dtype"], info["parameters"]) == ("bfloat16", "27744")


def test_model_inspect_bad_dtype_exits_2(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["model", "inspect", str(checkpoint), "--dtype", "float64"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'float64'" in capsys.readouterr().err


def test_model_inspect_missing_path_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no_such_checkpoint"
    assert main(["model", "inspect", str(missing)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: model path {missing} does not exist")


def test_sample_prints_one_json_line_per_prompt(checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["sample", "--checkpoint", str(checkpoint), "--prompt", "12+7=", "--prompt", "abc",
            "--prompt", "x",
            # 8 tokens in 2 blocks of 4, 4 steps (2 per block): fast on CPU
            "--set", "decoding.gen_length=8", "--set", "decoding.block_length=4", "--set", "decoding.steps=4"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    rows = [json.loads(line) for line in lines]
    assert [r["prompt"] for r in rows] == ["12+7=", "abc", "x"]
    assert all(set(r) == {"prompt", "completion"} and isinstance(r["completion"], str) for r in rows)
    # greedy decoding (temperature 0) with a fixed seed is deterministic
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines() == lines


def test_sample_bad_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", "--checkpoint", str(tmp_path), "--prompt", "a"]) == 2
    assert f"{tmp_path / 'config.json'} is missing" in capsys.readouterr().err
