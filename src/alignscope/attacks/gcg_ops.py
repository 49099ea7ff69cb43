"""The tensor work of GCG (Zou et al. 2023, "Universal and Transferable Adversarial Attacks on Aligned
Language Models"): prompt slots with their prefix KV cache, the token gradient, candidate sampling and the
retokenisation filter; :mod:`alignscope.attacks.gcg_scoring` scores the candidates.

Where this goes beyond nanoGCG (the fastest public implementation), each point came from profiling a step on
the embedded default, where candidate losses take > 95% of the time:

* **only the target positions' logits** are computed (``logits_to_keep``): the LM head over a 49k vocabulary
  is ~20% of a forward per position, and nanoGCG runs it on every suffix, template and target position;
* **the shared start of the suffix is cached too**: a candidate that first differs from the current suffix at
  position p shares the prefix *and* suffix tokens ``< p`` with it. Candidates are grouped by p and each group
  runs from p on, over the KV of the prefix plus the current suffix (taken from the gradient pass, so it costs
  nothing). With one replaced token, a candidate runs about half the suffix instead of all of it;
* **candidates are screened in bfloat16** when the model runs in float32 on hardware with native bf16
  matmuls (the forward is > 85% matmul on CPU; bf16 ran ~3x faster than torch's float32 here): all
  candidates are scored by a bf16 copy, the best ``screen_keep`` are re-scored exactly, and the step moves to
  the exact best of those. The reported losses are exact; the chosen candidate is the exact argmin unless
  bf16 noise pushed it out of the kept set (on SmolLM2 the float32 argmin ranked first in bf16 in 23 of 36
  steps checked and never below 8th). ``screen_dtype=None`` turns it off;
* **float32 linears run through oneDNN** where that beats torch's BLAS (AMD CPUs, where MKL takes its AVX2
  path: ~1.9x on exact scoring), see :mod:`alignscope.models.fast_linear`; ``fp32_linear="torch"`` keeps
  torch's kernels bit for bit;
* the target cross-entropy is taken a few rows at a time, so the float32 log-softmax stays in cache, and
  the greedy-hit check (an argmax over the vocabulary) runs only when early stopping needs it;
* the last target token is not fed (its output predicts nothing we score);
* duplicate candidates and the current suffix itself are dropped before scoring;
* batches are sized from free memory (halved on out-of-memory), and the gradient is taken with respect to the
  input embeddings and projected on the embedding matrix once, instead of a one-hot ``(n, vocab)`` leaf.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional as F

from alignscope.models.base import Conversation, ModelError
from alignscope.models.local import LocalModel

log = logging.getLogger("alignscope.attacks.gcg")

PLACEHOLDER = "{optim_str}"
_PLACEHOLDER_WITH_SPACES = re.compile(r" *\{optim_str\}")

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per-layer (key, value) tensors, each ``(batch, kv_heads, seq, head_dim)``."""


class GCGError(ModelError):
    """GCG cannot run on this model, prompt or initialisation; the message says why."""


# -- prompt slots ---------------------------------------------------------------------------------------------
@dataclass
class PromptSlots:
    """One (prompt, target) pair cut around the optimised suffix, all as token ids of ``model``'s tokenizer.

    The formatted prompt is ``before_text + <suffix text> + after_text``; spaces written directly before the
    ``{optim_str}`` placeholder belong to the suffix (BPE tokenizers fold a leading space into the next
    token, so leaving it in ``before_text`` would make every suffix re-tokenise differently).

    Attributes:
        before_text, after_text: formatted prompt text before and after the suffix.
        before_ids, after_ids, target_ids: token ids (``before_ids`` as the whole formatted prompt encodes).
        lead: the spaces moved from before the placeholder into the suffix.
        prefix_kv: the KV cache of ``before_ids`` (batch 1), or None when the model's cache is not usable.
    """

    before_text: str
    after_text: str
    before_ids: list[int]
    after_ids: list[int]
    target_ids: list[int]
    lead: str
    prefix_kv: KV | None = None
    _kv_by_dtype: dict[torch.dtype, KV] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_target(self) -> int:
        return len(self.target_ids)

    def prefix_kv_as(self, dtype: torch.dtype) -> KV | None:
        """``prefix_kv`` in ``dtype`` (converted once, for a lower-precision copy of the model)."""
        if self.prefix_kv is None or self.prefix_kv[0][0].dtype == dtype:
            return self.prefix_kv
        if dtype not in self._kv_by_dtype:
            self._kv_by_dtype[dtype] = [(k.to(dtype), v.to(dtype)) for k, v in self.prefix_kv]
        return self._kv_by_dtype[dtype]

    def prompt_ids(self, suffix_ids: Sequence[int]) -> list[int]:
        return [*self.before_ids, *suffix_ids, *self.after_ids]


