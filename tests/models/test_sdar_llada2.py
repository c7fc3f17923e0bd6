"""SDAR and LLaDA2.0 native networks against the golden logits of the original hub code.

Fixtures: ``../shared/fixtures/models/{sdar,llada2}`` (tiny checkpoints, ``golden.safetensors``,
``golden.json``; see its README). Every golden case is reproduced with the exact inputs that
``golden.json``'s ``calls`` name, within ``atol=1e-4, rtol=0``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from system.models import CheckpointError, DiffusionModel, KVCache, build_on_meta, get_family, load_model

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "models"
ATOL = 1e-4
KV_STEPS = (("prefill", True), ("denoise0", False), ("commit0", True), ("denoise1", False))


def fixture_dir(family: str) -> Path:
    directory = FIXTURES / family
    if not (directory / "golden.safetensors").is_file():
        pytest.skip(
            f"golden fixtures for {family} not found at {directory} (expected ../shared/fixtures/models)"
        )
    return directory


def close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def sdar() -> tuple[DiffusionModel, dict[str, torch.Tensor]]:
    directory = fixture_dir("sdar")
    return load_model(directory), load_file(str(directory / "golden.safetensors"))


@pytest.fixture(scope="module")
def llada2() -> tuple[DiffusionModel, dict[str, torch.Tensor]]:
    directory = fixture_dir("llada2")
    # The goldens use block size 4; LLaDA2's default is 32.
    return load_model(directory, overrides={"block_size": 4}), load_file(
        str(directory / "golden.safetensors")
    )


def check_explicit_masks(model: DiffusionModel, golden: dict[str, torch.Tensor]) -> None:
    """logits_blockcausal and logits_staircase, through the adapter and the bare network."""
    ids, mask = golden["input_ids"], golden["blockcausal_mask"]
    positions = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    s_ids, s_mask, s_pos = (
        golden["staircase_input_ids"],
        golden["staircase_mask"],
        golden["staircase_position_ids"],
    )
    with torch.no_grad():
        close(model(ids, attention_mask=mask), golden["logits_blockcausal"])
        close(model.net(ids, mask, positions, None, False), golden["logits_blockcausal"])
        close(model(s_ids, attention_mask=s_mask, position_ids=s_pos), golden["logits_staircase"])
        close(model.net(s_ids, s_mask, s_pos, None, False), golden["logits_staircase"])


@pytest.mark.fixtures
@pytest.mark.parametrize("family", ["sdar", "llada2"])
def test_golden_blockcausal_and_staircase(family: str, request: pytest.FixtureRequest) -> None:
    model, golden = request.getfixturevalue(family)
    assert model.spec.arch == family and model.attention == "block"
    check_explicit_masks(model, golden)


@pytest.mark.fixtures
@pytest.mark.parametrize("family", ["sdar", "llada2"])
def test_default_mask_is_block_causal(family: str, request: pytest.FixtureRequest) -> None:
    model, golden = request.getfixturevalue(family)
    assert model.block_size == 4
    with torch.no_grad():
        close(model(golden["input_ids"]), golden["logits_blockcausal"])


@pytest.mark.fixtures
def test_sdar_kv_cache_explicit(sdar: tuple[DiffusionModel, dict[str, torch.Tensor]]) -> None:
    """prefill (store) / denoise0 (no store) / commit0 (store) / denoise1, with golden masks and positions."""
    model, golden = sdar
    cache = KVCache()
    lengths = []
    with torch.no_grad():
        for step, store in KV_STEPS:
            logits = model(
                golden[f"kv_{step}_input_ids"],
                attention_mask=golden[f"kv_{step}_attention_mask"],
                position_ids=golden[f"kv_{step}_position_ids"],
                cache=cache,
                store_cache=store,
            )
            close(logits, golden[f"logits_kv_{step}"])
            lengths.append(cache.length)
    assert lengths == [8, 8, 12, 12]  # golden.json checks.kv_cache_len


@pytest.mark.fixtures
def test_sdar_kv_cache_default_masks(sdar: tuple[DiffusionModel, dict[str, torch.Tensor]]) -> None:
    """The adapter's defaults (positions offset by the cache, block-causal mask) are the golden inputs."""
    model, golden = sdar
    cache = KVCache()
    with torch.no_grad():
        for step, store in KV_STEPS:
            ids = golden[f"kv_{step}_input_ids"]
            assert torch.equal(
                model.build_attention_mask(ids, None, cache.length), golden[f"kv_{step}_attention_mask"]
            )
            positions = golden[f"kv_{step}_position_ids"]
            assert torch.equal(positions, (torch.arange(ids.shape[1]) + cache.length).expand_as(positions))
            close(model(ids, cache=cache, store_cache=store), golden[f"logits_kv_{step}"])


