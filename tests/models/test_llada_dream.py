"""Native LLaDA and Dream against the golden logits of their original hub code (tiny fixtures), the real-size
parameter names and shapes, special ids, the KV cache, gradient checkpointing and bad checkpoints."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from system.models import CheckpointError, DiffusionModel, KVCache, build_on_meta, get_family, load_model

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "models"
FAMILIES = ("llada", "dream")
CASES = ("full", "padded", "blockcausal", "staircase")
ATOL = 1e-4

pytestmark = pytest.mark.fixtures


def family_dir(family: str) -> Path:
    path = FIXTURES / family
    if not (path / "golden.safetensors").is_file():
        pytest.skip(f"golden fixtures not found at {path} (expected ../shared/fixtures/models beside the repo)")
    return path


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request: pytest.FixtureRequest) -> tuple[str, DiffusionModel, dict[str, torch.Tensor]]:
    path = family_dir(request.param)
    return request.param, load_model(path, dtype="float32"), load_file(str(path / "golden.safetensors"))


def case_inputs(family: str, case: str, g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """The inputs of golden.json's ``calls`` for one case (None = not passed)."""
    if case == "full":
        return {"input_ids": g["input_ids"], "attention_mask": None, "position_ids": None}
    if case == "padded":
        if family == "llada":  # the original takes the 2D mask; its positions stay 0..L-1
            return {"input_ids": g["padded_input_ids"], "attention_mask": g["padded_attention_mask"],
                    "position_ids": None}
        return {"input_ids": g["padded_input_ids"], "attention_mask": g["padded_attention_mask_4d"],
                "position_ids": g["padded_position_ids"]}
    if case == "blockcausal":
        return {"input_ids": g["input_ids"], "attention_mask": g["blockcausal_mask"], "position_ids": None}
    return {"input_ids": g["staircase_input_ids"], "attention_mask": g["staircase_mask"],
            "position_ids": g["staircase_position_ids"]}


def realign(logits: torch.Tensor) -> torch.Tensor:
    """Dream's raw output at i predicts token i+1: the aligned logit of position i is raw i-1."""
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def rows_to_compare(case: str, g: dict[str, torch.Tensor], shifted: bool) -> torch.Tensor | None:
    """Real-token rows of the padded case (pad rows are don't-care); None = all rows."""
    if case != "padded":
        return None
    real = g["padded_attention_mask"].bool()
    return realign(real) if shifted else real


def assert_rows_close(out: torch.Tensor, golden: torch.Tensor, rows: torch.Tensor | None) -> None:
    if rows is not None:
        out, golden = out[rows], golden[rows]
    torch.testing.assert_close(out, golden, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Golden logits


@pytest.mark.parametrize("case", CASES)
def test_adapter_reproduces_golden(loaded, case: str) -> None:
    family, model, g = loaded
    inputs = case_inputs(family, case, g)
    with torch.no_grad():
        out = model(**inputs)
    golden = g[f"logits_{case}"]
    shifted = model.spec.logits_shift
    assert shifted == (family == "dream")
    assert_rows_close(out, realign(golden) if shifted else golden, rows_to_compare(case, g, shifted))


@pytest.mark.parametrize("case", CASES)
def test_raw_network_reproduces_golden(loaded, case: str) -> None:
    family, model, g = loaded
    inputs = case_inputs(family, case, g)
    mask = model.build_attention_mask(inputs["input_ids"], inputs["attention_mask"])
    with torch.no_grad():
        out = model.net(inputs["input_ids"], mask, inputs["position_ids"], None, False)
    assert_rows_close(out, g[f"logits_{case}"], rows_to_compare(case, g, shifted=False))


def test_dream_2d_padding_mask_matches_golden_real_rows() -> None:
    """A 2D mask through the adapter (positions 0..L-1) equals generation_utils' 4D mask + cumsum
    positions on real tokens: left padding shifts every real position by a constant that RoPE cancels."""
    path = family_dir("dream")
    model, g = load_model(path, dtype="float32"), load_file(str(path / "golden.safetensors"))
    with torch.no_grad():
        out = model(g["padded_input_ids"], attention_mask=g["padded_attention_mask"])
    assert_rows_close(out, realign(g["logits_padded"]), rows_to_compare("padded", g, shifted=True))


def test_kv_cache_reproduces_blockcausal_rows(loaded) -> None:
    """Prefill two blocks with store, then run the next two blocks over the cache: equals the
    block-causal golden (the cache holds keys after RoPE)."""
    _, model, g = loaded
    ids, mask = g["input_ids"], g["blockcausal_mask"]
    positions = torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    cache = KVCache()
    with torch.no_grad():
        model.net(ids[:, :8], mask[..., :8, :8], positions[:, :8], cache, True)
        out = model.net(ids[:, 8:16], mask[..., 8:16, :16], positions[:, 8:16], cache, False)
    assert cache.length == 8
    torch.testing.assert_close(out, g["logits_blockcausal"][:, 8:16], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------------
# Real-size structure


@pytest.mark.parametrize("family", FAMILIES)
def test_meta_build_matches_real_param_shapes(family: str) -> None:
    path = family_dir(family)
    config = json.loads((path / "config.real.json").read_text())
    expected = {name: tuple(shape) for name, shape in json.loads((path / "param_shapes.real.json").read_text())["tensors"]}
    net = build_on_meta(config)
    got = {name: tuple(t.shape) for name, t in net.state_dict().items()}
    assert sorted(set(got) - set(expected)) == [] and sorted(set(expected) - set(got)) == []
    assert got == expected
    assert list(net.buffers()) == []  # nothing that loading by name would leave on the meta device


@pytest.mark.parametrize(
    ("family", "ids"),
    [("llada", {"mask_token_id": 126336, "eos_token_id": 126081, "pad_token_id": 126081, "eot_token_id": 126348}),
     ("dream", {"mask_token_id": 151666, "eos_token_id": 151643, "pad_token_id": 151643, "eot_token_id": 151645})],
)
def test_real_config_spec(family: str, ids: dict[str, int]) -> None:
    config = json.loads((family_dir(family) / "config.real.json").read_text())
    spec = get_family(family).spec(config, None)
    assert {k: getattr(spec, k) for k in ids} == ids
    assert spec.attention == "full" and spec.block_size is None
    assert spec.logits_shift == (family == "dream")


TINY_IDS = {"llada": (511, 497), "dream": (504, 500)}  # (mask, eos = pad) of the tiny config.json


def test_tiny_spec_keeps_ids_inside_the_vocabulary(loaded) -> None:
    family, model, _ = loaded
    mask, eos = TINY_IDS[family]
    spec = model.spec
    assert (spec.mask_token_id, spec.eos_token_id, spec.pad_token_id) == (mask, eos, eos)
    assert spec.eot_token_id == eos  # the real <|eot_id|> / <|im_end|> id does not fit a vocabulary of 512
    assert spec.vocab_size == 512


def test_special_ids_from_tokenizer_files(tmp_path: Path) -> None:
    config = json.loads((family_dir("dream") / "config.json").read_text())
    del config["mask_token_id"]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"mask_token": "<|mask|>"}))
    (tmp_path / "added_tokens.json").write_text(json.dumps({"<|mask|>": 504, "<|im_end|>": 502}))
    spec = get_family("dream").spec(config, tmp_path)
    assert (spec.mask_token_id, spec.eot_token_id, spec.eos_token_id) == (504, 502, 500)

    config = json.loads((family_dir("llada") / "config.json").read_text())
    decoder = {"500": {"content": "<|eot_id|>"}, "511": {"content": "<|mdm_mask|>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": decoder}))
    (tmp_path / "added_tokens.json").unlink()
    del config["mask_token_id"]
    spec = get_family("llada").spec(config, tmp_path)
    assert (spec.mask_token_id, spec.eot_token_id) == (511, 500)


