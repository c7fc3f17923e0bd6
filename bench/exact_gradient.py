"""Does the pipeline's update follow the true policy gradient? A case small enough to know the answer.

The policy is the built-in tiny dLLM (random init) decoding L = 2 completion tokens in 2 steps (one
token a step, temperature 1) over its whole vocabulary. For two tokens the sampler's distribution
P_theta(o | q) can be written down exactly (`exact_distribution`), so the expected reward
J(theta) = mean_q sum_o P_theta(o | q) R(q, o) and its gradient are exact (autograd through the
enumeration; the low-confidence remasking's choice of position is a step function of theta and has
zero derivative almost everywhere).

Measured for each setting (estimator, loss, remasking), at one theta:

- ``cosine``: cosine between the mean of ``--batches`` pipeline gradients (rollouts by the reference
  decoder, rewards, group advantages, the estimator's draws for new and old, the loss, backward: the
  learner's own functions) and the exact ascent direction grad J. An unbiased pipeline tends to 1 as
  the batches grow; a biased surrogate (an ELBO in place of log P) stays below;
- ``cosine_one_batch``: the mean cosine of a single batch's gradient (signal against noise);
- ``snr``: |E g| / sqrt(E |g - E g|^2) over the batches;
- ``reinforce_cosine_one_batch``: the same for the control below (a batch of the same size drawn from
  the exact law, scored with the exact log-likelihood): what the estimator's own noise costs;
- ``sampler_reward_z`` / ``sampler_tv_first_token``: the decoder's samples (all batches) against the
  exact distribution: the mean reward's z-score against J, and the first token's marginal (with
  ``sampler_tv_noise``, what sampling error alone gives): the enumeration is the sampler's law;
- ``norm_ratio``: |E g| / |grad J|: an unbiased group-baseline estimate has (G - 1) / G times grad J.

Then ``--steps`` updates from the same init with the same AdamW settings, the exact J after each
(``curves``, for the settings in ``--train``): the real `Learner` (DeepSpeed, gradient clipping) on the
decoder's batches; exact gradient ascent; and the control that tells noise from bias, REINFORCE with
the exact log-likelihood on batches of the same size drawn from the exact law.

    python bench/exact_gradient.py [--batches 64] [--steps 60] [--lr 3e-3]

Progress goes to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch
from torch import Tensor

from actors.decoding.reference import ReferenceDecoder
from learner.batch import build_train_batch, loss_input, micro_batches
from learner.estimators import estimator_from_config
from learner.losses import build_loss
from system.config import Config, load_config
from system.models.base import DiffusionModel
from system.models.build import new_tiny_model
from system.models.tokenizer import CHARS, SPECIALS, TAGS
from system.types import Example, Rollout, RolloutGroup

GEN_LENGTH = 2
# Each prompt's reward: the share of the two completion tokens in its target set.
TARGETS = {"digits": "0123456789", "vowels": "aeiouAEIOU", "signs": "+-*/=<>%&|", "upper": "ABCDEFGHIJ"}
FIRST_CHAR = len(SPECIALS) + len(TAGS)

SETTINGS: dict[str, dict[str, Any]] = {  # label -> algorithm / decoding fields
    "stabledrl+agrpo(all steps)/random": {"algorithm": {"name": "stabledrl", "estimator": "agrpo",
                                                        "agrpo_num_steps": GEN_LENGTH}, "remasking": "random"},
    "agrpo/random": {"algorithm": {"name": "agrpo", "estimator": "agrpo", "agrpo_num_steps": GEN_LENGTH},
                     "remasking": "random"},
    "agrpo/low_confidence": {"algorithm": {"name": "agrpo", "estimator": "agrpo",
                                           "agrpo_num_steps": GEN_LENGTH}, "remasking": "low_confidence"},
    "stabledrl+elbo_mean/low_confidence": {"algorithm": {"name": "stabledrl", "estimator": "elbo"},
                                           "remasking": "low_confidence"},
    "stabledrl+elbo_1/t/low_confidence": {"algorithm": {"name": "stabledrl", "estimator": "elbo",
                                                        "elbo_weighting": "one_over_t"},
                                          "remasking": "low_confidence"},
    "stabledrl+elbo_mean/random": {"algorithm": {"name": "stabledrl", "estimator": "elbo"}, "remasking": "random"},
    "grpo(token)+elbo_mean/low_confidence": {"algorithm": {"name": "grpo", "estimator": "elbo"},
                                             "remasking": "low_confidence"},
    "diffu_grpo+mean_field/low_confidence": {"algorithm": {"name": "diffu_grpo", "estimator": "mean_field",
                                                           "diffu_grpo_kl_beta": 0.0},
                                             "remasking": "low_confidence"},
}


def make_config(setting: dict[str, Any], args: argparse.Namespace) -> Config:
    overrides = [f"seed={args.seed}", "model.tiny.hidden_size=32", "model.tiny.num_hidden_layers=2",
                 "model.tiny.intermediate_size=64", f"decoding.gen_length={GEN_LENGTH}",
                 f"decoding.block_length={GEN_LENGTH}", f"decoding.steps={GEN_LENGTH}", "decoding.temperature=1.0",
                 f"decoding.remasking={setting['remasking']}", "decoding.stop_at_eos=false",
                 f"rollout.group_size={args.group_size}", f"rollout.prompts_per_step={len(TARGETS)}",
                 f"learner.lr={args.lr}", f"learner.micro_batch_size={args.group_size * len(TARGETS)}",
                 "learner.betas=[0.9, 0.99]", "learner.grad_clip=1.0", "cluster.mode=local"]
    overrides += [f"algorithm.{k}={v}" for k, v in setting["algorithm"].items()]
    return load_config(None, overrides)


def prompts(tokenizer: Any) -> list[list[int]]:
    return [tokenizer.encode(f"{name}:", add_special_tokens=False) for name in TARGETS]


def reward_table(vocab: int) -> Tensor:
    """``[Q, V]``: 1 where token v is in prompt q's target set."""
    table = torch.zeros(len(TARGETS), vocab, dtype=torch.float64)
    for q, chars in enumerate(TARGETS.values()):
        for c in chars:
            table[q, FIRST_CHAR + CHARS.index(c)] = 1.0
    return table