def as_messages(messages_or_prompt: str | Conversation) -> Conversation:
    """A chat with the ``{optim_str}`` placeholder: a string becomes one user turn; a chat (or string)
    without the placeholder gets ``" {optim_str}"`` appended to its last user turn (``behaviour suffix``, as
    Zou et al.)."""
    if isinstance(messages_or_prompt, str):
        messages: Conversation = [{"role": "user", "content": messages_or_prompt}]
    else:
        messages = [dict(m) for m in messages_or_prompt]
    count = sum(m["content"].count(PLACEHOLDER) for m in messages)
    if count > 1:
        raise GCGError(f"the prompt holds {PLACEHOLDER} {count} times; GCG optimises one suffix")
    if count == 0:
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            raise GCGError("the conversation has no user turn to attach the adversarial suffix to")
        messages[users[-1]]["content"] += " " + PLACEHOLDER
    return messages


def fill_suffix(messages_or_prompt: str | Conversation, suffix: str) -> Conversation:
    """The chat with ``suffix`` in place of the placeholder and the spaces directly before it (a found
    suffix carries its own leading space, see :class:`PromptSlots`)."""
    out = []
    for m in as_messages(messages_or_prompt):
        content = _PLACEHOLDER_WITH_SPACES.sub(lambda _: suffix, m["content"], count=1)
        out.append({**m, "content": content})
    return out


def build_slots(model: LocalModel, messages_or_prompt: str | Conversation, target: str) -> PromptSlots:
    """Cut the formatted prompt around the placeholder and tokenise its pieces (see :class:`PromptSlots`)."""
    messages = as_messages(messages_or_prompt)
    lead = ""
    for m in messages:
        found = _PLACEHOLDER_WITH_SPACES.search(m["content"])
        if found:
            lead = found.group(0)[: -len(PLACEHOLDER)]
    text = model.format_chat(fill_suffix(messages, PLACEHOLDER))
    if text.count(PLACEHOLDER) != 1:
        raise GCGError(f"{model.name}: the chat template does not render {PLACEHOLDER} exactly once")
    before, after = text.split(PLACEHOLDER)
    target_ids = model.response_ids(target)
    if not target_ids:
        raise GCGError("the target string is empty")
    return PromptSlots(before, after, model._encode(before), model._encode(after), target_ids, lead)


def suffix_ids_in_context(model: LocalModel, slots: PromptSlots, suffix_text: str) -> list[int]:
    """Token ids of ``suffix_text`` as the tokenizer splits it inside the formatted prompt; raises
    :class:`GCGError` when it merges with the text around it."""
    full = model._encode(slots.before_text + suffix_text + slots.after_text)
    nb, na = len(slots.before_ids), len(slots.after_ids)
    if (
        full[:nb] != slots.before_ids
        or (na and full[len(full) - na :] != slots.after_ids)
        or len(full) <= nb + na
    ):
        raise GCGError(
            f"the suffix {suffix_text!r} merges with the prompt around it when tokenised; choose another "
            "optim_str_init or put a space before the placeholder"
        )
    return full[nb : len(full) - na]


# -- KV cache helpers -----------------------------------------------------------------------------------------
def kv_of(cache: Any) -> KV | None:
    """Per-layer (key, value) tensors of a transformers cache, or None for caches we cannot slice."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        return None
    out: KV = []
    for layer in layers:
        k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(k, torch.Tensor) or not isinstance(v, torch.Tensor) or k.dim() != 4:
            return None
        if getattr(layer, "is_sliding", False):  # a sliding window would drop what we slice
            return None
        out.append((k, v))
    return out


def cache_kwarg(net: Any) -> str:
    """The forward argument that takes a KV cache: ``cache`` from transformers 5.2x, ``past_key_values``
    before."""
    cls = type(net)
    if cls not in _CACHE_KWARG:
        params = inspect.signature(net.forward).parameters
        _CACHE_KWARG[cls] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[cls]


_CACHE_KWARG: dict[type, str] = {}


def cache_of(out: Any) -> Any:
    """The KV cache a forward pass returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def make_cache(model: Any, kv: KV, batch: int, length: int) -> Any:
    """A fresh transformers DynamicCache holding the first ``length`` positions of ``kv`` for ``batch`` rows
    (broadcast views; the model copies them as it appends)."""
    from transformers import DynamicCache

    data = [
        (k[:, :, :length].expand(batch, -1, -1, -1), v[:, :, :length].expand(batch, -1, -1, -1))
        for k, v in kv
    ]
    return DynamicCache(ddp_cache_data=data)