def test_config_id_outside_vocabulary_fails() -> None:
    config = json.loads((family_dir("llada") / "config.json").read_text())
    config["mask_token_id"] = 126336
    with pytest.raises(CheckpointError, match="mask_token_id 126336"):
        get_family("llada").spec(config, None)


# ----------------------------------------------------------------------------------------------------
# Training switches


@pytest.mark.parametrize("family", FAMILIES)
def test_gradient_checkpointing_gives_the_same_gradients(family: str) -> None:
    path = family_dir(family)
    g = load_file(str(path / "golden.safetensors"))
    grads = []
    for use_checkpointing in (False, True):
        model = load_model(path, dtype="float32")
        model.train()
        if use_checkpointing:
            model.net.gradient_checkpointing_enable()
        model(g["input_ids"], attention_mask=g["blockcausal_mask"]).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


# ----------------------------------------------------------------------------------------------------
# Bad checkpoints and configs


def copy_checkpoint(family: str, tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    src = family_dir(family)
    dst = tmp_path / family
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    return dst, load_file(str(src / "model.safetensors"))


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_tensor_is_named(family: str, tmp_path: Path) -> None:
    dst, tensors = copy_checkpoint(family, tmp_path)
    name = sorted(tensors)[3]
    del tensors[name]
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=re.escape(name)):
        load_model(dst, dtype="float32")


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_mismatch_names_tensor_expected_and_got(family: str, tmp_path: Path) -> None:
    dst, tensors = copy_checkpoint(family, tmp_path)
    name = next(n for n in sorted(tensors) if tensors[n].dim() == 2)
    expected = list(tensors[name].shape)
    got = [expected[0], expected[1] + 1]
    tensors[name] = torch.zeros(got)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as info:
        load_model(dst, dtype="float32")
    message = str(info.value)
    assert name in message and str(expected) in message and str(got) in message


@pytest.mark.parametrize(
    ("family", "field", "value"),
    [("llada", "block_type", "sequential"), ("llada", "attention_layer_norm", True),
     ("dream", "rope_scaling", {"rope_type": "yarn", "factor": 4.0})],
)
def test_unsupported_config_fails_naming_the_field(family: str, field: str, value: object) -> None:
    config = json.loads((family_dir(family) / "config.json").read_text())
    config[field] = value
    with pytest.raises(CheckpointError, match=field):
        build_on_meta(config)


@pytest.mark.parametrize("family", FAMILIES)
def test_bfloat16_runs_close_to_golden(family: str) -> None:
    """bf16 weights run end to end (RoPE in fp32 for LLaDA, RMSNorm in fp32) and stay near the fp32 golden
    (a loose bound: bf16 rounding, about 0.1 against a logit std of 2.5)."""
    path = family_dir(family)
    model, g = load_model(path, dtype="bfloat16"), load_file(str(path / "golden.safetensors"))
    with torch.no_grad():
        out = model.net(g["staircase_input_ids"], g["staircase_mask"], g["staircase_position_ids"], None, False)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), g["logits_staircase"], atol=0.3, rtol=0)
