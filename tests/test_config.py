"""Typed config: every shipped YAML loads; errors name the key path, the value and what is allowed;
``--set`` parsing; ``include:``; defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from system.config import Config, ConfigError, apply_override, dump_config, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted([*(REPO / "configs").rglob("*.yaml"), *(REPO / "configs").rglob("*.yml")])


def test_configs_dir_has_yaml() -> None:
    assert len(CONFIG_FILES) >= 1


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_shipped_config_values_and_round_trip(tmp_path: Path) -> None:
    cfg = load_config(REPO / "configs" / "tiny_sft.yaml")
    assert (cfg.data.task, cfg.decoding.gen_length, cfg.decoding.block_length, cfg.decoding.steps) == ("add", 8, 8, 8)
    assert cfg.sft.lr == 2.0e-3
    # keys the file does not give keep their defaults
    assert cfg.learner == Config().learner
    dump_config(cfg, tmp_path / "sub" / "resolved.yaml")
    assert load_config(tmp_path / "sub" / "resolved.yaml") == cfg


def test_defaults_equal_load_none() -> None:
    assert Config() == load_config(None)
    assert load_config(None) == load_config(None, [])


def test_default_decoding_is_consistent() -> None:
    d = Config().decoding
    # 128 / 32 = 4 blocks; 64 steps / 4 blocks = 16 steps per block <= 32
    assert (d.gen_length, d.block_length, d.steps) == (128, 32, 64)


# --------------------------------------------------------------------------- error messages


def _error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return str(info.value)


def test_unknown_key_names_path_and_allowed_keys() -> None:
    msg = _error(["learner.lrr=0.1"])
    assert "learner.lrr: unknown key" in msg
    assert ("allowed keys here: betas, grad_clip, inner_updates, lr, micro_batch_size, warmup_steps, "
            "weight_decay, zero_stage") in msg


def test_unknown_nested_key_lists_keys_of_its_section() -> None:
    msg = _error(["model.tiny.hidden=64"])
    assert "model.tiny.hidden: unknown key" in msg
    assert ("allowed keys here: attention, block_size, hidden_size, intermediate_size, max_position_embeddings, "
            "num_attention_heads, num_hidden_layers, rope_theta") in msg


def test_unknown_top_level_key_lists_sections() -> None:
    msg = _error(["decode.steps=3"])
    assert "decode: unknown key" in msg
    assert ("allowed keys here: algorithm, cluster, data, decoding, learner, logging, model, monitor, output_dir, "
            "reward, rollout, seed, sft") in msg


def test_wrong_type_names_path_and_value() -> None:
    msg = _error(["decoding.steps=abc"])
    assert "decoding.steps = 'abc'" in msg
    assert "valid integer" in msg
    msg = _error(["data.task=[1, 2]"])
    assert "data.task = [1, 2]" in msg
    assert "valid string" in msg


def test_wrong_literal_names_allowed_values() -> None:
    msg = _error(["decoding.remasking=topk"])
    assert "decoding.remasking = 'topk'" in msg
    assert "'low_confidence', 'random', 'threshold' or 'factor'" in msg


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("learner.lr=-1", "learner.lr = -1: Input should be greater than 0"),
        ("learner.lr=2", "learner.lr = 2: Input should be less than or equal to 1"),
        ("decoding.temperature=-0.5", "decoding.temperature = -0.5: Input should be greater than or equal to 0"),
        ("rollout.group_size=1", "rollout.group_size = 1: Input should be greater than or equal to 2"),
        ("learner.zero_stage=4", "learner.zero_stage = 4: Input should be less than or equal to 3"),
        ("decoding.top_p=0", "decoding.top_p = 0: Input should be greater than 0"),
    ],
)
def test_out_of_range(override: str, expected: str) -> None:
    assert expected in _error([override])


def test_errors_are_all_reported_with_source() -> None:
    msg = _error(["learner.lr=-1", "sft.steps=0"])
    assert msg.startswith("invalid configuration (defaults with --set learner.lr=-1 sft.steps=0):")
    assert "learner.lr = -1" in msg
    assert "sft.steps = 0" in msg


# Cross-field rules: each message names the section and the offending numbers.
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["decoding.gen_length=10", "decoding.block_length=4"], "decoding: block_length (4) must divide gen_length (10)"),
        # 128 / 32 = 4 blocks; 6 is not a multiple of 4
        (["decoding.steps=6"], "decoding: steps (6) must be a multiple of the number of blocks gen_length / block_length = 4"),
        # 8 / 4 = 2 blocks; 16 steps / 2 = 8 steps per block > 4
        (["decoding.gen_length=8", "decoding.block_length=4", "decoding.steps=16"],
         "steps per block (8) exceeds block_length (4)"),
        (["model.tiny.num_attention_heads=3"], "model.tiny: num_attention_heads (3) must divide hidden_size (128)"),
        # 32 heads divide 96, but the head dim 96 / 32 = 3 is odd (RoPE needs it even)
        (["model.tiny.hidden_size=96", "model.tiny.num_attention_heads=32"], "head dimension"),
        (["model.tiny.attention=block"], "attention 'block' needs block_size"),
        (["algorithm.clip_low=5", "algorithm.clip_high=5"], "algorithm: clip_low (5.0) must be below clip_high (5.0)"),
        (["algorithm.clip_low=6"], "algorithm: clip_low (6.0) must be below clip_high (5.0)"),
        (["learner.betas=[0.9, 1.0]"], "learner: betas (0.9, 1.0) must each be in [0, 1)"),
    ],
)
def test_cross_field_rules(overrides: list[str], expected: str) -> None:
    assert expected in _error(overrides)


def test_cross_field_rules_accept_valid_combinations() -> None:
    # 8 / 4 = 2 blocks; 8 steps = 4 per block <= 4
    cfg = load_config(None, ["decoding.gen_length=8", "decoding.block_length=4", "decoding.steps=8",
                             "algorithm.clip_low=0.2", "algorithm.clip_high=null"])
    assert (cfg.decoding.gen_length, cfg.decoding.block_length, cfg.decoding.steps) == (8, 4, 8)
    assert (cfg.algorithm.clip_low, cfg.algorithm.clip_high) == (0.2, None)


# --------------------------------------------------------------------------- --set parsing


def test_set_parses_scalars_lists_and_nested_keys() -> None:
    cfg = load_config(None, [
        "seed=7",
        "learner.lr=0.25",
        "learner.betas=[0.5, 0.75]",
        "logging.progress=false",
        "logging.tags=[a, b]",
        "model.tiny.hidden_size=64",
        "model.path=null",
        "output_dir=runs/x=y",
    ])
    assert cfg.seed == 7 and isinstance(cfg.seed, int)
    assert cfg.learner.lr == 0.25
    assert cfg.learner.betas == (0.5, 0.75)
    assert cfg.logging.progress is False
    assert cfg.logging.tags == ["a", "b"]
    assert cfg.model.tiny.hidden_size == 64
    assert cfg.model.tiny.num_attention_heads == 4  # sibling keys keep their defaults
    assert cfg.model.path is None
    assert cfg.output_dir == "runs/x=y"  # split at the first '='


def test_apply_override_builds_nested_dicts_without_mutating_input() -> None:
    data = {"model": {"tiny": {"hidden_size": 32}}}
    out = apply_override(data, "model.tiny.num_hidden_layers=2")
    assert out == {"model": {"tiny": {"hidden_size": 32, "num_hidden_layers": 2}}}
    assert data == {"model": {"tiny": {"hidden_size": 32}}}
    assert apply_override({}, "a.b.c=1.5") == {"a": {"b": {"c": 1.5}}}
    assert apply_override({}, "x=") == {"x": None}
    assert apply_override({}, "x=yes") == {"x": True}  # YAML 1.1 boolean


def test_later_set_wins() -> None:
    assert load_config(None, ["seed=1", "seed=2"]).seed == 2


def test_set_overrides_a_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("seed: 3\nsft:\n  steps: 10\n  batch_size: 2\n")
    cfg = load_config(f, ["sft.steps=20"])
    assert (cfg.seed, cfg.sft.steps, cfg.sft.batch_size) == (3, 20, 2)


@pytest.mark.parametrize(("assignment", "expected"), [
    ("seed", "expected section.key=value"),
    ("=3", "empty key"),
    ("seed=[1, 2", "value is not valid YAML"),
])
def test_bad_set_syntax(assignment: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(None, [assignment])
    assert repr(assignment) in str(info.value)


# --------------------------------------------------------------------------- files and include


def test_include_later_keys_win(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "a.yaml").write_text("seed: 1\nsft:\n  steps: 11\n  batch_size: 3\n")
    (tmp_path / "base" / "b.yaml").write_text("seed: 2\nsft:\n  steps: 22\n")
    (tmp_path / "run.yaml").write_text("include: [base/a.yaml, base/b.yaml]\nsft:\n  lr: 0.5\n")
    cfg = load_config(tmp_path / "run.yaml")
    # b after a: seed 2, steps 22; batch_size only in a (deep merge keeps it); lr from the file itself
    assert (cfg.seed, cfg.sft.steps, cfg.sft.batch_size, cfg.sft.lr) == (2, 22, 3, 0.5)


def test_file_keys_win_over_include_and_include_is_relative(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text("seed: 1\ndata:\n  task: copy\n")
    (tmp_path / "sub" / "run.yaml").write_text("include: base.yaml\nseed: 9\n")
    cfg = load_config(tmp_path / "sub" / "run.yaml")
    assert (cfg.seed, cfg.data.task) == (9, "copy")


def test_nested_include(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("seed: 5\n")
    (tmp_path / "b.yaml").write_text("include: c.yaml\ndata:\n  seed: 6\n")
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    cfg = load_config(tmp_path / "a.yaml")
    assert (cfg.seed, cfg.data.seed) == (5, 6)


def test_include_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("include: b.yaml\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "a.yaml")
    # a.yaml -> b.yaml -> a.yaml: the error is raised on re-entering a.yaml and lists the chain
    assert str(info.value).startswith(f"{tmp_path / 'a.yaml'}: include cycle through [")
    assert str(tmp_path / "b.yaml") in str(info.value)


def test_self_include_is_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("include: a.yaml\nseed: 1\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "a.yaml")


def test_missing_include(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("include: nope.yaml\n")
    with pytest.raises(ConfigError, match="nope.yaml not found"):
        load_config(tmp_path / "a.yaml")


def test_empty_include_value(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("include:\nseed: 4\n")
    assert load_config(tmp_path / "a.yaml").seed == 4


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"config file {missing} not found"


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)


def test_top_level_list(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text("- seed: 1\n- seed: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    assert str(info.value) == f"{f}: the top level must be a mapping of sections, got list"


def test_invalid_yaml(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text("")
    assert load_config(f) == Config()


def test_unknown_key_in_file_names_file(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("sft:\n  stepz: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(f)
    msg = str(info.value)
    assert msg.startswith(f"invalid configuration ({f}):")
    assert "sft.stepz: unknown key (value 3)" in msg


def test_validate_assignment() -> None:
    cfg = Config()
    with pytest.raises(ValueError, match="greater than 0"):
        cfg.learner.lr = 0.0


@pytest.mark.parametrize("assignment", ["algorithm.clip_low=0", "algorithm.clip_low=-0.5", "algorithm.clip_high=.inf"])
def test_a_ratio_bound_the_loss_cannot_use_is_refused_in_one_line(assignment: str) -> None:
    """clip_low=0 used to pass the config and fail at start-up in the loss (log 0): issue 19."""
    msg = _error([assignment])
    assert "\n" not in msg, msg  # one error: one line
    assert f"{assignment.split('=')[0]} = " in msg and ": a ratio bound must be positive and finite" in msg
    assert "or null for no bound" in msg
