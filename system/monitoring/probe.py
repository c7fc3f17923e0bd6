"""KL drift on a fixed probe set: how far the policy's masked-token distributions have moved from the
initial policy's, measured on the same sequences, the same masked positions and the same tokens every
time, so the curve moves only when the policy does.

The probe (built once, from the initial policy p): each probe sequence (prompt + completion) has a
fixed share ``mask_ratio`` of its completion tokens masked (drawn once from a seeded generator, at
least one per sequence); at each masked position j, S tokens y_{j,s} are drawn once from p_j and their
log-probs log p_j(y) kept. The drift of a later policy q is the k3 estimate of KL(p || q) on those
fixed samples,

    KL(p_j || q_j) ~= mean_s [ rho - 1 - log rho ],   rho = q_j(y_{j,s}) / p_j(y_{j,s}),  y ~ p_j,

which is unbiased (E_p[rho] = 1) and non-negative for every sample, averaged over the masked positions
(``kl/drift``), with the largest per-sequence mean as ``kl/drift_max``. Memory: S ids and log-probs per
masked position, not the vocabulary-sized distributions. Sequences are scored one per forward pass
(no padding, so full and block-attention models see exactly their unpadded layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from system.models.base import DiffusionModel

__all__ = ["KLProbe", "ProbeRow", "build_kl_probe", "k3", "kl_drift"]


@dataclass
class ProbeRow:
    """One probe sequence. Shapes: L tokens, M masked positions, S samples per position.

    Attributes:
        input_ids: ``[L]`` prompt + completion with the fixed positions set to the mask token.
        positions: ``[M]`` long, the masked positions (all in the completion).
        samples: ``[M, S]`` long, tokens drawn from the initial policy at each masked position.
        ref_logp: ``[M, S]`` float64, their log-probs under the initial policy.
    """

    input_ids: Tensor
    positions: Tensor
    samples: Tensor
    ref_logp: Tensor


@dataclass
class KLProbe:
    rows: list[ProbeRow]


def k3(log_ratio: Tensor) -> Tensor:
    """rho - 1 - log rho for rho = exp(log_ratio), elementwise (>= 0; 0 exactly at log_ratio = 0)."""
    return torch.expm1(log_ratio) - log_ratio


@torch.no_grad()
def _masked_logp(model: DiffusionModel, input_ids: Tensor, positions: Tensor) -> Tensor:
    """``[M, V]`` float64 log-probs of ``model`` at ``positions`` of the one sequence ``input_ids`` [L]."""
    logits = model(input_ids[None].to(model.device))[0, positions.to(model.device)]
    return torch.log_softmax(logits.double(), dim=-1).cpu()


def _eval_mode(model: DiffusionModel) -> bool:
    was_training = model.training
    model.eval()
    return was_training


def build_kl_probe(model: DiffusionModel, sequences: list[tuple[Tensor, Tensor]], mask_ratio: float,
                   num_samples: int, generator: torch.Generator) -> KLProbe:
    """The probe of the module docstring, with ``model`` as the initial policy.

    Args:
        sequences: (prompt ids ``[P]``, completion ids ``[C]``) pairs, C >= 1.
        mask_ratio: share of each completion masked, in (0, 1].
        num_samples: S, tokens drawn per masked position.
        generator: CPU generator for the mask and the samples (the global RNG is not used).
    """
    if not sequences:
        raise ValueError("the KL probe needs at least one sequence (logging.kl_probe_size > 0 examples)")
    if not 0.0 < mask_ratio <= 1.0 or num_samples < 1:
        raise ValueError(f"mask_ratio must be in (0, 1] and num_samples >= 1, got {mask_ratio}, {num_samples}")
    was_training = _eval_mode(model)
    rows = []
    for index, (prompt, completion) in enumerate(sequences):
        prompt, completion = (torch.as_tensor(t, device="cpu").long() for t in (prompt, completion))
        if completion.dim() != 1 or completion.numel() == 0 or prompt.dim() != 1:
            raise ValueError(f"KL probe sequence {index}: prompt and completion must be 1-D id tensors and the "
                             f"completion non-empty (got shapes {list(prompt.shape)}, {list(completion.shape)})")
        u = torch.rand(completion.numel(), generator=generator, dtype=torch.float64, device=generator.device).cpu()
        masked = u < mask_ratio
        masked[u.argmin()] = True  # at least one position per sequence
        positions = prompt.numel() + masked.nonzero().flatten()
        input_ids = torch.cat([prompt, completion])
        input_ids[positions] = model.mask_token_id
        logp = _masked_logp(model, input_ids, positions)
        # generator on the CPU like logp (see Args): multinomial draws on its input's device
        samples = torch.multinomial(logp.exp(), num_samples, replacement=True, generator=generator)
        rows.append(ProbeRow(input_ids, positions, samples, logp.gather(1, samples)))
    model.train(was_training)
    return KLProbe(rows)


def kl_drift(model: DiffusionModel, probe: KLProbe) -> dict[str, float]:
    """``kl/drift`` (mean k3 over every masked position and sample) and ``kl/drift_max`` (the largest
    per-sequence mean) of ``model`` against the probe's initial policy."""
    was_training = _eval_mode(model)
    total, count, worst = 0.0, 0, 0.0
    for row in probe.rows:
        logp = _masked_logp(model, row.input_ids, row.positions).gather(1, row.samples)
        values = k3(logp - row.ref_logp)
        total += float(values.sum())
        count += values.numel()
        worst = max(worst, float(values.mean()))
    model.train(was_training)
    return {"kl/drift": total / count, "kl/drift_max": worst}