def rewards_of(table: Tensor, q: int, completion: Tensor) -> Tensor:
    """Per-row reward of completions ``[N, 2]`` for prompt q: the share of tokens in the target set."""
    return table[q][completion].mean(-1)


def exact_distribution(model: DiffusionModel, prompt: list[int], remasking: str) -> Tensor:
    """``P[a, b]`` = probability that the reference decoder (L = 2, 2 steps, temperature 1, no
    filtering) returns the completion (a, b); differentiable in the model's parameters.

    p1, p2: the two positions' distributions with both masked; c2[a] the second position's given a first
    token a, c1[b] the first's given b. random: the revealed position is a fair coin. low_confidence:
    each position samples x0 from its distribution, the higher confidence p_j(x0_j) is revealed and
    position 1 wins ties (the decoder's stable sort), so position 1 is revealed with a with probability
    p1(a) * P(p2(x0_2) <= p1(a)), position 2 with b with p2(b) * P(p1(x0_1) < p2(b)).
    """
    mask_id, vocab = model.mask_token_id, model.spec.vocab_size
    q = torch.tensor(prompt, dtype=torch.long, device=model.device)
    tokens = torch.arange(vocab, device=model.device)
    rows = torch.cat([torch.full((1, 2), mask_id, device=model.device),  # both masked
                      torch.stack([tokens, torch.full_like(tokens, mask_id)], 1),  # first revealed
                      torch.stack([torch.full_like(tokens, mask_id), tokens], 1)])  # second revealed
    x = torch.cat([q.expand(rows.shape[0], -1), rows], 1)
    pos = torch.arange(x.shape[1], device=model.device).expand_as(x)
    logits = model(x, attention_mask=torch.ones_like(x), position_ids=pos).double()[:, -2:]
    probs = torch.softmax(logits, -1)
    p1, p2 = probs[0, 0], probs[0, 1]
    c2, c1 = probs[1:1 + vocab, 1], probs[1 + vocab:, 0]  # c2[a, b], c1[b, a]
    if remasking == "random":
        first1, first2 = 0.5 * p1, 0.5 * p2
    else:
        d1, d2 = p1.detach(), p2.detach()
        first1 = p1 * ((d2[None, :] <= d1[:, None]) * d2[None, :]).sum(1)
        first2 = p2 * ((d1[None, :] < d2[:, None]) * d1[None, :]).sum(1)
    return first1[:, None] * c2 + (first2[:, None] * c1).T


def expected_reward(model: DiffusionModel, qs: list[list[int]], table: Tensor, remasking: str) -> Tensor:
    total = torch.zeros((), dtype=torch.float64)
    for i, prompt in enumerate(qs):
        dist = exact_distribution(model, prompt, remasking)
        pair_reward = (table[i][:, None] + table[i][None, :]) / 2
        total = total + (dist * pair_reward).sum()
    return total / len(qs)