def prefix_cache(model: LocalModel, slots: PromptSlots) -> None:
    """Fill ``slots.prefix_kv`` with the KV cache of the prompt before the suffix (left None when the model's
    cache cannot be sliced, e.g. sliding-window layers; everything then runs uncached)."""
    if not slots.before_ids:
        return
    ids = torch.tensor([slots.before_ids], device=model.device)
    with torch.no_grad():
        out = model.model(input_ids=ids, use_cache=True, logits_to_keep=1)
    slots.prefix_kv = kv_of(cache_of(out))
    slots._kv_by_dtype.clear()
    if slots.prefix_kv is None:
        log.warning("%s: its KV cache cannot be sliced; GCG runs without the prefix cache", model.name)


# -- vocabulary mask ------------------------------------------------------------------------------------------
_MASKS: dict[tuple[int, int, bool], torch.Tensor] = {}


def disallowed_tokens(model: LocalModel, allow_non_ascii: bool) -> torch.Tensor:
    """Boolean ``(vocab,)`` mask of tokens a suffix may not use: special tokens, ids past the tokenizer's
    vocabulary and, unless ``allow_non_ascii``, tokens that do not decode to printable ASCII (as nanoGCG).
    Computed once per tokenizer."""
    tok = model.tokenizer
    vocab = int(model.model.get_input_embeddings().weight.shape[0])
    key = (id(tok), vocab, allow_non_ascii)
    if key in _MASKS:
        return _MASKS[key]
    mask = torch.zeros(vocab, dtype=torch.bool)
    n = min(len(tok), vocab)
    mask[n:] = True
    special = [i for i in tok.all_special_ids if 0 <= i < vocab]
    mask[special] = True
    if not allow_non_ascii:
        texts = tok.batch_decode([[i] for i in range(n)])
        bad = [i for i, t in enumerate(texts) if not (t.isascii() and t.isprintable()) or not t]
        mask[bad] = True
    _MASKS[key] = mask
    return mask


# -- gradient -------------------------------------------------------------------------------------------------
@dataclass
class GradientPass:
    """The token gradient at the current suffix.

    Attributes:
        grad: ``(n_optim, vocab)`` d loss / d one-hot(suffix), float32.
        loss: the current suffix's loss (mean target cross-entropy).
        kv: KV of the prefix plus the current suffix (batch 1), for the candidates' shared start; None when
            uncached.
    """

    grad: torch.Tensor
    loss: float
    kv: KV | None


def token_gradient(
    model: LocalModel, slots: PromptSlots, suffix_ids: torch.Tensor, net: Any | None = None
) -> GradientPass:
    """One forward and backward pass over ``suffix + after + target[:-1]`` from the prefix cache.

    The gradient with respect to the one-hot suffix matrix is ``d loss / d embeddings @ E^T``, so it is taken
    with respect to the suffix embeddings and projected on the embedding matrix ``E`` ``(vocab, hidden)``
    once: the same numbers as nanoGCG's one-hot leaf without its ``(n, vocab) @ (vocab, hidden)`` product.

    ``net`` differentiates a copy of the model in another dtype (see :func:`low_precision_copy`): the
    gradient only ranks each position's top-k tokens, which bfloat16 leaves almost unchanged at about half
    the cost on CPUs with native bf16. The returned ``kv`` is then in that dtype too.
    """
    net = net if net is not None else model.model
    dev = model.device
    dtype = next(net.parameters()).dtype
    emb = net.get_input_embeddings()
    tail = torch.tensor([*slots.after_ids, *slots.target_ids[:-1]], device=dev)
    e = emb(suffix_ids.to(dev)[None]).detach().requires_grad_(True)
    prefix_kv = slots.prefix_kv_as(dtype)
    parts = [e, emb(tail[None])]
    if prefix_kv is None and slots.before_ids:
        parts.insert(0, emb(torch.tensor([slots.before_ids], device=dev)))
    inputs = torch.cat(parts, dim=1)
    kwargs: dict[str, Any] = {"inputs_embeds": inputs, "use_cache": True, "logits_to_keep": slots.n_target}
    if prefix_kv is not None:
        kwargs[cache_kwarg(net)] = make_cache(net, prefix_kv, 1, len(slots.before_ids))
    with torch.enable_grad():
        out = net(**kwargs)
        target = torch.tensor(slots.target_ids, device=dev)
        loss = F.cross_entropy(out.logits[0].float(), target)
        (g_e,) = torch.autograd.grad(loss, [e])
    grad = g_e[0].float() @ embedding_matrix(model).T
    kv = None
    if prefix_kv is not None:
        full = kv_of(cache_of(out))
        if full is not None:
            keep = len(slots.before_ids) + int(suffix_ids.numel())
            kv = [(k[:, :, :keep].detach(), v[:, :, :keep].detach()) for k, v in full]
    return GradientPass(grad, float(loss.item()), kv)


