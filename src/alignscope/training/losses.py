"""Training objectives as pure functions of tensors, and the Trainer subclass that uses them.

* :func:`constrained_token_loss`: the token-wise constrained objective of Qi et al., "Safety Alignment Should
Be
  Made More Than Just a Few Tokens Deep" (ICLR 2025, arXiv 2406.05946), section 4::

      loss = mean_t (2 / beta_t) * -log sigmoid(beta_t * (log pi_theta(y_t | x, y_<t) - log pi_aligned(y_t |
      x, y_<t)))

  Its gradient is ``-2 sigmoid(-beta_t * delta_t) * grad log pi_theta(y_t)``: for small ``beta_t`` (or at the
  start, where ``delta_t = 0``) that is the cross-entropy gradient; for large ``beta_t`` the weight vanishes
  once the token's log-probability rises above the aligned model's, which holds that position near the aligned
  model.
* :func:`mixture_loss`: ``alpha * CE(safety) + (1 - alpha) * CE(utility)`` over the examples of a batch (the
  deep-alignment objective, same paper, section 3).

The Trainer subclass :class:`AlignTrainer` only overrides ``compute_loss``; the loop is transformers'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from alignscope.training.chat_data import IGNORE_INDEX


@dataclass(frozen=True)
class BetaSchedule:
    """Per-position beta of the constrained objective (Qi et al. 2025 defaults): ``first`` at response
    position 1, ``early`` for positions 2..``early_until``, ``late`` after that. Positions are 1-based within
    the response."""

    first: float = 0.5
    early: float = 2.0
    early_until: int = 5
    late: float = 0.1

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions``: integer tensor of any shape -> float tensor of betas, same shape."""
        betas = torch.full(positions.shape, self.late, dtype=torch.float32, device=positions.device)
        betas = torch.where((positions >= 2) & (positions <= self.early_until), self.early, betas)
        return torch.where(positions <= 1, self.first, betas)


def shifted_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each next token.

    Args:
        logits: ``(batch, seq, vocab)``.
        labels: ``(batch, seq)`` with :data:`IGNORE_INDEX` where no loss applies.

    Returns:
        ``(logps, mask)``, both ``(batch, seq - 1)``: ``logps[:, t]`` is ``log p(labels[:, t + 1])`` given the
        tokens up to ``t``; ``mask`` is True where ``labels[:, t + 1]`` is trained.
    """
    target = labels[:, 1:]
    mask = target != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked * mask, mask


def constrained_token_loss(
    logps: torch.Tensor, ref_logps: torch.Tensor, betas: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The token-wise constrained objective, averaged over the trained tokens.

    Args:
        logps: ``(batch, T)`` log pi_theta of each target token.
        ref_logps: ``(batch, T)`` log pi_aligned of the same tokens (computed once, before training).
        betas: ``(batch, T)`` beta_t of each position.
        mask: ``(batch, T)`` True at trained tokens.
    """
    per_token = (2.0 / betas) * -F.logsigmoid(betas * (logps - ref_logps))
    n = mask.sum().clamp(min=1)
    return (per_token * mask).sum() / n


def mixture_loss(
    token_nll: torch.Tensor, mask: torch.Tensor, group: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``alpha * CE(group 1) + (1 - alpha) * CE(group 0)``, each a token mean over its examples in the batch;
    a batch holding only one group gives that group's CE.

    Args:
        token_nll: ``(batch, T)`` negative log-likelihood of each target token.
        mask: ``(batch, T)`` True at trained tokens.
        group: ``(batch,)`` 1 for safety examples, 0 for utility examples.
    """
    parts = []
    weights = []
    for g, w in ((1, alpha), (0, 1.0 - alpha)):
        rows = group == g
        m = mask[rows]
        if m.any():
            parts.append((token_nll[rows] * m).sum() / m.sum())
            weights.append(w)
    if not parts:
        return token_nll.sum() * 0.0
    total = sum(weights)
    return sum(w / total * p for w, p in zip(weights, parts, strict=True))  # type: ignore[return-value]


class AlignTrainer(Trainer):
    """transformers' Trainer with alignscope's objectives, chosen by ``objective``:

    * ``"ce"``: the model's own token-mean cross-entropy (labels passed through);
    * ``"mixture"``: :func:`mixture_loss` with ``alpha`` over the batch's ``group`` column;
    * ``"constrained"``: :func:`constrained_token_loss` with ``beta_schedule`` over ``response_pos`` and the
      precomputed ``ref_logps`` column.
    """

    objective: str
    alpha: float
    beta_schedule: BetaSchedule

    def __init__(
        self,
        *args: Any,
        objective: str = "ce",
        alpha: float = 0.2,
        beta_schedule: BetaSchedule | None = None,
        **kwargs: Any,
    ) -> None:
        if objective not in ("ce", "mixture", "constrained"):
            raise ValueError(f"unknown objective {objective!r}")
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.alpha = alpha
        self.beta_schedule = beta_schedule or BetaSchedule()
        if objective != "ce":
            # our objectives are means over one micro-batch: let the Trainer divide by the accumulation steps
            self.loss_is_scaled_for_ga = False

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        if self.objective == "ce":
            inputs = {k: v for k, v in inputs.items() if k not in ("group", "response_pos", "ref_logps")}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logps, mask = shifted_token_logprobs(outputs.logits, labels)
        if self.objective == "mixture":
            loss = mixture_loss(-logps, mask, inputs["group"], self.alpha)
        else:
            betas = self.beta_schedule(inputs["response_pos"][:, 1:])
            loss = constrained_token_loss(logps, inputs["ref_logps"][:, 1:], betas, mask)
        return (loss, outputs) if return_outputs else loss
