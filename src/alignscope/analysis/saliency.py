"""Transparency view: which prompt tokens drive the refusal decision, and where the last token looks.

Context: Li et al., "Safety Layers in Aligned Large Language Models" (ICLR 2025, arXiv 2408.17003) locate the
refusal decision in the last prompt token's hidden states of the middle layers. This view shows, for a few
prompts:

* **gradient x input saliency** of the refusal log-odds at the first response token over the prompt tokens:
  ``s_t = sum_d grad_{e_t}(refusal log-odds)_d * e_{t,d}`` for the input embedding ``e_t`` of token ``t``;
  the refusal log-odds is ``log p(R) - log(1 - p(R))`` where ``p(R)`` is the next-token probability mass on
  the first tokens of refusal openings (``"I'm sorry"``, ``"I cannot"``, ``"Sorry"``, ...), as in the refusal
  score of Arditi et al. (2024);
* **attention mass from the last prompt token**, per layer, averaged over heads: ``(n_layers, seq)``, and the
  share of it that falls on the user's own words (the rest goes to the chat template, system prompt and the
  first token, the usual attention sink).

The model's weights are not touched: the gradient is taken with respect to the input embeddings only, and the
attention implementation is switched to ``eager`` (the only one that returns attention weights) and back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignscope.analysis.layer_scan import with_template
from alignscope.models import Conversation, LocalModel, user_turn

log = logging.getLogger("alignscope.analysis")

REFUSAL_STARTS: tuple[str, ...] = (
    "I'm sorry",
    "I am sorry",
    "I cannot",
    "I can't",
    "Sorry",
    "I apologize",
    "As an AI",
    "Unfortunately",
)
"""Refusal openings; the first token of each forms the refusal token set R."""


@dataclass(frozen=True)
class Saliency:
    """The transparency view of one prompt.

    Attributes:
        prompt: the user's text.
        tokens: ``(seq,)`` the formatted prompt's tokens (template included), decoded one by one.
        in_prompt: ``(seq,)`` True for tokens that overlap the user's text.
        saliency: ``(seq,)`` gradient x input of the refusal log-odds for each token.
        refusal_logodds: ``log p(R) - log(1 - p(R))`` at the first response token.
        refusal_tokens: the token ids in R.
        attention: ``(n_layers, seq)`` attention weights from the last prompt token, mean over heads.
        prompt_attention_share: ``(n_layers,)`` the part of that attention on the user's text.
    """

    prompt: str
    tokens: list[str]
    in_prompt: list[bool]
    saliency: np.ndarray
    refusal_logodds: float
    refusal_tokens: list[int]
    attention: np.ndarray
    prompt_attention_share: np.ndarray

    def top_tokens(self, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` user-text tokens with the largest saliency (toward refusal), highest first."""
        idx = [i for i, inside in enumerate(self.in_prompt) if inside] or list(range(len(self.tokens)))
        ranked = sorted(idx, key=lambda i: -float(self.saliency[i]))[:k]
        return [(self.tokens[i], float(self.saliency[i])) for i in ranked]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "tokens": self.tokens,
            "in_prompt": self.in_prompt,
            "saliency": [float(x) for x in self.saliency],
            "refusal_logodds": self.refusal_logodds,
            "refusal_tokens": self.refusal_tokens,
            "attention_from_last_token": self.attention.tolist(),
            "prompt_attention_share": [float(x) for x in self.prompt_attention_share],
            "top_tokens": self.top_tokens(),
        }


def refusal_token_ids(model: LocalModel, starts: Sequence[str] = REFUSAL_STARTS) -> list[int]:
    """The first token of each refusal opening as it appears right after the assistant header,
    deduplicated."""
    ids: list[int] = []
    for s in starts:
        toks = model.response_ids(s)
        if toks and toks[0] not in ids:
            ids.append(int(toks[0]))
    if not ids:
        raise ValueError("no refusal opening produced a token")
    return ids


