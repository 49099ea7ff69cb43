"""Projector training on transformers' Trainer: CTC against the LLM's token embeddings (no LLM forward pass,
:class:`TokenCTCModule`), the ASR-style objective, KL distillation from the LLM reading the transcript, and the
batched forward pass the last two share.

The ASR and distillation stages see the same sequence after the chat prefix (the formatted text before the audio
marker, identical for every example, so it is run once and kept as a KV cache)::

    [audio embeddings] [text after the marker: end of user turn, assistant header, any instruction] [target]

Only the target tokens are scored: the transcript (and end of turn) in the ASR stage, the teacher's response in
distillation. Right padding is used, so positions need no correction; the logits are computed at the scored
positions only (the LM head is the largest matrix of a small LLM).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

from alignscope.speech.errors import SpeechError
from alignscope.speech.model.projector import Projector

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "ProjectorTrainer",
    "SpeechExample",
    "SpeechTrainingModule",
    "TokenCTCModule",
    "collate_examples",
    "distillation_kl",
    "target_labels",
    "target_starts",
    "target_weights",
]


def target_labels(n_audio: int, n_after: int, target_ids: Sequence[int]) -> list[int]:
    """Labels over the sequence after the chat prefix: :data:`IGNORE_INDEX` at the ``n_audio`` audio positions
    and the ``n_after`` template/instruction positions, the token id at each target position."""
    return [IGNORE_INDEX] * (n_audio + n_after) + [int(t) for t in target_ids]


def target_weights(lengths: Sequence[int], head_tokens: int = 0, head_weight: float = 1.0) -> torch.Tensor:
    """Loss weights ``(sum(lengths),)`` of the scored tokens of a batch, row after row: ``head_weight`` for the
    first ``head_tokens`` tokens of each target, 1 for the rest.

    A distilled speech LLM decides to refuse or to answer at the first response tokens ("I'm sorry" against
    "Sure"); averaged over a long teacher answer, those few positions weigh little next to the many that
    follow from them, which the LLM predicts from the teacher-forced text alone."""
    if head_weight <= 0:
        raise SpeechError(f"head_weight must be positive, got {head_weight}")
    rows = [torch.ones(n) for n in lengths]
    for r in rows:
        r[: max(0, head_tokens)] = head_weight
    return torch.cat(rows) if rows else torch.ones(0)


def target_starts(examples: Sequence[SpeechExample]) -> torch.Tensor:
    """Index of each example's first target token among a batch's scored tokens (they are concatenated)."""
    return torch.tensor([0, *[len(e.target_ids) for e in examples[:-1]]], dtype=torch.long).cumsum(0)


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 2.0,
    direction: str = "reverse",
) -> torch.Tensor:
    """Per-position KL divergence between the softened distributions ``p_s = softmax(student / T)`` and
    ``p_t = softmax(teacher / T)``: ``(n,)`` float32 from ``(n, vocab)`` logits.

    ``direction="reverse"`` is KL(student || teacher) = sum p_s (log p_s - log p_t), as in SpeechGuard's
    description of Ultravox's distillation; ``"forward"`` is KL(teacher || student), what
    ``torch.nn.functional.kl_div(log p_s, log p_t, log_target=True)`` computes.
    """
    if direction not in ("reverse", "forward"):
        raise SpeechError(f"unknown KL direction {direction!r} (use 'reverse' or 'forward')")
    ls = F.log_softmax(student_logits.float() / temperature, dim=-1)
    lt = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    if direction == "reverse":
        return (ls.exp() * (ls - lt)).sum(-1)
    return (lt.exp() * (lt - ls)).sum(-1)


@dataclass
class SpeechExample:
    """One training example.

    Attributes:
        features: ``(frames, encoder_dim)`` cached encoder output of the clip.
        after_ids: token ids between the audio and the target (end of the user turn, assistant header).
        target_ids: scored token ids (transcript + end of turn, or the teacher's response).
        teacher_ids: distillation only: the teacher's token ids after the shared chat prefix up to the target
            (the transcript as text, end of user turn, assistant header).
        key: distillation only: identifies the teacher input, so its logits can be computed once.
        transcript_ids: distillation only: token ids of what the clip says (the CTC target of the optional
            CTC term).
    """

    features: torch.Tensor
    after_ids: list[int]
    target_ids: list[int]
    teacher_ids: list[int] | None = None
    key: int = -1
    transcript_ids: list[int] | None = None


class ExampleDataset(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self, examples: Sequence[SpeechExample]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"example": self.examples[i]}


def collate_examples(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Trainer collator: zero-padded ``features`` ``(batch, max_frames, dim)``, ``frames`` ``(batch,)`` and the
    examples themselves (the token layout is built in :meth:`SpeechTrainingModule.student_inputs`)."""
    examples = [r["example"] for r in rows]
    frames = torch.tensor([e.features.shape[0] for e in examples])
    width = int(frames.max())
    dim = examples[0].features.shape[1]
    feats = torch.zeros((len(examples), width, dim), dtype=torch.float32)
    for i, e in enumerate(examples):
        feats[i, : e.features.shape[0]] = e.features.float()
    return {"features": feats, "frames": frames, "examples": examples}


class SpeechTrainingModule(nn.Module):
    """The projector (trained) in front of an LLM whose shared chat prefix is cached.

    The LLM is held outside the module's registered children, so Trainer checkpoints and the optimiser see the
    projector alone (a checkpoint is a few MB, not the LLM) plus the LLM's own trainable parameters, if any
    (LoRA layers peft added to ``llm_model``: they are registered as ``llm_trainable``).

    Args:
        projector: the projector to train.
        llm_model: the transformers causal LM the student runs (frozen, or with trainable LoRA layers).
        prefix_ids: token ids of the chat text before the audio marker (the same for every example).
        autocast: run the LLM under bfloat16 autocast (about 1.6x faster on a CPU with AVX512-BF16).
        teacher_cache_bytes: keep teacher logits (float16) of up to this many bytes, so a teacher input seen
            again (the same prompt in another voice, or a later epoch) costs no forward pass.
        teacher_model: the LLM that reads the transcript (None: ``llm_model``); a build that trains LoRA layers
            on the student passes the unchanged LLM here.
        ctc: the CTC objective (:class:`TokenCTCModule` on the same projector) added to the distillation loss
            with weight ``ctc_weight``, on each example's ``transcript_ids``, so that distillation keeps the
            projector's audio embeddings on the tokens spoken (None: off).
        ctc_weight: weight of that term.
    """

    def __init__(
        self,
        projector: Projector,
        llm_model: Any,
        prefix_ids: Sequence[int],
        autocast: bool = True,
        teacher_cache_bytes: int = 2 * 1024**3,
        teacher_model: Any = None,
        ctc: TokenCTCModule | None = None,
        ctc_weight: float = 0.0,
    ):
        super().__init__()
        self.projector = projector
        if ctc is not None and ctc.projector is not projector:
            raise SpeechError("the CTC term must score the projector being trained")
        self._ctc = (ctc,)  # a tuple: its projector is registered here already
        self.ctc_scale = ctc.log_scale if ctc is not None else None  # its learned scale is trained too
        self.ctc_weight = ctc_weight
        self._llm = (llm_model,)  # a tuple: not a registered submodule
        self._teacher_llm = (teacher_model if teacher_model is not None else llm_model,)
        # the student LLM's trainable parameters (LoRA layers), shared with it, so the optimiser and
        # checkpoints see them; empty for a frozen LLM
        self.llm_trainable = nn.ParameterList([p for p in llm_model.parameters() if p.requires_grad])
        self.autocast = autocast
        self.teacher_cache_bytes = teacher_cache_bytes
        self._teacher: dict[int, torch.Tensor] = {}
        self._teacher_bytes = 0
        self.prefix_ids = list(prefix_ids)
        self.prefix_len = len(prefix_ids)
        # transformers 5.x renamed ``past_key_values`` to ``cache``
        self._cache_arg = (
            "cache" if "cache" in inspect.signature(self.decoder.forward).parameters else "past_key_values"
        )
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        if prefix_ids:
            with torch.no_grad():
                self._prefix_kv = self._prefix_cache(self.teacher_llm)

    @property
    def llm(self) -> Any:
        """The LLM the student runs."""
        return self._llm[0]

    @property
    def teacher_llm(self) -> Any:
        """The LLM that reads the transcript."""
        return self._teacher_llm[0]

    @property
    def decoder(self) -> Any:
        return self.llm.get_decoder()

    def _prefix_cache(self, llm: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values of ``llm`` over the shared chat prefix."""
        with self._autocast():
            ids = torch.tensor([self.prefix_ids], device=self.device)
            out = llm.get_decoder()(input_ids=ids, use_cache=True)
        cache = getattr(out, "cache", None) or out.past_key_values
        return [(layer.keys, layer.values) for layer in cache.layers]

    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    def _autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast)

    # -- forward ----------------------------------------------------------------------------------------------
    def _scored_logits(
        self, embeds: torch.Tensor, attention: torch.Tensor, labels: torch.Tensor, teacher: bool = False
    ) -> torch.Tensor:
        """Logits ``(n_scored, vocab)`` at the positions that predict the labelled tokens, in row-major order.

        ``embeds`` ``(batch, T, hidden)`` right-padded sequences after the prefix, ``attention`` ``(batch, T)``,
        ``labels`` ``(batch, T)``; run by the teacher LLM when ``teacher``, else by the student's."""
        from transformers import DynamicCache

        llm = self.teacher_llm if teacher else self.llm
        b, t, _ = embeds.shape
        extra: dict[str, Any] = {}
        mask = attention
        positions = torch.arange(t, device=embeds.device).unsqueeze(0).expand(b, -1)
        if self._prefix_kv:
            # trained LoRA layers change the prefix's keys and values: recomputed (a few dozen tokens) per batch
            prefix_kv = self._prefix_kv if teacher or not len(self.llm_trainable) else self._prefix_cache(llm)
            kv = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v in prefix_kv]
            extra[self._cache_arg] = DynamicCache(kv)
            ones = torch.ones((b, self.prefix_len), dtype=attention.dtype, device=attention.device)
            mask = torch.cat([ones, attention], dim=1)
            positions = positions + self.prefix_len
        with self._autocast():
            hidden = llm.get_decoder()(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, **extra
            ).last_hidden_state
            # position p predicts token p + 1; the first token after the prefix is never scored (audio)
            scored = labels[:, 1:] != IGNORE_INDEX
            h = hidden[:, :-1][scored]
            return llm.get_output_embeddings()(h).float()

    def _layout(
        self,
        heads: Sequence[torch.Tensor],
        middles: Sequence[Sequence[int]],
        targets: Sequence[Sequence[int]],
        teacher: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ``(embeds, attention, labels)`` for rows ``head embeddings + middle ids + target ids``
        (the ids embedded by the teacher's LLM when ``teacher``, else by the student's)."""
        table = (self.teacher_llm if teacher else self.llm).get_input_embeddings()
        rows, labels = [], []
        for head, mid, tgt in zip(heads, middles, targets, strict=True):
            ids = torch.tensor([*mid, *tgt], dtype=torch.long, device=self.device)
            rows.append(torch.cat([head.to(table.weight.dtype), table(ids)]))
            labels.append(target_labels(head.shape[0], len(mid), tgt))
        width = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros((len(rows), width, rows[0].shape[1]))
        attention = torch.zeros((len(rows), width), dtype=torch.long, device=self.device)
        lab = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long, device=self.device)
        for i, (r, lb) in enumerate(zip(rows, labels, strict=True)):
            embeds[i, : r.shape[0]] = r
            attention[i, : r.shape[0]] = 1
            lab[i, : r.shape[0]] = torch.tensor(lb, dtype=torch.long)
        return embeds, attention, lab

    def student_logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (n_scored, vocab), targets (n_scored,))`` of the LLM hearing the audio; differentiable with
        respect to the projector."""
        examples: list[SpeechExample] = batch["examples"]
        feats = batch["features"].to(self.device)
        audio = self.projector(feats)
        stack = self.projector.config.stack
        heads = [audio[i, : math.ceil(int(n) / stack)] for i, n in enumerate(batch["frames"])]
        embeds, attention, labels = self._layout(
            heads, [e.after_ids for e in examples], [e.target_ids for e in examples]
        )
        logits = self._scored_logits(embeds, attention, labels)
        return logits, labels[:, 1:][labels[:, 1:] != IGNORE_INDEX]

    @torch.no_grad()
    def teacher_logits(self, examples: Sequence[SpeechExample]) -> torch.Tensor:
        """``(n_scored, vocab)`` logits of the LLM reading the transcript, in the order of
        :meth:`student_logits`; logits of a teacher input already seen come from the cache."""
        missing = [e for e in examples if e.key < 0 or e.key not in self._teacher]
        if missing:
            if any(e.teacher_ids is None for e in missing):
                raise SpeechError("a distillation example has no teacher input (teacher_ids)")
            empty = [torch.zeros((0, self.llm.config.hidden_size), device=self.device)] * len(missing)
            embeds, attention, labels = self._layout(
                empty, [e.teacher_ids or [] for e in missing], [e.target_ids for e in missing], teacher=True
            )
            logits = self._scored_logits(embeds, attention, labels, teacher=True).to(torch.float16)
            parts = logits.split([len(e.target_ids) for e in missing])
            fresh = {}
            for e, part in zip(missing, parts, strict=True):
                fresh[id(e)] = part
                size = part.numel() * part.element_size()
                if e.key >= 0 and self._teacher_bytes + size <= self.teacher_cache_bytes:
                    self._teacher[e.key] = part
                    self._teacher_bytes += size
        rows = [
            self._teacher[e.key] if e.key >= 0 and e.key in self._teacher else fresh[id(e)] for e in examples
        ]
        return torch.cat(rows).float()

    def loss(
        self,
        batch: dict[str, Any],
        objective: str,
        temperature: float = 2.0,
        direction: str = "reverse",
        head_tokens: int = 0,
        head_weight: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The objective's weighted mean over scored tokens (the first ``head_tokens`` of each target weigh
        ``head_weight``, the others 1), and per-batch statistics: top-1 agreement with the target tokens
        (``top1``) and at each target's first token (``first_top1``)."""
        logits, targets = self.student_logits(batch)
        examples: list[SpeechExample] = batch["examples"]
        weights = target_weights([len(e.target_ids) for e in examples], head_tokens, head_weight)
        weights = weights.to(logits.device)
        if objective == "asr":
            per_token = F.cross_entropy(logits, targets, reduction="none")
        elif objective == "distill":
            teacher = self.teacher_logits(examples)
            per_token = distillation_kl(logits, teacher, temperature, direction)
        else:
            raise SpeechError(f"unknown objective {objective!r} (use 'asr' or 'distill')")
        loss = (per_token * weights).sum() / weights.sum()
        hits = logits.detach().argmax(-1) == targets
        firsts = target_starts(examples).to(hits.device)
        stats = {"top1": hits.float().mean().item(), "first_top1": hits[firsts].float().mean().item()}
        ctc = self._ctc[0]
        if objective == "distill" and ctc is not None and self.ctc_weight > 0:
            if any(e.transcript_ids is None for e in examples):
                raise SpeechError(
                    "a distillation example has no transcript (transcript_ids) for the CTC term"
                )
            spoken = [SpeechExample(e.features, [], e.transcript_ids or []) for e in examples]
            ctc_loss, _ = ctc.loss({**batch, "examples": spoken})
            loss = loss + self.ctc_weight * ctc_loss
            stats["ctc"] = ctc_loss.item()
        return loss, stats


class TokenCTCModule(nn.Module):
    """The projector trained with CTC to put each audio embedding on the direction of the LLM's input embedding
    of the token spoken there; no LLM forward pass, so a step costs milliseconds per clip.

    The class scores are scaled cosine similarities between an audio embedding and rows of the LLM's input
    embedding table (``vocab``: the token ids that compete, default the whole vocabulary); CTC's blank is the
    embedding of ``blank_id`` (default in a build: the token of a single space), so wherever no token is emitted
    the LLM later reads a neutral token rather than an arbitrary vector. After this stage the nearest token
    embeddings of a held-out clip's audio embeddings spell out much of its transcript, though the frozen LLM does
    not yet read them as text; the ASR stage, starting from there, teaches it to (from a random projector the
    same ASR budget did not).

    Args:
        projector: the projector to train.
        embeddings: the LLM's input embedding table ``(vocab, hidden)`` (normalised copy, frozen).
        blank_id: the token id that serves as CTC's blank (dropped from the targets).
        vocab: token ids scored (the targets' ids and ``blank_id`` are always added); None: all.
        scale: initial softmax scale of the cosine similarities (learned).
    """

    def __init__(
        self,
        projector: Projector,
        embeddings: torch.Tensor,
        blank_id: int,
        vocab: Sequence[int] | None = None,
        scale: float = 20.0,
    ):
        super().__init__()
        self.projector = projector
        self.blank_id = int(blank_id)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        ids = sorted({*vocab, self.blank_id}) if vocab is not None else list(range(embeddings.shape[0]))
        self._ids = torch.tensor(ids, dtype=torch.long)
        self._class = {t: i for i, t in enumerate(ids)}
        # a plain attribute, not a buffer: Trainer checkpoints hold the projector only
        self._table = F.normalize(embeddings.detach()[self._ids].float(), dim=-1)

    def loss(self, batch: dict[str, Any], *_: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean CTC loss per target token, and the share of tokens emitted by the greedy path that belong to the
        clip's transcript (``top1``)."""
        examples: list[SpeechExample] = batch["examples"]
        table = self._table.to(batch["features"].device)
        audio = F.normalize(self.projector(batch["features"]).float(), dim=-1)
        n_audio = torch.tensor([math.ceil(int(n) / self.projector.config.stack) for n in batch["frames"]])
        logits = self.log_scale.exp() * audio @ table.T  # (batch, T, classes)
        blank = self._class[self.blank_id]
        try:
            targets = [[self._class[t] for t in e.target_ids if t != self.blank_id] for e in examples]
        except KeyError as e:
            raise SpeechError(f"token {e} of a transcript is not in the CTC vocabulary") from e
        flat = torch.tensor([t for tg in targets for t in tg], dtype=torch.long)
        lengths = torch.tensor([len(tg) for tg in targets], dtype=torch.long)
        loss = F.ctc_loss(
            F.log_softmax(logits, dim=-1).transpose(0, 1), flat, n_audio, lengths, blank=blank,
            reduction="sum", zero_infinity=True,
        ) / lengths.sum().clamp(min=1)  # fmt: skip
        with torch.no_grad():
            best = logits.argmax(-1)
            hit = emitted = 0
            for i, tg in enumerate(targets):
                tokens = [int(t) for t in best[i, : int(n_audio[i])] if int(t) != blank]
                spoken = set(tg)
                emitted += len(tokens)
                hit += sum(t in spoken for t in tokens)
        return loss, {"top1": hit / max(1, emitted)}


class ProjectorTrainer(Trainer):
    """transformers' Trainer on a :class:`SpeechTrainingModule`: only ``compute_loss`` is overridden
    (``objective`` ``"asr"`` = cross-entropy on the transcript, ``"distill"`` = KL to the teacher at
    ``temperature``; the first ``head_tokens`` of each target weigh ``head_weight``); the running top-1
    agreement of the scored tokens (``top1``, and ``first_top1`` at each target's first token) is logged next to
    the loss. ``llm_lr`` is the peak learning rate of the LLM's trainable (LoRA) parameters, if the module has
    any (None: the projector's)."""

    def __init__(
        self,
        *args: Any,
        objective: str = "asr",
        temperature: float = 2.0,
        direction: str = "reverse",
        head_tokens: int = 0,
        head_weight: float = 1.0,
        llm_lr: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.objective: str = objective
        self.temperature: float = temperature
        self.direction: str = direction
        self.head_tokens: int = head_tokens
        self.head_weight: float = head_weight
        self.llm_lr = llm_lr
        self._stats: list[dict[str, float]] = []

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """Trainer's optimiser, with the LLM's trainable parameters moved to a group of their own at ``llm_lr``
        (before the first step, so no optimiser state moves; the schedule scales both groups alike)."""
        created = self.optimizer is None
        optimizer = super().create_optimizer(model)
        llm_params = {id(p) for p in getattr(self.model, "llm_trainable", [])}
        if created and llm_params and self.llm_lr is not None:
            moved: list[torch.nn.Parameter] = []
            for group in optimizer.param_groups:
                moved += [p for p in group["params"] if id(p) in llm_params]
                group["params"] = [p for p in group["params"] if id(p) not in llm_params]
            optimizer.add_param_group({"params": moved, "lr": self.llm_lr, "weight_decay": 0.0})
        return optimizer

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        loss, stats = model.loss(
            inputs, self.objective, self.temperature, self.direction, self.head_tokens, self.head_weight
        )
        self._stats.append(stats)
        return (loss, {"loss": loss}) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._stats and "loss" in logs:
            for key in self._stats[0]:
                values = [s[key] for s in self._stats if key in s]
                logs[key] = round(sum(values) / len(values), 4)
            self._stats = []
        super().log(logs, *args, **kwargs)