@pytest.mark.fixtures
def test_llada2_kv_cache_matches_staircase_rows(
    llada2: tuple[DiffusionModel, dict[str, torch.Tensor]],
) -> None:
    """LLaDA2 has no KV golden (the original cannot use a cache); the SDAR-style cache sequence must give
    the matching rows of the one-call staircase golden: prompt 8 | clean 16 | noisy 16, block 4."""
    model, golden = llada2
    ids, expected = golden["staircase_input_ids"], golden["logits_staircase"]
    steps = (  # (token rows of the staircase, store)
        (range(0, 8), True),  # prefill the prompt
        (range(24, 28), False),  # denoise noisy block 0 at positions 8..11
        (range(8, 12), True),  # commit clean block 0
        (range(28, 32), False),  # denoise noisy block 1 at positions 12..15
    )
    cache = KVCache()
    with torch.no_grad():
        for rows, store in steps:
            index = torch.tensor(list(rows))
            close(model(ids[:, index], cache=cache, store_cache=store), expected[:, index])


@pytest.mark.fixtures
@pytest.mark.parametrize("family", ["sdar", "llada2"])
def test_real_config_names_and_shapes(family: str) -> None:
    directory = fixture_dir(family)
    config = json.loads((directory / "config.real.json").read_text())
    expected = json.loads((directory / "param_shapes.real.json").read_text())["tensors"]
    net = build_on_meta(config)
    built = [(name, list(t.shape)) for name, t in net.state_dict().items()]
    assert dict(built) == {name: shape for name, shape in expected}
    assert len(built) == len(expected)


@pytest.mark.fixtures
@pytest.mark.parametrize("family", ["sdar", "llada2"])
def test_gradient_checkpointing_gives_the_same_gradients(family: str) -> None:
    directory = fixture_dir(family)
    golden = load_file(str(directory / "golden.safetensors"))
    ids = golden["input_ids"][:, :16]
    grads = []
    for enabled in (False, True):
        model = load_model(directory)
        model.train()
        model.net.gradient_checkpointing = enabled
        model(ids).logsumexp(-1).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    assert any(".gate.weight" in n for n in grads[0]) == (family == "llada2")  # the router is trained
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.fixtures
def test_unknown_architecture_lists_known(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NotADiffusionLM"], "vocab_size": 8}))
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    message = str(err.value)
    assert "NotADiffusionLM" in message
    assert "SDARForCausalLM" in message and "LLaDA2MoeModelLM" in message


@pytest.mark.fixtures
@pytest.mark.parametrize("family", ["sdar", "llada2"])
@pytest.mark.parametrize("bad", [0, -4])
def test_invalid_block_size_override_fails_clearly(family: str, bad: int) -> None:
    with pytest.raises(ValueError, match="block_size"):
        load_model(fixture_dir(family), overrides={"block_size": bad})


@pytest.mark.fixtures
@pytest.mark.parametrize("family", ["sdar", "llada2"])
def test_invalid_block_size_in_config_fails_clearly(family: str, tmp_path: Path) -> None:
    directory = fixture_dir(family)
    config = json.loads((directory / "config.json").read_text())
    config["block_size"] = "four"
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(directory / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        load_model(tmp_path)


def test_sdar_spec_defaults(tmp_path: Path) -> None:
    spec = get_family("sdar").spec
    config = {"architectures": ["SDARForCausalLM"], "vocab_size": 151936, "eos_token_id": 151643}
    plain = spec(config, tmp_path / "SDAR-8B-Chat")
    assert (plain.block_size, plain.mask_token_id, plain.eos_token_id, plain.eot_token_id) == (
        4,
        151669,
        151643,
        151645,
    )
    assert spec(config, tmp_path / "SDAR-8B-Chat-b32").block_size == 32
    assert spec({**config, "block_size": 16}, tmp_path / "SDAR-8B-Chat-b32").block_size == 16
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir()
    (tokenizer / "tokenizer_config.json").write_text(
        json.dumps(
            {"added_tokens_decoder": {"151670": {"content": "<|MASK|>"}, "151645": {"content": "<|im_end|>"}}}
        )
    )
    assert spec(config, tokenizer).mask_token_id == 151670
    assert spec({**config, "mask_token_id": 151669}, tokenizer).mask_token_id == 151669


def test_llada2_spec_defaults() -> None:
    spec = get_family("llada2").spec({"architectures": ["LLaDA2MoeModelLM"], "vocab_size": 157184}, None)
    assert (spec.block_size, spec.mask_token_id, spec.eos_token_id, spec.pad_token_id) == (
        32,
        156895,
        156892,
        156892,
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"using_split_qkv_in_self_attention": True}, "using_split_qkv"),
        ({"score_function": "softmax"}, "score_function"),
        ({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_scaling"),
    ],
)
def test_llada2_unsupported_settings_fail_clearly(change: dict, message: str) -> None:
    config = {
        "architectures": ["LLaDA2MoeModelLM"],
        "vocab_size": 64,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "moe_intermediate_size": 8,
        "num_experts": 4,
        "n_group": 2,
        "topk_group": 1,
        "num_experts_per_tok": 2,
        **change,
    }
    with pytest.raises(ValueError, match=message):
        build_on_meta(config)
