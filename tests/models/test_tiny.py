"""The built-in tiny family: build, save/load round trips (ours and transformers' Auto classes),
seeding, padding, block-causal attention, the KV cache, and clear errors for bad checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import system.models  # noqa: F401  registers the tiny family with the Auto classes
from system.config import ModelConfig, TinyModelConfig
from system.diffusion import left_pad, positions_from_padding
from system.models import CheckpointError, DiffusionModel, ModelSpec, build_on_meta, load_model
from system.models.build import load_tokenizer, new_tiny_model, save_policy
from system.models.tiny import TinyDLM

# vocabulary: 8 specials + 6 tags + tab + newline + 95 printable ASCII = 111
VOCAB = 111


def small_cfg(attention: str = "full", block_size: int | None = None) -> ModelConfig:
    return ModelConfig(tiny=TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, attention=attention, block_size=block_size))


def build(attention: str = "full", block_size: int | None = None, seed: int = 0) -> DiffusionModel:
    model, _ = new_tiny_model(small_cfg(attention, block_size), seed)
    return model.eval()


def ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    # ids 8..110 avoid the special tokens
    return torch.randint(8, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[DiffusionModel, Path]:
    model, tokenizer = new_tiny_model(small_cfg(), seed=3)
    path = save_policy(model.eval(), tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny")
    return model, path


# --------------------------------------------------------------------------- build


def test_new_tiny_model_spec_and_size() -> None:
    model = build()
    spec = model.spec
    assert (spec.arch, spec.attention, spec.block_size) == ("tiny", "full", None)
    # ids fixed by the tokenizer: pad 0, eos 1, mask 2, eot 6
    assert (spec.pad_token_id, spec.eos_token_id, spec.mask_token_id, spec.eot_token_id) == (0, 1, 2, 6)
    assert spec.vocab_size == VOCAB
    # embed 111*32 = 3552; per layer: attn 4*32*32 = 4096, mlp 3*32*64 = 6144, 2 norms 64 -> 10304;
    # 2 layers 20608; final norm 32; lm_head 111*32 = 3552; total 3552 + 20608 + 32 + 3552 = 27744
    assert model.num_parameters() == 27744
    assert model.dtype == torch.float32
    logits = model(ids(2, 6))
    assert logits.shape == (2, 6, VOCAB)


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a, b, c = build(seed=0), build(seed=0), build(seed=1)
    assert torch.equal(before, torch.get_rng_state())
    sa, sb, sc = a.net.state_dict(), b.net.state_dict(), c.net.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embed_tokens.weight"], sc["embed_tokens.weight"])


def test_spec_overrides_from_model_config() -> None:
    cfg = small_cfg()
    cfg.mask_token_id = 7
    cfg.eos_token_id = 6
    model, _ = new_tiny_model(cfg, 0)
    assert (model.spec.mask_token_id, model.spec.eos_token_id, model.spec.pad_token_id) == (7, 6, 0)


def test_build_on_meta() -> None:
    config = {"architectures": ["TinyDLM"], "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3,
              "num_attention_heads": 2, "intermediate_size": 24}
    net = build_on_meta(config)
    assert isinstance(net, TinyDLM)
    params = list(net.parameters())
    assert params and all(p.is_meta for p in params)
    assert len(net.layers) == 3
    assert net.embed_tokens.weight.shape == (50, 16)


def test_build_on_meta_unknown_architecture() -> None:
    with pytest.raises(CheckpointError, match="known architectures"):
        build_on_meta({"architectures": ["Nope"]})


# --------------------------------------------------------------------------- save / load


def test_save_then_load_model_bit_identical(saved: tuple[DiffusionModel, Path]) -> None:
    model, path = saved
    loaded = load_model(path)
    assert loaded.spec == model.spec
    assert loaded.dtype == torch.float32
    x = ids(2, 9, seed=1)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_save_then_auto_model_from_pretrained(saved: tuple[DiffusionModel, Path]) -> None:
    model, path = saved
    config = transformers.AutoConfig.from_pretrained(str(path))
    assert config.model_type == "stabledrl-tiny"
    for auto in (transformers.AutoModel, transformers.AutoModelForMaskedLM):
        net = auto.from_pretrained(str(path)).eval()  # no trust_remote_code
        assert isinstance(net, TinyDLM)
        x = ids(2, 9, seed=2)
        with torch.no_grad():
            assert torch.equal(net(x), model(x))


def test_saved_tokenizer_reloads(saved: tuple[DiffusionModel, Path]) -> None:
    _, path = saved
    _, original = new_tiny_model(small_cfg(), 0)
    for tok in (load_tokenizer(path), transformers.AutoTokenizer.from_pretrained(str(path))):
        assert len(tok) == VOCAB
        assert (tok.pad_token_id, tok.eos_token_id, tok.mask_token_id) == (0, 1, 2)
        text = "<answer>12+7=19</answer>\n"
        assert tok.encode(text) == original.encode(text)
        assert tok.decode(tok.encode(text)) == text
        chat = [{"role": "user", "content": "hi"}]
        assert (tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
                == "<|user|>hi<|eot|><|assistant|>")


def test_load_model_dtype_and_overrides(saved: tuple[DiffusionModel, Path]) -> None:
    _, path = saved
    model = load_model(path, dtype="bfloat16", overrides={"mask_token_id": 5, "eos_token_id": None})
    assert model.dtype == torch.bfloat16
    assert (model.spec.mask_token_id, model.spec.eos_token_id) == (5, 1)  # None leaves the default


# --------------------------------------------------------------------------- masks and positions


def test_left_padding_matches_unpadded_rows() -> None:
    model = build()
    rows = [ids(1, 7, seed=3)[0].tolist(), ids(1, 4, seed=4)[0].tolist()]
    x, padding = left_pad(rows, pad_id=0)
    with torch.no_grad():
        batched = model(x, attention_mask=padding, position_ids=positions_from_padding(padding))
        for i, row in enumerate(rows):
            alone = model(torch.tensor([row]))[0]
            real = batched[i, x.shape[1] - len(row):]
            torch.testing.assert_close(real, alone, atol=1e-5, rtol=0)
    assert torch.isfinite(batched).all()  # pad query rows attend to themselves, never NaN


def test_all_ones_padding_mask_is_full_attention() -> None:
    model = build()
    x = ids(2, 6)
    with torch.no_grad():
        assert torch.equal(model(x, attention_mask=torch.ones(2, 6, dtype=torch.long)), model(x))


def test_padding_mask_is_needed() -> None:
    # Guards the test above: without the padding mask the real tokens attend to the pads.
    model = build()
    row = ids(1, 4, seed=4)[0].tolist()
    x, padding = left_pad([row, [9] * 7], pad_id=0)
    with torch.no_grad():
        unmasked = model(x, position_ids=positions_from_padding(padding))[0, 3:]
        alone = model(torch.tensor([row]))[0]
    assert (unmasked - alone).abs().max().item() > 1e-3


def test_block_attention_is_block_causal() -> None:
    model = build("block", 4)
    assert (model.attention, model.block_size) == ("block", 4)
    x = ids(1, 16, seed=5)
    y = x.clone()
    y[0, 9] = 8 if int(x[0, 9]) != 8 else 9  # a token in block 2 (positions 8..11)
    with torch.no_grad():
        lx, ly = model(x), model(y)
    assert torch.equal(lx[:, :8], ly[:, :8])  # blocks 0-1 never see block 2
    assert (lx[:, 8:12] - ly[:, 8:12]).abs().max().item() > 1e-4  # block 2 sees itself
    assert (lx[:, 12:16] - ly[:, 12:16]).abs().max().item() > 1e-4  # block 3 sees block 2


def test_full_attention_sees_everything() -> None:
    model = build()
    x = ids(1, 16, seed=5)
    y = x.clone()
    y[0, 9] = 8 if int(x[0, 9]) != 8 else 9
    with torch.no_grad():
        assert (model(x)[:, :8] - model(y)[:, :8]).abs().max().item() > 1e-4


def test_kv_cache_matches_no_cache_forward() -> None:
    from system.models import KVCache

    model = build("block", 4)
    x = ids(2, 16, seed=6)
    with torch.no_grad():
        full = model(x)
        cache = KVCache()
        prefill = model(x[:, :8], cache=cache, store_cache=True)
        assert cache.length == 8
        step = model(x[:, 8:12], cache=cache)  # positions default to 8..11
        assert cache.length == 8  # store_cache=False does not grow the cache
    torch.testing.assert_close(prefill, full[:, :8], atol=1e-5, rtol=0)
    torch.testing.assert_close(step, full[:, 8:12], atol=1e-5, rtol=0)


def test_4d_mask_wrong_shape_raises() -> None:
    model = build()
    x = ids(2, 6)
    with pytest.raises(ValueError, match=r"4D attention mask has shape \(2, 1, 6, 5\); expected \[2 or 1, 1, 6, 6\]"):
        model(x, attention_mask=torch.ones(2, 1, 6, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="must be boolean"):
        model(x, attention_mask=torch.ones(2, 1, 6, 6))
    with pytest.raises(ValueError, match="2D"):
        model(x, attention_mask=torch.ones(2, 6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="2D padding mask has length 5; expected 6"):
        model(x, attention_mask=torch.ones(2, 5, dtype=torch.long))


def test_4d_mask_wrong_batch_raises_value_error() -> None:
    model = build()
    with pytest.raises(ValueError, match="4D attention mask"):
        model(ids(2, 6), attention_mask=torch.ones(3, 1, 6, 6, dtype=torch.bool))


def test_4d_mask_equivalent_to_padding() -> None:
    model = build()
    x = ids(2, 5)
    padding = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    mask4 = padding.bool()[:, None, None, :].expand(2, 1, 5, 5).clone()
    mask4[0, 0, 0, 0] = mask4[0, 0, 1, 1] = True  # pads attend to themselves, as padding_to_4d does
    with torch.no_grad():
        assert torch.equal(model(x, attention_mask=mask4), model(x, attention_mask=padding))


# --------------------------------------------------------------------------- bad checkpoints


def test_load_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope"
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value) and "does not exist" in str(info.value)


def test_load_file_not_directory(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    assert str(path) in str(info.value) and "is not a directory" in str(info.value)


def test_load_directory_without_config(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path)
    assert f"{tmp_path / 'config.json'} is missing" in str(info.value)


def test_load_invalid_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(tmp_path)


def test_load_config_without_weights(saved: tuple[DiffusionModel, Path], tmp_path: Path) -> None:
    _, path = saved
    shutil.copy(path / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path)
    assert str(info.value) == (
        f"{tmp_path} has no weights: expected model.safetensors or model.safetensors.index.json"
    )


def test_load_pytorch_bin_only_hints_conversion(saved: tuple[DiffusionModel, Path], tmp_path: Path) -> None:
    _, path = saved
    shutil.copy(path / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"found \['pytorch_model.bin'\]: convert them to safetensors"):
        load_model(tmp_path)


def test_load_unknown_architecture(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path)
    msg = str(info.value)
    assert "['GPT2LMHeadModel'] is not one stabledrl implements" in msg
    assert ("known architectures: ['DiffusionGemmaForBlockDiffusion', 'DreamModel', 'LLaDA2MoeModelLM', 'LLaDAModelLM', 'SDARForCausalLM', "
            "'TinyDLM']") in msg


def _spec(**kwargs: object) -> ModelSpec:
    fields = {"arch": "tiny", "attention": "full", "mask_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
              "vocab_size": VOCAB, **kwargs}
    return ModelSpec(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"mask_token_id": VOCAB}, r"mask_token_id 111 is outside the vocabulary \[0, 111\)"),
        ({"mask_token_id": -1}, r"mask_token_id -1 is outside the vocabulary \[0, 111\)"),
        ({"attention": "block"}, "a block-attention model needs block_size >= 1, got None"),
        ({"attention": "block", "block_size": 0}, "a block-attention model needs block_size >= 1, got 0"),
    ],
)
def test_model_spec_invalid(fields: dict, expected: str) -> None:
    net = build().net
    # The spec is validated by the time a DiffusionModel wraps it (at construction of the spec, or of the
    # model once overrides are applied).
    with pytest.raises(ValueError, match=expected):
        DiffusionModel(net, _spec(**fields))


def test_load_model_mask_override_outside_vocab(saved: tuple[DiffusionModel, Path]) -> None:
    _, path = saved
    with pytest.raises(ValueError, match="mask_token_id 500 is outside the vocabulary"):
        load_model(path, overrides={"mask_token_id": 500})


def test_load_checkpoint_with_tensor_removed(saved: tuple[DiffusionModel, Path], tmp_path: Path) -> None:
    _, path = saved
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["layers.0.attn.q_proj.weight"]
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"layers\.0\.attn\.q_proj\.weight"):
        load_model(bad)


def test_load_checkpoint_with_wrong_shape(saved: tuple[DiffusionModel, Path], tmp_path: Path) -> None:
    _, path = saved
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    config = json.loads((bad / "config.json").read_text())
    config["intermediate_size"] = 48  # weights were saved with 64
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"mlp\.\w+_proj\.weight has shape \[\d+, \d+\], expected"):
        load_model(bad)