def rollout_groups(model: DiffusionModel, cfg: Config, qs: list[list[int]], table: Tensor,
                   generator: torch.Generator, step: int) -> tuple[list[RolloutGroup], Tensor]:
    """One batch: G completions of every prompt from the reference decoder, scored exactly."""
    g = cfg.rollout.group_size
    out = ReferenceDecoder(model, cfg.decoding).generate([p for p in qs for _ in range(g)], generator)
    groups = []
    for i, prompt in enumerate(qs):
        rows = range(i * g, (i + 1) * g)
        rewards = rewards_of(table, i, out.completion_ids[list(rows)].cpu())
        rollouts = [Rollout(example_id=f"q{i}", prompt_ids=torch.tensor(prompt), completion_ids=out.completion_ids[r],
                            unmask_step=out.unmask_step[r], logprobs=out.logprobs[r], entropies=out.entropies[r],
                            completion_mask=~out.filled[r], reward=float(rewards[j]))
                    for j, r in enumerate(rows)]
        groups.append(RolloutGroup(f"{step}-{i}", Example("exact", f"q{i}", ""), rollouts))
    return groups, out.completion_ids


def pipeline_gradient(model: DiffusionModel, cfg: Config, groups: list[RolloutGroup],
                      generator: torch.Generator) -> Tensor | None:
    """The loss gradient of one batch at theta = theta_old, through the learner's functions (as
    `Learner._prepare` and `_micro_step` chain them). None when every group has zero variance."""
    est, loss = estimator_from_config(cfg.algorithm, cfg.decoding), build_loss(cfg.algorithm)
    tb = build_train_batch(groups, model.spec.pad_token_id, cfg.algorithm)
    mbs = micro_batches(tb, len(groups))
    if not mbs:
        return None
    mb = mbs[0]
    draw = est.draw(model.spec, mb.batch, generator)
    with torch.no_grad():
        old_draw = draw if est.coupling != "independent" else est.draw(model.spec, mb.batch, generator)
        old = None if getattr(est, "old_source", None) == "cached" else est.score(model, mb.batch, old_draw)
    new = est.score(model, mb.batch, draw)
    if old is None:
        old = est.cached_old(mb.batch, new, draw)
    out = loss(loss_input(loss, new, old, None, mb.advantages, mb.group_ids))
    grads = torch.autograd.grad(out.loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for g, p in zip(grads, [p for p in model.parameters() if p.requires_grad])]).double()


def flat_grad(value: Tensor, model: DiffusionModel) -> Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.cat([g.flatten() for g in torch.autograd.grad(value, params)]).double()