def refusal_saliency(
    model: LocalModel,
    prompt: str | Conversation,
    *,
    refusal_starts: Sequence[str] = REFUSAL_STARTS,
    template: str = "chat",
    system_prompt: str | None = None,
) -> Saliency:
    """Gradient x input saliency of the refusal log-odds and last-token attention for one prompt.

    ``prompt`` is the user's text (formatted as a single user turn) or a whole conversation (the last user
    message is then the text whose tokens are marked ``in_prompt``).
    """
    view = with_template(model, template)
    conversation = user_turn(prompt, system_prompt) if isinstance(prompt, str) else list(prompt)
    user_text = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
    text = view.format_chat(conversation)
    ids = view.encode_prompt(conversation)
    tokens = [view.tokenizer.decode([i]) for i in ids]
    in_prompt = _user_token_mask(view, text, user_text, len(ids))
    refusal = refusal_token_ids(view, refusal_starts)

    hf = view.model
    device = view.device
    input_ids = torch.tensor([ids], device=device)
    original_impl = getattr(hf.config, "_attn_implementation", None)
    changed = original_impl not in (None, "eager")
    try:
        if changed:
            hf.set_attn_implementation("eager")
        with torch.enable_grad():
            embeds = hf.get_input_embeddings()(input_ids).detach().requires_grad_(True)
            out = hf(inputs_embeds=embeds, output_attentions=True)
            logits = out.logits[0, -1].float()
            mask = torch.zeros_like(logits, dtype=torch.bool)
            mask[refusal] = True
            logodds = torch.logsumexp(logits[mask], 0) - torch.logsumexp(logits[~mask], 0)
            (grad,) = torch.autograd.grad(logodds, embeds)
        sal = (grad[0] * embeds[0]).sum(-1).detach().float().cpu().numpy()
        attn = torch.stack([a[0, :, -1, :].mean(0) for a in out.attentions]).detach().float().cpu().numpy()
    finally:
        if changed:
            hf.set_attn_implementation(original_impl)
    inside = np.asarray(in_prompt, dtype=bool)
    share = attn[:, inside].sum(-1) / np.clip(attn.sum(-1), 1e-12, None)
    return Saliency(
        prompt=user_text,
        tokens=tokens,
        in_prompt=in_prompt,
        saliency=sal,
        refusal_logodds=float(logodds.detach()),
        refusal_tokens=refusal,
        attention=attn,
        prompt_attention_share=share,
    )


def _user_token_mask(model: LocalModel, text: str, user_text: str, n: int) -> list[bool]:
    """Which of the ``n`` prompt tokens overlap the (last) occurrence of ``user_text`` in ``text``."""
    start = text.rfind(user_text) if user_text else -1
    if start < 0:
        return [False] * n
    end = start + len(user_text)
    try:
        enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (NotImplementedError, ValueError, KeyError):  # slow tokenizers have no offsets
        log.warning("%s: tokenizer gives no character offsets; user tokens are not marked", model.name)
        return [False] * n
    mask = [bool(a < end and b > start) for a, b in offsets]
    return mask[:n] + [False] * (n - len(mask))


def plot_saliency(results: Sequence[Saliency], path: str | os.PathLike[str], max_tokens: int = 40) -> Path:
    """One row per prompt: saliency over the user's tokens (bars; positive pushes toward refusal) and the
    share of last-token attention on the user's text per layer. Format from the suffix of ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, len(results))
    fig, axes = plt.subplots(n, 2, figsize=(12, 2.8 * n), squeeze=False, gridspec_kw={"width_ratios": [3, 1]})
    for row, res in zip(axes, results, strict=False):
        idx = [i for i, inside in enumerate(res.in_prompt) if inside][:max_tokens] or list(
            range(max(0, len(res.tokens) - max_tokens), len(res.tokens))
        )
        values = res.saliency[idx]
        row[0].bar(range(len(idx)), values, color=["tab:red" if v > 0 else "tab:blue" for v in values])
        row[0].set_xticks(range(len(idx)))
        row[0].set_xticklabels([res.tokens[i].replace("\n", "\\n") for i in idx], rotation=60, fontsize=7)
        row[0].set_ylabel("grad x input")
        short = res.prompt if len(res.prompt) < 70 else res.prompt[:67] + "..."
        row[0].set_title(f"{short!r}  (refusal log-odds {res.refusal_logodds:+.2f})", fontsize=9)
        row[1].plot(np.arange(len(res.prompt_attention_share)), res.prompt_attention_share, marker=".")
        row[1].set_ylim(0, 1)
        row[1].set_xlabel("decoder layer")
        row[1].set_ylabel("attention on user text", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
