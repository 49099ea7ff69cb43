"""Per-token KL divergence between a model and a reference model (Qi et al. 2024, section 2).

For (prompt x, response y) pairs and each response position k (1-indexed),
``KL_k = mean over pairs of D_KL( pi_model(. | x, y_<k) || pi_ref(. | x, y_<k) )``.
Shallow safety alignment shows as a spike over the first few positions. Both models must share a tokenizer;
the prompt is formatted once, with the first model's chat template, and the same token ids go to both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from alignscope.models.base import Conversation, ModelError
from alignscope.models.local import LocalModel
from alignscope.stats import bootstrap_mean_ci


@dataclass(frozen=True)
class TokenKL:
    """Per-position KL with a bootstrap band.

    Attributes:
        per_pair: ``(n_pairs, max_len)`` KL of each pair at each position, NaN past the end of a response.
        mean, low, high: ``(max_len,)`` mean over pairs and its 95% bootstrap interval.
        count: ``(max_len,)`` how many pairs reach each position.
        template: which chat template formatted the prompts.
    """

    per_pair: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: np.ndarray
    model: str
    reference: str
    template: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "reference": self.reference,
            "template": self.template,
            "n_pairs": int(self.per_pair.shape[0]),
            "position": list(range(1, len(self.mean) + 1)),
            "mean": _nan_to_none(self.mean),
            "ci_low": _nan_to_none(self.low),
            "ci_high": _nan_to_none(self.high),
            "count": self.count.astype(int).tolist(),
        }


def kl_rows(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """``D_KL(softmax(p) || softmax(q))`` over the last axis: ``(..., vocab) -> (...)``."""
    logp = torch.log_softmax(logits_p.float(), dim=-1)
    logq = torch.log_softmax(logits_q.float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def check_same_tokenizer(a: LocalModel, b: LocalModel) -> None:
    """Raise :class:`ModelError` unless both models tokenise identically (same vocabulary and ids)."""
    va, vb = a.tokenizer.get_vocab(), b.tokenizer.get_vocab()
    if va != vb:
        raise ModelError(
            f"{a.name} and {b.name} have different tokenizers ({len(va)} vs {len(vb)} tokens); per-token KL "
            "needs identical token ids"
        )


def per_token_kl(
    model: LocalModel,
    reference: LocalModel,
    conversations: Sequence[Conversation],
    responses: Sequence[str],
    max_tokens: int = 64,
    batch_size: int = 8,
    progress: bool = False,
) -> TokenKL:
    """Per-position KL of ``model`` against ``reference`` over teacher-forced (prompt, response) pairs.

    One forward pass per model per batch gives every position. Responses are tokenised with ``model``'s
    tokenizer and truncated to ``max_tokens``.
    """
    if len(conversations) != len(responses):
        raise ValueError("conversations and responses must have the same length")
    if not conversations:
        raise ValueError("per_token_kl needs at least one (prompt, response) pair")
    check_same_tokenizer(model, reference)
    prompts = [model.encode_prompt(c) for c in conversations]
    resp_ids = [model.response_ids(r)[:max_tokens] for r in responses]
    width = max(len(r) for r in resp_ids)
    values = np.full((len(prompts), width), np.nan)
    ours = model.response_logits(prompts, resp_ids, batch_size)
    theirs = reference.response_logits(prompts, resp_ids, batch_size)
    bar = tqdm(total=len(prompts), desc="per-token KL", disable=not progress, leave=False)
    for a, b in zip(ours, theirs, strict=True):
        kl = kl_rows(a.logits, b.logits).masked_fill(~a.mask, float("nan")).numpy()
        for row, i in enumerate(a.indices):
            values[i, : kl.shape[1]] = kl[row]
        bar.update(len(a.indices))
    bar.close()
    mean, low, high = bootstrap_mean_ci(values)
    count = (~np.isnan(values)).sum(0)
    return TokenKL(values, mean, low, high, count, model.name, reference.name, model.template_name)


def _nan_to_none(a: np.ndarray) -> list[float | None]:
    return [None if np.isnan(x) else float(x) for x in a]
