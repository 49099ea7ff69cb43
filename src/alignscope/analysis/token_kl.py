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

from alignscope.config_io import ConfigIO, RunSettings
from alignscope.judges.registry import check_judge_spec
from alignscope.models.base import Conversation, ModelError
from alignscope.models.local import LocalModel
from alignscope.models.pool import ModelPool
from alignscope.runs.experiment import experiment
from alignscope.runs.store import RunDir
from alignscope.stats import bootstrap_mean_ci
from alignscope.validation import FieldChecks


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


STAGE = "token_kl"


@dataclass(frozen=True)
class TokenKLConfig(RunSettings):
    """Settings of ``alignscope analyze token-kl``.

    Attributes:
        model: spec of the model (e.g. an aligned one).
        reference: spec of the reference (e.g. its base model); must share the tokenizer.
        suite: harmful suite spec; samples with a ``response`` use it as the teacher-forced answer.
        n: (prompt, answer) pairs (a category-stratified subset); None takes every prompt.
        source: spec of the model writing the answers the suite lacks (None: the reference).
        judge: judge spec; answers it counts as refusals (or, for a harm judge, as not harmful) are left out.
        max_tokens: response positions measured.
        seed: seeds the subset.
        batch_size: generation and teacher-forcing batch size.
    """

    suite_fields = ("suite",)
    model: str = "smollm2-aligned"
    reference: str = "smollm2"
    suite: str = "harmful"
    n: int | None = 32
    source: str | None = None
    judge: str = "keyword"
    max_tokens: int = 48

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.at_least(1, "n", "max_tokens", "batch_size")
        check_judge_spec(self.judge)


@dataclass(frozen=True)
class TokenKLResult(ConfigIO):
    """The KL profile as stored in the run (``TokenKL.to_dict`` plus the suite); empty when no pair had an
    answer to teacher-force."""

    profile: dict[str, Any]

    def summary(self) -> str:
        mean = [m for m in self.profile.get("mean", []) if m is not None]
        if not mean:
            return "per-token KL: no (prompt, answer) pairs"
        early, late = mean[:5], mean[5:]
        return (
            f"per-token KL of {self.profile['model']} against {self.profile['reference']} over "
            f"{self.profile['n_pairs']} pairs: mean {sum(early) / len(early):.3f} nats at positions 1-5, "
            f"{sum(late) / max(1, len(late)):.3f} after"
        )


def token_kl_stage(
    model: LocalModel,
    reference: LocalModel,
    suite: Any,
    responses: dict[str, str],
    max_tokens: int,
    run: Any = None,
) -> dict[str, Any]:
    """Per-token KL over ``suite``'s (prompt, answer) pairs, stored as one ``token_kl`` record in ``run``."""
    from alignscope.models.base import user_turn

    done = run.done(STAGE) if run is not None else {}
    key = f"{model.name}||{reference.name}"
    if key in done:
        return dict(done[key])
    pairs = [(s, responses[s.id]) for s in suite if s.id in responses]
    if not pairs:
        return {}
    kl = per_token_kl(
        model, reference, [user_turn(s.prompt) for s, _ in pairs], [r for _, r in pairs], max_tokens
    )
    rec = {"stage": STAGE, "key": key, "suite": getattr(suite, "name", ""), **kl.to_dict()}
    if run is not None:
        run.append(rec)
    return rec


@experiment(TokenKLConfig)
def run_token_kl(config: TokenKLConfig, run: RunDir | None, pool: ModelPool, progress: bool) -> TokenKLResult:
    """Per-token KL as an experiment: the answers and the profile go into ``run``, whose report is rebuilt."""
    from alignscope.attacks.prefill import harmful_responses
    from alignscope.data import load_suite

    samples = load_suite(config.suite).take(config.n, config.seed)
    model, reference = pool.get(config.model), pool.get(config.reference)
    if not isinstance(model, LocalModel) or not isinstance(reference, LocalModel):
        raise ModelError("the per-token KL needs the logits of both models: local models only")
    source = pool.get(config.source or config.reference)
    responses = harmful_responses(
        source, list(samples), pool.judge(config.judge), max(64, config.max_tokens), config.batch_size, run
    )
    return TokenKLResult(token_kl_stage(model, reference, samples, responses, config.max_tokens, run))