def cosine(a: Tensor, b: Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def measure_setting(label: str, setting: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    cfg = make_config(setting, args)
    model, tokenizer = new_tiny_model(cfg.model, cfg.seed)
    model.eval()
    qs, table = prompts(tokenizer), reward_table(model.spec.vocab_size)
    exact = flat_grad(expected_reward(model, qs, table, setting["remasking"]), model)
    gen = torch.Generator().manual_seed(args.seed + 1)
    grads, completions = [], []
    for b in range(args.batches):
        groups, sampled = rollout_groups(model, cfg, qs, table, gen, b)
        completions.append(sampled)
        g = pipeline_gradient(model, cfg, groups, gen)
        if g is not None:
            grads.append(-g)  # the loss is minimised: -grad is the pipeline's ascent direction
    stacked = torch.stack(grads)
    mean = stacked.mean(0)
    noise = (stacked - mean).pow(2).sum(1).mean().sqrt()
    control = [-flat_grad(reinforce_loss(model, qs, table, setting["remasking"], args.group_size, gen), model)
               for _ in range(min(args.batches, 200))]
    result = {
        "cosine": round(cosine(mean, exact), 4),
        "cosine_one_batch": round(sum(cosine(g, exact) for g in grads) / len(grads), 4),
        "snr": round(float(mean.norm() / noise.clamp_min(1e-300)), 4),
        "norm_ratio": round(float(mean.norm() / exact.norm()), 4),
        "reinforce_cosine_one_batch": round(sum(cosine(g, exact) for g in control) / len(control), 4),
        "batches": len(grads), "J": round(float(expected_reward(model, qs, table, setting["remasking"]).detach()), 4),
        **sampler_check(model, qs, table, torch.cat(completions), args.group_size, setting["remasking"]),
    }
    print(f"{label}: {result}", file=sys.stderr)
    return result


def sampler_check(model: DiffusionModel, qs: list[list[int]], table: Tensor, completions: Tensor, group: int,
                  remasking: str) -> dict[str, float]:
    """The decoder's samples against the exact distribution (completions ``[batches * Q * G, 2]`` in
    decode order): the z-score of the empirical mean reward against J (|z| < 3 expected), and the
    total variation of the first token's empirical marginal from the exact one with its expected
    value under pure sampling error (about sqrt(V / (2 pi n)) for a near-uniform marginal)."""
    vocab, per_batch = model.spec.vocab_size, completions.view(-1, len(qs), group, 2).cpu()
    rewards, exact_j, tvs = [], 0.0, []
    with torch.no_grad():
        for i, prompt in enumerate(qs):
            pairs = per_batch[:, i].reshape(-1, 2)
            rewards.append(rewards_of(table, i, pairs))
            dist = exact_distribution(model, prompt, remasking).cpu()
            exact_j += float((dist * (table[i][:, None] + table[i][None, :]) / 2).sum()) / len(qs)
            counts = torch.bincount(pairs[:, 0], minlength=vocab).double()
            tvs.append(0.5 * float((counts / counts.sum() - dist.sum(1)).abs().sum()))
    r = torch.stack(rewards, 1).mean(1)  # per row: the mean over prompts, rows independent
    z = (float(r.mean()) - exact_j) / max(float(r.std()) / len(r) ** 0.5, 1e-12)
    n = per_batch.shape[0] * group
    return {"sampler_reward_z": round(z, 2), "sampler_tv_first_token": round(sum(tvs) / len(tvs), 4),
            "sampler_tv_noise": round((vocab / (2 * 3.14159 * n)) ** 0.5, 4)}


def reinforce_loss(model: DiffusionModel, qs: list[list[int]], table: Tensor, remasking: str, group: int,
                   generator: torch.Generator) -> Tensor:
    """The control: G completions per prompt sampled from the exact law, group-relative advantages, and
    the exact log-likelihood's score function (REINFORCE with the group-mean baseline, as StableDRL at
    theta = theta_old weights it): what any sampled policy gradient of this batch size can do."""
    total = torch.zeros((), dtype=torch.float64)
    for i, prompt in enumerate(qs):
        dist = exact_distribution(model, prompt, remasking).flatten()
        picks = torch.multinomial(dist.detach().float().cpu(), group, replacement=True, generator=generator)
        vocab = model.spec.vocab_size
        rewards = (table[i][picks // vocab] + table[i][picks % vocab]) / 2
        total = total - ((rewards - rewards.mean()) * dist[picks.to(dist.device)].log()).sum() / group
    return total / len(qs)


def train_curves(label: str, setting: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """J after each of ``--steps`` updates from the same init, with the same AdamW settings: the real
    `Learner` (DeepSpeed) on the decoder's batches, exact gradient ascent, and the REINFORCE control
    on batches of the same size drawn from the exact law."""
    from learner.learner import Learner

    cfg = make_config(setting, args)
    learner = Learner(cfg)
    model = learner.model
    qs, table = prompts(learner.tokenizer), reward_table(model.spec.vocab_size)
    lc, remasking = cfg.learner, setting["remasking"]
    gen = torch.Generator().manual_seed(args.seed + 2)
    curves: dict[str, list[float]] = {"pipeline": [], "exact": [], "reinforce": []}
    baselines = {}
    for name in ("exact", "reinforce"):
        net = new_tiny_model(cfg.model, cfg.seed)[0]
        opt = torch.optim.AdamW(net.parameters(), lr=lc.lr, betas=lc.betas, weight_decay=lc.weight_decay)
        baselines[name] = (net, opt)
    with torch.no_grad():
        start = float(expected_reward(model, qs, table, remasking))
    for step in range(args.steps):
        model.eval()
        groups, _ = rollout_groups(model, cfg, qs, table, gen, step)
        learner.train_on(groups)
        for name, (net, opt) in baselines.items():
            opt.zero_grad()
            loss = (-expected_reward(net, qs, table, remasking) if name == "exact"
                    else reinforce_loss(net, qs, table, remasking, cfg.rollout.group_size, gen))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), lc.grad_clip)
            opt.step()
        with torch.no_grad():
            for name, net in (("pipeline", model), *((n, b[0]) for n, b in baselines.items())):
                curves[name].append(round(float(expected_reward(net, qs, table, remasking)), 4))
    print(f"{label} curve: J {start:.4f} -> " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in curves.items()),
          file=sys.stderr)
    return {"J_start": round(start, 4), **curves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=64, help="pipeline gradients averaged per setting")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=60, help="training updates of the curves (0: none)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="setting labels to measure (default: all)")
    parser.add_argument("--train", nargs="*", default=["stabledrl+agrpo(all steps)/random",
                                                        "stabledrl+elbo_mean/low_confidence"],
                        help="setting labels to train (curves)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.monotonic()
    labels = args.only or list(SETTINGS)
    gradients = {label: measure_setting(label, SETTINGS[label], args) for label in labels}
    curves = {label: train_curves(label, SETTINGS[label], args) for label in args.train} if args.steps else {}
    print(json.dumps({"bench": "exact_gradient", "gen_length": GEN_LENGTH, "group_size": args.group_size,
                      "prompts": len(TARGETS), "batches": args.batches, "lr": args.lr, "gradients": gradients,
                      "curves": curves, "seconds": round(time.monotonic() - start, 1)}))


if __name__ == "__main__":
    main()
