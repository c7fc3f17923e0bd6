"""The DiffusionGemma family: transformers' own ``DiffusionGemmaForBlockDiffusion`` behind the
`DiffusionModel` adapter, as far as that contract fits (the model is not re-implemented here).

DiffusionGemma is a *uniform-noise* block-diffusion model (docs/uniform_diffusion.md): a causal
encoder pass writes the clean context into a KV cache, and a bidirectional decoder pass over one
canvas (block) of ``canvas_length`` tokens reads that cache. One weight set serves both passes (the
encoder's text weights are tied to the decoder's); only the decoder owns the self-conditioning MLP.

Where the `DiffusionModel` contract does not fit, and what this adapter does instead:

- **No mask token.** A canvas starts as tokens drawn uniformly from the vocabulary and non-accepted
  positions are re-noised with fresh uniform tokens. ``spec.mask_token_id`` holds the pad id only
  because `ModelSpec` requires a valid id; ``spec.extra["noise"] == "uniform"`` says that no position
  is ever masked. Every mask-based decoder and estimator refuses this family (`forward` raises).
- **Two passes, not one.** ``forward(input_ids, ...)`` of the contract (one pass, logits aligned to
  the input) has no meaning for an encoder/decoder pair, so it raises with the methods to use:
  :meth:`DiffusionGemmaAdapter.encode` (context -> cache) and :meth:`DiffusionGemmaAdapter.denoise`
  (canvas + cache -> logits), or the one-pass staircase layout of `learner.estimators.uniform`.
- **The cache** is transformers' ``Cache`` (not our `KVCache`): the encoder writes it, the decoder
  only reads it; sliding-window layers of a config-built ``DynamicCache`` keep the last W-1 tokens.
- **Self-conditioning**: the decoder also takes the previous step's logits; callers pass them.
- **Images**: the vision tower is built and loaded (it is part of the checkpoint) but only text is
  used: no pixel values are ever passed.

Weights: ``net.state_dict()`` (what the weight transports carry) names the shared text weights twice,
under ``model.encoder.language_model.*`` and ``model.decoder.*``, plus the tied ``lm_head.weight``;
loading such a state dict writes the same tensor through each name, so the ties survive.
``save_pretrained`` writes each tied tensor once (under ``model.decoder.*``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion
from transformers import logging as hf_logging
from transformers.cache_utils import Cache, DynamicCache

from system.errors import CheckpointError
from system.models.base import DiffusionModel, KVCache, ModelSpec
from system.models.registry import Family

ARCHITECTURE = "DiffusionGemmaForBlockDiffusion"


def tiny_config(
    vocab_size: int = 64, canvas_length: int = 8, sliding_window: int = 64, num_layers: int = 2,
    hidden_size: int = 32, eos_token_id: int = 1, pad_token_id: int = 0,
) -> DiffusionGemmaConfig:
    """A tiny random-init config (text use, a 1-layer 16-wide vision tower): every field the model
    needs in practice (MoE sizes, ``global_head_dim``) set small; the last layer is full attention."""
    layer_types = ["sliding_attention"] * (num_layers - 1) + ["full_attention"]
    text = {
        "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 16, "global_head_dim": 16, "num_experts": 2, "top_k_experts": 1,
        "moe_intermediate_size": hidden_size, "layer_types": layer_types, "sliding_window": sliding_window,
        "max_position_embeddings": 1024, "pad_token_id": pad_token_id, "eos_token_id": eos_token_id,
        "bos_token_id": 2,
    }
    vision = {"model_type": "gemma4_vision", "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "patch_size": 4}
    return DiffusionGemmaConfig(
        text_config=text, vision_config=vision, canvas_length=canvas_length, image_token_id=vocab_size - 1,
        boi_token_id=vocab_size - 2, eoi_token_id=vocab_size - 3, architectures=[ARCHITECTURE],
    )


def _hf_config(config: dict) -> DiffusionGemmaConfig:
    body = {k: v for k, v in config.items() if k != "model_type"}
    return DiffusionGemmaConfig(**body)


def _build(config: dict) -> nn.Module:
    hf = _hf_config(config)
    hf._attn_implementation = "sdpa"
    return DiffusionGemmaForBlockDiffusion(hf)


def _first_id(value: object, default: int) -> int:
    if isinstance(value, list):
        return int(value[0]) if value else default
    return default if value is None else int(value)


def _spec(config: dict, directory: Path | None) -> ModelSpec:
    hf = _hf_config(config)
    text = hf.text_config
    pad = _first_id(text.pad_token_id, 0)
    eos = _first_id(text.eos_token_id, pad)
    return ModelSpec(
        arch="diffusion_gemma", attention="block", block_size=int(hf.canvas_length), vocab_size=int(text.vocab_size),
        mask_token_id=pad, eos_token_id=eos, pad_token_id=pad, eot_token_id=eos,
        extra={"noise": "uniform", "sliding_window": int(text.sliding_window)},
    )


def _load(directory: Path, config: dict, dtype: torch.dtype, device: str) -> nn.Module:
    """``from_pretrained`` (offline), refusing a checkpoint with missing, unexpected or misshapen
    tensors (transformers would only log them and initialise the missing ones at random)."""
    hf_logging.disable_progress_bar()
    net, info = DiffusionGemmaForBlockDiffusion.from_pretrained(
        str(directory), dtype=dtype, local_files_only=True, attn_implementation="sdpa", output_loading_info=True,
    )
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        names = sorted(str(n) for n in info.get(kind) or [])
        if names:
            raise CheckpointError(
                f"{directory}: {len(names)} {kind.replace('_', ' ')} in the checkpoint: {names[:5]}; "
                "is this checkpoint of the architecture and sizes named in config.json?"
            )
    return net.to(device)


class DiffusionGemmaAdapter(DiffusionModel):
    """`DiffusionModel` over ``DiffusionGemmaForBlockDiffusion``; see the module docstring.

    Shapes: B rows, P context tokens, C canvas tokens, V vocabulary.
    """

    @property
    def canvas_length(self) -> int:
        assert self.spec.block_size is not None
        return self.spec.block_size

    @property
    def hf_config(self) -> DiffusionGemmaConfig:
        return self.net.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                cache: KVCache | None = None, store_cache: bool = False) -> Tensor:
        raise NotImplementedError(
            "diffusion_gemma is a uniform-noise encoder/decoder model with no mask token: a one-pass masked "
            "forward has no meaning for it. Use DiffusionGemmaAdapter.encode/denoise, the decoder "
            "actors.decoding.uniform_block, and the estimator 'uniform_elbo'"
        )

    def new_cache(self, keep_all: bool = False) -> Cache:
        """A transformers ``DynamicCache``: built from the config (sliding layers keep W-1 tokens, as
        ``generate`` does) or, with ``keep_all``, config-less (every token kept: the staircase layout)."""
        return DynamicCache() if keep_all else DynamicCache(config=self.hf_config.get_text_config(decoder=True))

    def encode(self, context_ids: Tensor, context_mask: Tensor, cache: Cache, position_ids: Tensor) -> Cache:
        """Run the causal encoder over new context tokens and append their keys/values to ``cache``.

        Args:
            context_ids: ``[B, P]`` tokens not yet in the cache.
            context_mask: ``[B, cache + P]`` bool padding mask over all cached and new tokens.
            position_ids: ``[1 | B, P]`` positions of the new tokens.
        """
        return self.encode_hidden(context_ids, context_mask, cache, position_ids)[0]

    def encode_hidden(self, context_ids: Tensor, context_mask: Tensor, cache: Cache, position_ids: Tensor
                      ) -> tuple[Cache, Tensor]:
        """:meth:`encode`, also returning the encoder's last hidden states ``[B, P, H]`` (for an AR loss)."""
        encoder = self.net.model.encoder
        dummy = torch.empty((context_ids.shape[0], context_ids.shape[1], 0), dtype=self.dtype,
                            device=context_ids.device)
        masks = encoder.create_masks_for_generate(
            config=self.hf_config, inputs_embeds=dummy, attention_mask=context_mask.bool(), cache=cache,
            position_ids=position_ids, mm_token_type_ids=None,
        )
        out = encoder(input_ids=context_ids, attention_mask=masks, cache=cache, position_ids=position_ids)
        return out.cache, out.last_hidden_state

    def head_logits(self, hidden: Tensor) -> Tensor:
        """float32 soft-capped logits of hidden states, as the model's own head computes them."""
        cap = self.net.final_logit_softcapping
        logits = self.net.lm_head(hidden).float()
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def decoder_masks(self, canvas: Tensor, cache: Cache, key_mask: Tensor) -> dict:
        """The decoder's mask dict for a canvas over ``cache``, as ``generate`` builds it.

        ``key_mask``: ``[B, cache + C]`` bool padding mask (True = real token)."""
        return self.net.model.decoder.create_diffusion_decoder_attention_mask(
            config=self.hf_config, inputs_embeds=canvas.unsqueeze(-1).to(self.dtype), cache=cache,
            decoder_attention_mask=key_mask.bool(),
        )

    def denoise(self, canvas: Tensor, cache: Cache, position_ids: Tensor, masks: dict | Tensor | None,
                self_conditioning_logits: Tensor | None = None, self_conditioning_mask: Tensor | None = None
                ) -> Tensor:
        """Raw float32 logits ``[B, C, V]`` (soft-capped, temperature 1) of one decoder pass.

        Args:
            canvas: ``[B, C]`` noisy tokens; position_ids ``[1 | B, C]``.
            masks: the decoder mask dict (:meth:`decoder_masks`), a 2D padding mask or None.
            self_conditioning_logits: the previous step's logits ``[B, C, V]`` or None (zeros).
            self_conditioning_mask: ``[B]`` bool, False zeroes a row's self-conditioning (training).
        """
        out = self.net(cache=cache, decoder_input_ids=canvas, decoder_position_ids=position_ids,
                       decoder_attention_mask=masks, self_conditioning_logits=self_conditioning_logits,
                       self_conditioning_mask=self_conditioning_mask)
        return out.logits


