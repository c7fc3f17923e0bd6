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
``sft.steps`` is the whole budget: lower it to stop early (the schedule follows it).

Data (:func:`load_examples`): any registered task through ``actors.tasks.load_task_data``, the target
built from the recorded solution by :func:`sft_target` (a correct answer in the layout the task's reward
scores), and the prompt rendered exactly as the rollout worker renders it (``actors.tasks.prompts``),
so the SFT policy is the RL starting policy. The synthetic ``copy`` / ``add`` tasks with a
``data.train_path`` read the generic SFT layout instead: JSONL rows ``{prompt, completion}`` with the
prompt through the plain chat template (the same ids, as these tasks carry no format instructions).
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

from actors.decoding.reference import ReferenceDecoder
from actors.generate import chat_prompt_ids, completion_text, stop_ids
from actors.tasks import load_task_data
from actors.tasks.prompts import PLAIN_TASKS, PromptStyle, prompt_ids
from actors.tasks.synthetic import TextExample
from learner.demonstrations import wrong_demonstrations
from learner.estimators.staircase import align_prompt, block_size_of
from system.config import Config, DataConfig, SFTConfig, dump_config
from system.data import DataError, read_jsonl
from system.diffusion import forward_mask, left_pad, positions_from_padding, sample_t
from system.errors import ConfigError
from system.models.base import DiffusionModel
from system.models.build import build_policy, save_policy
from system.progress import Progress
from system.staircase import staircase_logits
from system.types import Example

DEFAULT_STYLE = PromptStyle()


@dataclass
class SFTBatch:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] 1 = real
    completion: torch.Tensor  # [B, L] target tokens, EOS-padded


@dataclass(frozen=True)
class SFTExample:
    """One supervised example of a registered task: the target ``completion`` and the RL ``example``
    whose prompt is rendered as the rollout worker renders it; ``prompt`` is the task text (for display)."""

    id: str
    prompt: str
    completion: str
    example: Example


def _answer_block(answer: str, style: PromptStyle) -> str:
    # The default reward's layout check wants one </reasoning> before the answer; an empty reasoning
    # keeps the target short. With a prefilled "<reasoning>\n" the prompt already opened it.
    opening = "" if style.prefill_reasoning else "<reasoning>\n"
    return f"{opening}</reasoning>\n<answer>\n{answer}\n</answer>"


def sft_target(example: Example, style: PromptStyle = DEFAULT_STYLE) -> str:
    """The completion SFT teaches for ``example``: a correct answer from its recorded solution, in the
    layout its reward parses (sudoku: the solved grid's digits; countdown: the recorded expression;
    copy / add: the bare answer, as their reward compares the whole completion).

    Raises:
        DataError: the example has no recorded solution (countdown rows without ``solution``).
        ConfigError: the task has no SFT target (give JSONL ``{prompt, completion}`` rows instead).
    """
    ref = example.reference
    if example.task in PLAIN_TASKS:
        return str(ref["answer"])
    if example.task == "sudoku":
        return _answer_block(str(ref["solution"]), style)
    if example.task == "countdown":
        if not ref.get("solution"):
            raise DataError(f"countdown example {example.id}: no recorded 'solution' to fine-tune on; add a "
                            "'solution' field to the data rows, or generate the data (data.train_path unset)")
        return _answer_block(str(ref["solution"]), style)
    raise ConfigError(f"task {example.task!r} has no SFT target builder (sudoku, countdown, copy, add have); "
                      "for SFT on it, write JSONL rows {prompt, completion} and use data.task copy with data.train_path")


def load_examples(cfg: DataConfig, sft: SFTConfig | None = None
                  ) -> tuple[list[TextExample | SFTExample], list[TextExample | SFTExample]]:
    """Train / test examples: the task's data with targets from :func:`sft_target`, or (synthetic
    tasks with ``data.train_path``) generic JSONL rows with fields ``prompt`` and ``completion``.
    ``sft.wrong_demos`` makes that share of the training targets wrong (`learner.demonstrations`)."""
    if cfg.train_path is not None and cfg.task in PLAIN_TASKS:

        def read(path: str) -> list[TextExample]:
            rows = read_jsonl(path, required=("prompt", "completion"))
            return [TextExample(str(r.get("id", i)), r["prompt"], r["completion"]) for i, r in enumerate(rows)]

        return read(cfg.train_path), read(cfg.test_path) if cfg.test_path else []
    style = PromptStyle.from_config(cfg)
    train, test = load_task_data(cfg)
    if sft is not None:
        train = wrong_demonstrations(train, sft.wrong_demos, sft.wrong_demo_kind)
    return ([SFTExample(ex.id, ex.prompt, sft_target(ex, style), ex) for ex in train],
            [SFTExample(ex.id, ex.prompt, sft_target(ex, style), ex) for ex in test])


