"""Batched candidate losses for GCG: prefix and shared-suffix KV caches, target-only logits, batches sized to
memory, and bfloat16 screening (see :mod:`alignscope.attacks.gcg_ops` for why each one is there)."""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil
import torch
from torch.nn import functional as F

from alignscope.attacks.gcg_ops import KV, PromptSlots, cache_kwarg, make_cache
from alignscope.models.fast_linear import pack_linears
from alignscope.models.local import LocalModel

log = logging.getLogger("alignscope.attacks.gcg")


@dataclass
class CandidateLosses:
    """Losses of a candidate set on one prompt: ``losses`` ``(n_cands,)`` float32 on CPU, and ``hits``
    ``(n_cands,)`` bool: the candidate already makes the model produce the whole target greedily (all False
    unless asked for: the argmax over the vocabulary is not free)."""

    losses: torch.Tensor
    hits: torch.Tensor


class CandidateScorer:
    """Scores candidate suffixes on one prompt with cached prefixes, grouped by first changed position.

    Args:
        model: the attacked model.
        max_batch: candidates per forward pass; None sizes it from free memory. Halved on out-of-memory
            and remembered.
        share_suffix: run each candidate from its first changed position (see the module docstring).
        overhead_tokens: a forward pass's fixed cost in token-equivalents: adjacent position groups are
            merged (running the later group from the earlier position) while that costs fewer recomputed
            tokens than a separate pass. None: 16 on CPU, 1024 on accelerators.
        dtype: run the candidates in this dtype (a converted copy of the model, see
            :func:`low_precision_copy`) instead of the model's own; used to screen candidates in bfloat16
            before scoring the best exactly.
    """

    def __init__(
        self,
        model: LocalModel,
        max_batch: int | None = None,
        share_suffix: bool = True,
        overhead_tokens: int | None = None,
        dtype: torch.dtype | None = None,
    ):
        self.model = model
        self.max_batch = max_batch
        self.share_suffix = share_suffix
        dev = model.device.type
        self.overhead = overhead_tokens if overhead_tokens is not None else (16 if dev == "cpu" else 1024)
        self.dtype = dtype or model.dtype
        self.net = model.model if self.dtype == model.dtype else low_precision_copy(model, self.dtype)

    # -- batch size ---------------------------------------------------------------------------------------
    def _auto_batch(self, slots: PromptSlots, n_optim: int, n_cands: int) -> int:
        if self.max_batch is not None:
            return max(1, min(self.max_batch, n_cands))
        cfg = self.model.model.config
        elem = torch.tensor([], dtype=self.dtype).element_size()
        layers = int(getattr(cfg, "num_hidden_layers", 32))
        hidden = int(getattr(cfg, "hidden_size", 4096))
        heads = int(getattr(cfg, "num_attention_heads", 32))
        kv_heads = int(getattr(cfg, "num_key_value_heads", heads) or heads)
        head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
        inter = int(getattr(cfg, "intermediate_size", 4 * hidden))
        seq = len(slots.before_ids) + n_optim + len(slots.after_ids) + slots.n_target
        new = n_optim + len(slots.after_ids) + slots.n_target
        vocab = int(getattr(cfg, "vocab_size", 32000))
        per = (
            layers * 2 * kv_heads * head_dim * seq * elem  # the cache, grown by the pass
            + new * (6 * hidden + 3 * inter + heads * seq) * elem  # one layer's live activations
            + slots.n_target * vocab * 4 * 3  # target logits in fp32, log-softmax and its gradient-free copy
        )
        dev = self.model.device
        free = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else psutil.virtual_memory().available
        size = int(0.3 * free // max(per, 1))
        self.max_batch = max(1, min(size, 4096))
        log.debug("candidate batch sized to %d (%.1f MiB per candidate)", self.max_batch, per / 2**20)
        return min(self.max_batch, n_cands)

    def _plan(self, first: list[int], batch: int) -> list[tuple[int, list[int]]]:
        """Batches ``(start position, candidate indices)``: candidates grouped by first changed position, a
        group joining the open batch (and running from its earlier start) while the tokens that recomputes
        cost less than a pass of its own."""
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(first):
            groups.setdefault(p, []).append(i)
        plans: list[tuple[int, list[int]]] = []
        for p in sorted(groups):
            idxs = groups[p]
            while idxs:
                if plans:
                    start, members = plans[-1]
                    room = batch - len(members)
                    if room > 0 and (p - start) * min(room, len(idxs)) <= self.overhead:
                        members += idxs[:room]
                        idxs = idxs[room:]
                        continue
                plans.append((p, idxs[:batch]))
                idxs = idxs[batch:]
        return plans

    # -- scoring ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def losses(
        self,
        slots: PromptSlots,
        current: torch.Tensor,
        cands: torch.Tensor,
        base_kv: KV | None,
        hits: bool = False,
    ) -> CandidateLosses:
        """Mean target cross-entropy of each candidate ``(n_cands, n_optim)`` on ``slots``.

        ``base_kv`` is the KV of the prefix plus ``current`` (from :func:`token_gradient`); without it (or
        with ``share_suffix`` off) every candidate runs its whole suffix from the prefix cache. ``hits`` also
        says which candidates make the model produce the whole target greedily."""
        n_cands, n_optim = cands.shape
        if n_cands == 0:
            return CandidateLosses(torch.empty(0), torch.empty(0, dtype=torch.bool))
        if self.share_suffix and base_kv is not None:
            kv: KV | None = _kv_as(base_kv, self.dtype)
            diff = cands.cpu() != current.cpu()[None]
            first = [int(x) for x in torch.where(diff.any(1), diff.int().argmax(1), n_optim - 1).tolist()]
        else:
            kv = slots.prefix_kv_as(self.dtype)
            first = [0] * n_cands
        out = torch.empty(n_cands, dtype=torch.float32)
        hit_out = torch.zeros(n_cands, dtype=torch.bool)
        batch = self._auto_batch(slots, n_optim, n_cands)
        plans = self._plan(first, batch)
        while plans:
            start, members = plans.pop(0)
            try:
                loss, hit = self._forward(slots, cands[members], start, kv, hits)
            except (torch.OutOfMemoryError, RuntimeError) as e:
                if not _is_oom(e) or len(members) == 1:
                    raise
                half = max(1, len(members) // 2)
                self.max_batch = half
                log.info("out of memory on %d candidates; batch size now %d", len(members), half)
                plans[:0] = [(start, members[:half]), (start, members[half:])]
                continue
            out[members] = loss
            if hit is not None:
                hit_out[members] = hit
        return CandidateLosses(out, hit_out)

    def _forward(
        self, slots: PromptSlots, cands: torch.Tensor, start: int, kv: KV | None, hits: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        net = self.net
        dev = self.model.device
        b = cands.shape[0]
        tail = torch.tensor([*slots.after_ids, *slots.target_ids[:-1]], dtype=torch.long)
        parts = [cands[:, start:].cpu(), tail[None].expand(b, -1)]
        kwargs: dict[str, Any] = {"use_cache": True, "logits_to_keep": slots.n_target}
        if kv is not None:
            kwargs[cache_kwarg(net)] = make_cache(net, kv, b, len(slots.before_ids) + start)
        elif slots.before_ids:
            parts.insert(0, torch.tensor([slots.before_ids]).expand(b, -1))
        ids = torch.cat(parts, dim=1).to(dev)
        logits = net(input_ids=ids, **kwargs).logits  # (b, n_target, vocab)
        target = torch.tensor(slots.target_ids, device=dev)
        ce = target_cross_entropy(logits, target)
        hit = (logits.argmax(-1) == target[None]).all(1).cpu() if hits else None
        return ce.mean(1).cpu(), hit


def target_cross_entropy(logits: torch.Tensor, target: torch.Tensor, rows: int = 4) -> torch.Tensor:
    """Per-token cross-entropy ``(batch, n)`` of ``target`` ``(n,)`` under ``logits`` ``(batch, n, vocab)``,
    in float32 whatever the logits' dtype.

    The same numbers as one ``F.cross_entropy`` call, a few rows at a time: the float32 copy and log-softmax
    of a row block stay in cache instead of streaming a ``(batch * n, vocab)`` float32 tensor through memory
    (4-6x less time for GCG's candidate batches)."""
    b, n, vocab = logits.shape
    flat = logits.reshape(b * n, vocab)
    tgt = target.repeat(b)
    out = torch.empty(b * n, dtype=torch.float32, device=logits.device)
    for i in range(0, b * n, rows):
        out[i : i + rows] = F.cross_entropy(flat[i : i + rows].float(), tgt[i : i + rows], reduction="none")
    return out.view(b, n)


_COPIES: weakref.WeakKeyDictionary[Any, dict[torch.dtype, tuple[tuple[int, ...], Any]]] = (
    weakref.WeakKeyDictionary()
)


def low_precision_copy(model: LocalModel, dtype: torch.dtype) -> Any:
    """A copy of ``model.model`` in ``dtype`` (for bfloat16 screening and gradients), made once per model
    and dtype and kept while the model lives. It is remade when the model's weights changed since (a
    parameter's storage or in-place version counter moved, e.g. after a training step), so a stale copy is
    never used."""
    net = model.model
    stamp = tuple(x for p in net.parameters() for x in (p.data_ptr(), p._version))
    per_dtype = _COPIES.setdefault(net, {})
    if dtype in per_dtype and per_dtype[dtype][0] == stamp:
        return per_dtype[dtype][1]
    low = copy.deepcopy(net).to(dtype)
    pack_linears(low)
    head = low.get_output_embeddings()
    if head is not None:
        # ``logits_to_keep`` hands the head a strided slice of the hidden states; torch 2.13's CPU bf16 linear
        # on a strided input is ~40x slower than on a contiguous one (when the weight needs no grad)
        head.register_forward_pre_hook(_contiguous_input)
    per_dtype[dtype] = (stamp, low)
    return low


def _contiguous_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


def fast_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matmuls natively (CUDA with bf16; CPUs with AVX512-BF16 or AMX),
    so screening candidates in bf16 pays off."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read(1 << 16)
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _kv_as(kv: KV, dtype: torch.dtype) -> KV:
    if kv[0][0].dtype == dtype:
        return kv
    return [(k.to(dtype), v.to(dtype)) for k, v in kv]


def _is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.OutOfMemoryError):
        return True
    msg = str(e)
    return "out of memory" in msg or "can't allocate memory" in msg


def full_loss(model: LocalModel, prompt_ids: Sequence[int], target_ids: Sequence[int]) -> float:
    """Mean target cross-entropy of ``target_ids`` after ``prompt_ids`` from one plain forward pass (no cache):
    the reference the optimiser's reported losses are checked against."""
    ids = torch.tensor([[*prompt_ids, *target_ids]], device=model.device)
    with torch.no_grad():
        logits = model.model(input_ids=ids).logits[0]
    n = len(target_ids)
    pred = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + n].float()
    return float(F.cross_entropy(pred, torch.tensor(list(target_ids), device=model.device)).item())