def build_tiny(seed: int = 0, **sizes: int) -> DiffusionGemmaAdapter:
    """A seeded random tiny DiffusionGemma (see :func:`tiny_config`), without touching the global RNG."""
    config = tiny_config(**sizes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _build(config.to_dict())
    return DiffusionGemmaAdapter(net.eval(), _spec(config.to_dict(), None))


def save_tiny(path: str | Path, seed: int = 0, canvas_length: int = 8) -> Path:
    """Save a tiny random DiffusionGemma over the built-in tokenizer's vocabulary (with that tokenizer) to
    ``path``: a checkpoint directory ``model.path`` can name (configs/diffusion_gemma_smoke.yaml). Its
    image-token ids (the last three of the vocabulary) are never used: text only."""
    from system.models.tokenizer import build_tokenizer, special_ids

    tokenizer = build_tokenizer()
    ids = special_ids(tokenizer)
    model = build_tiny(seed, vocab_size=ids["vocab_size"], canvas_length=canvas_length,
                       eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
    path = Path(path)
    model.net.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


FAMILY = Family(name="diffusion_gemma", architectures=(ARCHITECTURE,), build_net=_build, spec=_spec,
                load_net=_load, adapter=DiffusionGemmaAdapter)


if __name__ == "__main__":  # python -m system.models.diffusion_gemma DIR: the smoke config's checkpoint
    import sys

    print(save_tiny(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny_diffusion_gemma"))