def example_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, example: TextExample | SFTExample, style: PromptStyle, max_prompt_length: int
) -> list[int]:
    """Prompt ids of an SFT example: the rollout worker's rendering for task examples, the plain chat
    template for generic ``{prompt, completion}`` rows."""
    if isinstance(example, SFTExample):
        return prompt_ids(tokenizer, example.example, style, max_prompt_length)
    return chat_prompt_ids(tokenizer, example.prompt, max_prompt_length)


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, examples: list[TextExample | SFTExample], gen_length: int, eos_id: int,
    max_prompt_length: int, style: PromptStyle = DEFAULT_STYLE,
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids EOS-padded to ``gen_length``) per example."""
    encoded = []
    for ex in examples:
        completion = tokenizer(ex.completion, add_special_tokens=False)["input_ids"]
        if len(completion) >= gen_length:
            raise DataError(
                f"example {ex.id}: completion has {len(completion)} tokens, decoding.gen_length is {gen_length}; "
                "raise gen_length or shorten the completion (one EOS must fit)"
            )
        prompt = example_prompt_ids(tokenizer, ex, style, max_prompt_length)
        encoded.append((prompt, completion + [eos_id] * (gen_length - len(completion))))
    return encoded


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> SFTBatch:
    prompt_ids, prompt_mask = left_pad([r[0] for r in rows], pad_id)
    return SFTBatch(prompt_ids, prompt_mask, torch.tensor([r[1] for r in rows], dtype=torch.long, device="cpu"))


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
    model: DiffusionModel, tokenizer: PreTrainedTokenizerBase, examples: list[TextExample | SFTExample], cfg: Config,
    batch_size: int = 32,
) -> tuple[float, list[dict]]:
    """Greedy-decode ``examples`` (prompts rendered as in training) and compare the completion text with
    the target, stripped."""
    decoder = ReferenceDecoder(model, cfg.decoding.model_copy(update={"temperature": 0.0}))
    style, stops = PromptStyle.from_config(cfg.data), stop_ids(model)
    generator = torch.Generator(device=model.device).manual_seed(cfg.seed)  # only random remasking draws
    texts: list[str] = []
    for lo in range(0, len(examples), batch_size):
        chunk = [example_prompt_ids(tokenizer, e, style, cfg.data.max_prompt_length)
                 for e in examples[lo:lo + batch_size]]
        out = decoder.generate(chunk, generator)
        texts += [completion_text(tokenizer, row.tolist(), stops) for row in out.completion_ids]
    samples = [
        {"id": e.id, "prompt": e.prompt, "target": e.completion, "output": text, "correct": text.strip() == e.completion.strip()}
        for e, text in zip(examples, texts)
    ]
    return sum(s["correct"] for s in samples) / max(1, len(samples)), samples


def run_sft(cfg: Config) -> dict:
    """Train, checkpoint and evaluate; returns the summary also written to ``summary.json``."""
    from system.malloc import tune_malloc

    tune_malloc()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    model, tokenizer = build_policy(cfg.model, cfg.seed)
    train, test = load_examples(cfg.data, cfg.sft)
    spec = model.spec
    rows = encode_examples(tokenizer, train, cfg.decoding.gen_length, spec.eos_token_id, cfg.data.max_prompt_length,
                           PromptStyle.from_config(cfg.data))
    s = cfg.sft
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay, betas=cfg.learner.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(s.warmup_steps, s.steps))
    # CPU: it picks the rows (host indices); the masks are drawn on it and moved to the model.
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    model.train()
    bar = Progress(s.steps, "sft", cfg.logging.progress)
    start, losses = time.monotonic(), []
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as metrics:
        for step in range(1, s.steps + 1):
            idx = torch.randint(len(rows), (s.batch_size,), generator=generator, device=generator.device).tolist()
            loss, stats = sft_loss(model, collate([rows[i] for i in idx], spec.pad_token_id), generator,
                                   s.loss_weighting, s.block_staircase)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip))
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            record = {"step": step, "sft/loss": float(loss.detach()), "sft/grad_norm": grad_norm,
                      "sft/lr": scheduler.get_last_lr()[0], **{f"sft/{k}": v for k, v in stats.items()}}
            metrics.write(json.dumps(record) + "\n")
            bar.update(loss=float(loss.detach()))
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


def sft_cache_key(cfg: Config) -> str:
    """A short hash of everything that shapes the SFT checkpoint (the resolved config without
    ``output_dir`` and ``logging``)."""
    import hashlib

    data = cfg.model_dump(mode="json", exclude={"output_dir", "logging"})
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def cached_sft(cfg: Config, cache_root: str | Path) -> dict:
    """:func:`run_sft` into ``cache_root/sft-<key>`` unless a finished run of the same config is there;
    returns its summary with ``cached`` telling which. A run counts as finished once its
    ``summary.json`` is written (the last thing :func:`run_sft` does)."""
    out = Path(cache_root) / f"sft-{sft_cache_key(cfg)}"
    done = out / "summary.json"
    if done.is_file() and (out / "final").is_dir():
        # the checkpoint where it is now: a cache directory may have been moved since it was written
        return {**json.loads(done.read_text()), "checkpoint": str(out / "final"), "cached": True}
    if out.exists():  # an interrupted run: start it over
        import shutil

        shutil.rmtree(out)
    return {**run_sft(cfg.model_copy(update={"output_dir": str(out)})), "cached": False}