def embedding_matrix(model: LocalModel) -> torch.Tensor:
    """The model's input embedding matrix ``(vocab, hidden)`` as float32 (the gradient's projection uses the
    full-precision embeddings whatever dtype the pass ran in)."""
    w = model.model.get_input_embeddings().weight.detach()
    return w if w.dtype == torch.float32 else w.float()


@torch.no_grad()
def suffix_kv(model: LocalModel, slots: PromptSlots, suffix_ids: torch.Tensor) -> KV | None:
    """KV of the prefix plus ``suffix_ids`` (batch 1) in the model's own dtype, from the prefix cache: what
    exact scoring shares when the gradient pass ran in another dtype. None when uncached."""
    prefix_kv = slots.prefix_kv
    if prefix_kv is None:
        return None
    net = model.model
    ids = suffix_ids.to(model.device)[None]
    cache = make_cache(net, prefix_kv, 1, len(slots.before_ids))
    out = net(input_ids=ids, use_cache=True, logits_to_keep=1, **{cache_kwarg(net): cache})
    full = kv_of(cache_of(out))
    return None if full is None else [(k.detach(), v.detach()) for k, v in full]


# -- candidates -----------------------------------------------------------------------------------------------
def sample_candidates(
    ids: torch.Tensor,
    grad: torch.Tensor,
    search_width: int,
    topk: int,
    n_replace: int,
    disallowed: torch.Tensor | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """``(search_width, n_optim)`` candidates, each ``ids`` with ``n_replace`` random positions set to one of
    that position's ``topk`` tokens of most negative gradient (GCG's sampling, as in nanoGCG). Random draws
    use ``generator`` on the CPU, so a seed gives the same candidates on every device.

    Args:
        ids: ``(n_optim,)`` current suffix.
        grad: ``(n_optim, vocab)`` token gradient.
        disallowed: ``(vocab,)`` bool mask of tokens never proposed.
    """
    n = ids.numel()
    g = grad.float().clone()
    if disallowed is not None:
        g[:, disallowed.to(g.device)] = float("inf")
    top = (-g).topk(min(topk, g.shape[1]), dim=1).indices.cpu()  # (n, topk)
    k = top.shape[1]
    pos = torch.argsort(torch.rand((search_width, n), generator=generator), dim=1)[:, :n_replace]
    pick = torch.randint(0, k, (search_width, n_replace), generator=generator)
    vals = top[pos, pick]
    out = ids.cpu().repeat(search_width, 1)
    out.scatter_(1, pos, vals)
    return out


def unique_candidates(cands: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """``cands`` without duplicates (first occurrence kept, order kept) and without ``current``."""
    seen: set[tuple[int, ...]] = {tuple(current.tolist())}
    keep = []
    for i, row in enumerate(cands.tolist()):
        t = tuple(row)
        if t not in seen:
            seen.add(t)
            keep.append(i)
    return cands[keep]


def retokenisation_filter(
    model: LocalModel, slots_list: Sequence[PromptSlots], cands: torch.Tensor
) -> torch.Tensor:
    """Boolean ``(n_cands,)``: True where the candidate's text, placed in every prompt, tokenises back to
    exactly ``before_ids + candidate + after_ids``, so the evaluated prompt (built from text) is the optimised
    one. Stricter than nanoGCG, which checks the suffix alone and misses merges at its edges."""
    texts = model.tokenizer.batch_decode(cands.tolist())
    ok = torch.ones(len(texts), dtype=torch.bool)
    rows = cands.tolist()
    for slots in slots_list:
        enc = model.tokenizer(
            [slots.before_text + t + slots.after_text for t in texts], add_special_tokens=False
        )["input_ids"]
        for i, ids in enumerate(enc):
            if ok[i] and list(ids) != slots.prompt_ids(rows[i]):
                ok[i] = False
    return ok
