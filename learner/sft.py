"""Masked-diffusion supervised fine-tuning (LLaDA SFT): the starting policy of RL.

Each example is ``prompt | completion``, the completion padded with EOS to ``decoding.gen_length`` so
the model learns to end its answers (as LLaDA's SFT does). Per row, t ~ U(0, 1]; each completion token
is masked with probability t; the prompt is never masked and gets no loss. Loss on the masked tokens:

- ``elbo``:  (1/B) sum_rows (1 / (t L)) sum_{masked j} -log p(x0_j | x_t)   (the 1/t-weighted bound,
  normalised by the completion length L as in LLaDA);
- ``mean``:  the per-token mean of -log p over every masked token of the batch.

With ``sft.block_staircase`` (block-attention models) every block b of the completion gets its own
t_b ~ U(0, 1], and one staircase pass (``system.staircase``) scores each block given the clean earlier
blocks, as block decoding sees them; ``elbo`` then weights each masked token by 1 / (t_b L).

AdamW, linear warm-up then cosine decay, global-norm gradient clipping, checkpoints in HF format,
``metrics.jsonl`` in the run directory, and a greedy evaluation on held-out examples at the end.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerBase

from actors.generate import chat_prompt_ids, generate_texts
from actors.tasks.synthetic import TextExample, train_test
from learner.estimators.staircase import align_prompt, block_size_of
from system.config import Config, DataConfig, dump_config
from system.data import DataError, read_jsonl
from system.diffusion import forward_mask, left_pad, positions_from_padding, sample_t
from system.models.base import DiffusionModel
from system.models.build import build_policy, save_policy
from system.progress import Progress
from system.staircase import staircase_logits


@dataclass
class SFTBatch:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] 1 = real
    completion: torch.Tensor  # [B, L] target tokens, EOS-padded


def load_examples(cfg: DataConfig) -> tuple[list[TextExample], list[TextExample]]:
    """Train / test examples from JSONL files (fields ``prompt``, ``completion``) or the generator."""
    if cfg.train_path is None:
        return train_test(cfg.task, cfg.num_train, cfg.num_test, cfg.seed)

    def read(path: str) -> list[TextExample]:
        rows = read_jsonl(path, required=("prompt", "completion"))
        return [TextExample(str(r.get("id", i)), r["prompt"], r["completion"]) for i, r in enumerate(rows)]

    train = read(cfg.train_path)
    test = read(cfg.test_path) if cfg.test_path else []
    return train, test


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, examples: list[TextExample], gen_length: int, eos_id: int,
    max_prompt_length: int,
) -> list[tuple[list[int], list[int]]]:
    encoded = []
    for ex in examples:
        completion = tokenizer(ex.completion, add_special_tokens=False)["input_ids"]
        if len(completion) >= gen_length:
            raise DataError(
                f"example {ex.id}: completion has {len(completion)} tokens, decoding.gen_length is {gen_length}; "
                "raise gen_length or shorten the completion (one EOS must fit)"
            )
        prompt = chat_prompt_ids(tokenizer, ex.prompt, max_prompt_length)
        encoded.append((prompt, completion + [eos_id] * (gen_length - len(completion))))
    return encoded


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> SFTBatch:
    prompt_ids, prompt_mask = left_pad([r[0] for r in rows], pad_id)
    return SFTBatch(prompt_ids, prompt_mask, torch.tensor([r[1] for r in rows], dtype=torch.long))


def block_staircase_logits(
    model: DiffusionModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, target: torch.Tensor,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block SFT input: every block of ``target [B, L]`` masked at its own level t_b ~ U(0, 1], scored in
    one staircase pass (each block given the clean earlier blocks). Returns ``(logits [B, L, V], masked
    [B, L], t of each token's block [B, L])``."""
    bsz, length = target.shape
    block = block_size_of(model.spec, length, "sft.block_staircase", "set sft.block_staircase: false")
    t = sample_t(bsz * (length // block), generator).to(target.device)
    blocks = target.reshape(-1, block)
    noisy, masked = forward_mask(blocks, t, torch.ones_like(blocks, dtype=torch.bool), model.mask_token_id, generator)
    prompt_ids, prompt_mask = align_prompt(prompt_ids, prompt_mask, block, model.spec.pad_token_id)
    logits = staircase_logits(model, prompt_ids, prompt_mask, target, noisy.view(bsz, length), block_size=block)
    return logits, masked.view(bsz, length), t.repeat_interleave(block).view(bsz, length)


def sft_loss(
    model: DiffusionModel, batch: SFTBatch, generator: torch.Generator, weighting: str = "elbo",
    block_staircase: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked-diffusion loss on completion tokens only (see the module docstring for the formulas);
    ``block_staircase``: one noise level per block, see `block_staircase_logits`."""
    device = model.device
    prompt_ids, prompt_mask = batch.prompt_ids.to(device), batch.prompt_mask.to(device)
    target = batch.completion.to(device)
    bsz, length = target.shape
    if block_staircase:
        logits, masked, t = block_staircase_logits(model, prompt_ids, prompt_mask, target, generator)
    else:
        t = sample_t(bsz, generator).to(device)
        noisy, masked = forward_mask(target, t, torch.ones_like(target, dtype=torch.bool), model.mask_token_id,
                                     generator)
        x = torch.cat([prompt_ids, noisy], dim=1)
        attn = torch.cat([prompt_mask, torch.ones_like(noisy)], dim=1)
        logits = model(x, attention_mask=attn, position_ids=positions_from_padding(attn))[:, prompt_ids.shape[1]:]
        t = t[:, None]
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
    nll = nll.view(bsz, length) * masked
    if weighting == "elbo":
        loss = ((nll / t).sum(1) / length).mean()
    elif weighting == "mean":
        loss = nll.sum() / masked.sum().clamp(min=1)
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}; use 'elbo' or 'mean'")
    token_nll = float(nll.detach().sum() / masked.sum().clamp(min=1))
    return loss, {"masked_nll": token_nll, "mask_rate": float(masked.float().mean())}


def lr_lambda(warmup: int, total: int):  # noqa: ANN201 - a LambdaLR schedule
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def exact_match(
    model: DiffusionModel, tokenizer: PreTrainedTokenizerBase, examples: list[TextExample], cfg: Config
) -> tuple[float, list[dict]]:
    """Greedy-decode ``examples`` and compare the completion text with the target, stripped."""
    params = cfg.decoding.model_copy(update={"temperature": 0.0})
    texts, _ = generate_texts(
        model, tokenizer, [e.prompt for e in examples], params, max_prompt_length=cfg.data.max_prompt_length
    )
    samples = [
        {"id": e.id, "prompt": e.prompt, "target": e.completion, "output": text, "correct": text.strip() == e.completion.strip()}
        for e, text in zip(examples, texts)
    ]
    return sum(s["correct"] for s in samples) / max(1, len(samples)), samples


def run_sft(cfg: Config) -> dict:
    """Train, checkpoint and evaluate; returns the summary also written to ``summary.json``."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    model, tokenizer = build_policy(cfg.model, cfg.seed)
    train, test = load_examples(cfg.data)
    spec = model.spec
    rows = encode_examples(tokenizer, train, cfg.decoding.gen_length, spec.eos_token_id, cfg.data.max_prompt_length)
    s = cfg.sft
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=cfg.learner.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(s.warmup_steps, s.steps))
    generator = torch.Generator().manual_seed(cfg.seed)
    model.train()
    bar = Progress(s.steps, "sft", cfg.logging.progress)
    start, losses = time.monotonic(), []
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as metrics:
        for step in range(1, s.steps + 1):
            idx = torch.randint(len(rows), (s.batch_size,), generator=generator).tolist()
            loss, stats = sft_loss(model, collate([rows[i] for i in idx], spec.pad_token_id), generator,
                                   s.loss_weighting, s.block_staircase)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip))
            optimizer.step()
            scheduler.step()
            losses.append(float(loss))
            record = {"step": step, "sft/loss": float(loss), "sft/grad_norm": grad_norm,
                      "sft/lr": scheduler.get_last_lr()[0], **{f"sft/{k}": v for k, v in stats.items()}}
            metrics.write(json.dumps(record) + "\n")
            bar.update(loss=float(loss))
            if s.save_every and step % s.save_every == 0 and step < s.steps:
                save_policy(model, tokenizer, out / f"checkpoint-{step}")
    bar.close()
    model.eval()
    final = save_policy(model, tokenizer, out / "final")
    summary = {"steps": s.steps, "seconds": round(time.monotonic() - start, 2), "checkpoint": str(final),
               "loss_first": losses[0], "loss_last": sum(losses[-10:]) / len(losses[-10:])}
    if s.eval_examples and test:
        accuracy, samples = exact_match(model, tokenizer, test[: s.eval_examples], cfg)
        summary["test_exact_match"] = accuracy
        (out / "samples.json").write_text(json.dumps(samples[:20], indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
