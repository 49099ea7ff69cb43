"""A speech language model: a frozen audio encoder, a projector and an alignscope :class:`LocalModel`.

The user turn holds an audio placeholder, :data:`AUDIO_MARKER`, as plain text. The chat is formatted with the
LLM's own template, the formatted text is split at the marker, the two halves are tokenised on their own, and
the projected audio embeddings are spliced between their token embeddings. The marker never reaches the
tokenizer, so no token is added to the vocabulary, and the chat template, system prompts and prefill work
unchanged::

    slm = SpeechLM(whisper_encoder(), Projector.load(path), load_model("smollm2"))
    slm.generate([waveform], GenerationConfig(max_new_tokens=64))
    slm.target_loss(waveform.requires_grad_(), "Sure, here is").backward()  # gradients reach the samples

Shapes: a clip is ``(n,)`` float samples in [-1, 1] at 16 kHz; ``crop=True`` runs the encoder on the clip's
own length (``n // 160`` mel frames rounded down to even, half as many encoder frames, and with ``stack=8``
an eighth as many audio embeddings, rounded up); ``crop=False`` pads every clip to 30 s as Whisper was
trained (1500 encoder frames, 188 embeddings).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from alignscope.models.base import (
    ChatModelBase,
    Conversation,
    GenerationConfig,
    GenerationRequest,
    Prefill,
    user_turn,
)
from alignscope.models.local import LocalModel, ResponseBatch
from alignscope.speech.errors import SpeechError
from alignscope.speech.model.features import N_SAMPLES_30S, log_mel
from alignscope.speech.model.projector import Projector

AUDIO_MARKER = "<|audio|>"
"""Where the audio goes in a user turn (text; replaced by the audio embeddings, never tokenised)."""

Clips = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]
"""One clip ``(n,)``, a batch of equal-length clips ``(batch, n)``, or a sequence of ``(n_i,)`` clips."""


class AudioEncoder(Protocol):
    """A Whisper-style encoder: ``(batch, n_mels, frames)`` log-mel -> ``(batch, frames // 2, d_model)``."""

    d_model: int
    n_mels: int

    def __call__(self, mel: torch.Tensor) -> torch.Tensor: ...


@dataclass
class SpokenInputs:
    """A left-padded batch ready for the LLM.

    Attributes:
        inputs_embeds: ``(batch, width, hidden)`` in the LLM's dtype (zeros at padding).
        attention_mask: ``(batch, width)`` long, 0 at left padding.
        audio_spans: per row, ``(start, end)`` positions of the audio embeddings in the padded row.
        lengths: per row, real (unpadded) length.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    audio_spans: list[tuple[int, int]]
    lengths: list[int]

    @property
    def position_ids(self) -> torch.Tensor:
        """Positions counted from each row's first real token, so a padded row sees the positions it would
        alone (transformers derives these itself in ``generate``, not in a plain forward pass)."""
        return (self.attention_mask.cumsum(-1) - 1).clamp(min=0)


def as_clips(waveforms: Clips, device: torch.device | None = None) -> list[torch.Tensor]:
    """``waveforms`` as a list of 1-D float32 clips on ``device``; differentiable (no copy is detached)."""
    if isinstance(waveforms, np.ndarray | torch.Tensor):
        w = torch.as_tensor(waveforms)
        if w.dim() == 1:
            items: list[Any] = [w]
        elif w.dim() == 2:
            items = list(w.unbind(0))
        else:
            raise SpeechError(f"expected a waveform of shape (n,) or (batch, n), got {tuple(w.shape)}")
    else:
        items = list(waveforms)
    clips = []
    for i, c in enumerate(items):
        t = torch.as_tensor(c)
        if t.dim() != 1:
            raise SpeechError(f"clip {i}: expected shape (n,), got {tuple(t.shape)}")
        clips.append(t.to(device=device, dtype=torch.float32))
    if not clips:
        raise SpeechError("no audio clips given")
    return clips


def _per_item(value: Any, n: int, what: str) -> list[Any]:
    """``value`` repeated ``n`` times, or a per-item sequence of length ``n`` (strings count as one value)."""
    if (
        value is None
        or isinstance(value, str)
        or (isinstance(value, Sequence) and value and isinstance(value[0], int))
    ):
        return [value] * n
    items = list(value)
    if len(items) != n:
        raise SpeechError(f"give one {what} per clip ({n}), got {len(items)}")
    return items


def user_content(prompt_text: str | None, marker: str = AUDIO_MARKER) -> str:
    """The user-turn text: the marker alone, ``prompt_text`` if it places the marker itself, else the marker
    then ``prompt_text`` on a new line."""
    if prompt_text is None:
        return marker
    if marker in prompt_text:
        return prompt_text
    return f"{marker}\n{prompt_text}"


class SpeechLM:
    """Encoder (frozen) + projector + LLM.

    Args:
        encoder: a Whisper-style encoder (:class:`AudioEncoder`); frozen here (``requires_grad`` off).
        projector: maps encoder frames to LLM embeddings; left trainable.
        llm: the language model; its chat template, tokenizer and weights are used as they are.
        crop: run the encoder on each clip's own length (fast; what alignscope's projectors are trained on);
            False pads every clip to 30 s, Whisper's default.
        marker: the audio placeholder text.
        name: the name reports show (default ``"<llm name>+audio"``).
        train_llm: leave the LLM's ``requires_grad`` flags as they are. By default they are switched off, so a
            ``target_loss(...).backward()`` for an attack or a projector build does not fill a ``.grad`` as large
            as the LLM (LoRA layers added later by peft set their own flags).
        text_llm: the LLM that reads text: the model the speech LLM is compared with, which answers the
            transcripts (None: ``llm``). A build that trained LoRA layers on the LLM runs ``llm`` with them merged
            and passes the unchanged LLM here.
        llm_adapter: the directory of that LoRA adapter (kept so a projector derived from this one, e.g. by
            adversarial training, is saved with it).
    """

    def __init__(
        self,
        encoder: AudioEncoder | torch.nn.Module,
        projector: Projector,
        llm: LocalModel,
        crop: bool = True,
        marker: str = AUDIO_MARKER,
        name: str | None = None,
        train_llm: bool = False,
        text_llm: LocalModel | None = None,
        llm_adapter: Path | None = None,
    ):
        enc: Any = encoder
        if int(enc.d_model) != projector.config.encoder_dim:
            raise SpeechError(
                f"projector expects {projector.config.encoder_dim}-dim encoder frames, encoder gives {enc.d_model}"
            )
        hidden = int(llm.model.config.hidden_size)
        if projector.config.llm_dim != hidden:
            raise SpeechError(
                f"projector outputs width {projector.config.llm_dim}, {llm.name} expects {hidden}"
            )
        self.llm = llm
        self.text_llm = text_llm if text_llm is not None else llm
        self.llm_adapter = llm_adapter
        if not train_llm:
            llm.model.requires_grad_(False)
        self.encoder: Any = enc.to(llm.device).eval().requires_grad_(False)
        self.projector = projector.to(llm.device)
        self.crop = crop
        self.marker = marker
        self.name = name or f"{llm.name}+audio"
        self._keep_arg = "logits_to_keep" in inspect.signature(llm.model.forward).parameters

    def with_projector(self, projector: Projector, name: str | None = None) -> SpeechLM:
        """The same speech LM (encoder, LLMs, adapter, crop, marker) with another projector. The LLM's
        ``requires_grad`` flags stay as this one left them."""
        return SpeechLM(self.encoder, projector, self.llm, crop=self.crop, marker=self.marker,
                        name=name or self.name, train_llm=True, text_llm=self.text_llm,
                        llm_adapter=self.llm_adapter)  # fmt: skip

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.llm.device

    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    def describe(self) -> str:
        mode = "encoder cropped to clip length" if self.crop else "encoder on 30 s padded input"
        return f"{self.name} ({mode}, stack {self.projector.config.stack})"

    # -- audio ------------------------------------------------------------------------------------------------
    def audio_embeds(self, waveforms: Clips) -> list[torch.Tensor]:
        """Per clip, its ``(n_audio_tokens, hidden)`` embeddings in the LLM's dtype; differentiable w.r.t. the
        samples. Clips of equal length share one encoder pass (cropped clips of different lengths cannot: the
        zero padding would change the shorter clip's features)."""
        clips = as_clips(waveforms, self.device)
        for i, c in enumerate(clips):
            if c.numel() > N_SAMPLES_30S:
                raise SpeechError(f"clip {i} is {c.numel() / 16000:.1f} s long; Whisper takes at most 30 s")
        if not self.crop:
            clips = [torch.nn.functional.pad(c, (0, N_SAMPLES_30S - c.numel())) for c in clips]
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(clips):
            groups.setdefault(c.numel(), []).append(i)
        enc_dtype = next(self.encoder.parameters()).dtype
        out: list[torch.Tensor] = [torch.empty(0)] * len(clips)
        for idx in groups.values():
            mel = log_mel(torch.stack([clips[i] for i in idx]), n_mels=int(self.encoder.n_mels))
            emb = self.projector(self.encoder(mel.to(enc_dtype))).to(self.llm.dtype)
            for row, i in enumerate(idx):
                out[i] = emb[row]
        return out

    # -- prompt -----------------------------------------------------------------------------------------------
    def conversation(self, prompt_text: str | None = None, system: str | None = None) -> Conversation:
        """A one-turn chat whose user turn holds the audio marker (and ``prompt_text``)."""
        return user_turn(user_content(prompt_text, self.marker), system)

    def split_prompt(
        self, conversation: Conversation, prefill: Prefill = None
    ) -> tuple[list[int], list[int]]:
        """Token ids before and after the marker in the formatted ``conversation``; the prefill (text or ids)
        is appended to the part after."""
        text = self.llm.format_chat(conversation)
        if text.count(self.marker) != 1:
            raise SpeechError(
                f"the formatted chat must hold the audio marker {self.marker!r} exactly once, "
                f"found {text.count(self.marker)}: {conversation!r}"
            )
        before, after = text.split(self.marker)
        after_ids = self._encode(after)
        if prefill:
            after_ids += self._encode(prefill) if isinstance(prefill, str) else [int(t) for t in prefill]
        return self._encode(before), after_ids

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    # -- embedding --------------------------------------------------------------------------------------------
    def embed(
        self,
        waveforms: Clips,
        prompt_text: str | Sequence[str | None] | None = None,
        prefill: Prefill | Sequence[Prefill] = None,
        system: str | None = None,
        suffixes: Sequence[Sequence[int]] | None = None,
    ) -> SpokenInputs:
        """Left-padded ``inputs_embeds`` and attention mask for one-turn spoken prompts.

        ``prompt_text`` and ``prefill`` are one value for every clip or one per clip; ``suffixes`` (token ids
        per clip, e.g. a target response) are appended after the prefill."""
        clips = as_clips(waveforms, self.device)
        texts = _per_item(prompt_text, len(clips), "prompt_text")
        convs = [self.conversation(t, system) for t in texts]
        return self.embed_conversations(clips, convs, _per_item(prefill, len(clips), "prefill"), suffixes)

    def embed_conversations(
        self,
        waveforms: Clips,
        conversations: Sequence[Conversation],
        prefills: Sequence[Prefill] | None = None,
        suffixes: Sequence[Sequence[int]] | None = None,
    ) -> SpokenInputs:
        """As :meth:`embed`, for chats that each hold the marker once (any turns, any system prompt)."""
        clips = as_clips(waveforms, self.device)
        n = len(clips)
        if len(conversations) != n or (prefills is not None and len(prefills) != n):
            raise SpeechError(f"give one conversation (and prefill) per clip ({n})")
        if suffixes is not None and len(suffixes) != n:
            raise SpeechError(f"give one suffix per clip ({n})")
        audio = self.audio_embeds(clips)
        table = self.llm.model.get_input_embeddings()
        rows: list[torch.Tensor] = []
        offsets: list[int] = []
        for i in range(n):
            before, after = self.split_prompt(conversations[i], prefills[i] if prefills is not None else None)
            if suffixes is not None:
                after = after + [int(t) for t in suffixes[i]]
            ids_b = torch.tensor(before, dtype=torch.long, device=self.device)
            ids_a = torch.tensor(after, dtype=torch.long, device=self.device)
            rows.append(torch.cat([table(ids_b), audio[i], table(ids_a)]))
            offsets.append(len(before))
        width = max(r.shape[0] for r in rows)
        hidden = rows[0].shape[1]
        embeds = rows[0].new_zeros((n, width, hidden))
        mask = torch.zeros((n, width), dtype=torch.long, device=self.device)
        spans = []
        for i, r in enumerate(rows):
            pad = width - r.shape[0]
            embeds[i, pad:] = r
            mask[i, pad:] = 1
            spans.append((pad + offsets[i], pad + offsets[i] + audio[i].shape[0]))
        return SpokenInputs(embeds, mask, spans, [r.shape[0] for r in rows])

    # -- forward passes ---------------------------------------------------------------------------------------
    def forward_logits(self, inputs: SpokenInputs, last: int | None = None) -> torch.Tensor:
        """``(batch, width or last, vocab)`` logits; ``last`` keeps only the last positions (cheaper: the LM
        head is the largest matrix of a small LLM)."""
        extra: dict[str, Any] = {}
        if last is not None and self._keep_arg:
            extra["logits_to_keep"] = last
        out = self.llm.model(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=False,
            **extra,
        )
        logits = out.logits
        return logits[:, -last:] if last is not None else logits

    def response_logits(
        self,
        waveforms: Clips,
        responses: str | Sequence[str | Sequence[int]],
        prompt_text: str | Sequence[str | None] | None = None,
        prefill: Prefill | Sequence[Prefill] = None,
        system: str | None = None,
    ) -> ResponseBatch:
        """Teacher-forced logits at every response position (for distillation and target losses).

        Unlike :meth:`LocalModel.response_logits` this keeps the autograd graph and the device: ``logits`` is
        ``(batch, max_response_len, vocab)`` in the LLM's dtype; column k predicts response token k."""
        clips = as_clips(waveforms, self.device)
        resp = responses if not isinstance(responses, str) else [responses] * len(clips)
        ids = [self.llm.response_ids(r) if isinstance(r, str) else [int(t) for t in r] for r in resp]
        if len(ids) != len(clips):
            raise SpeechError(f"give one response per clip ({len(clips)}), got {len(ids)}")
        if any(not r for r in ids):
            raise SpeechError("empty response: nothing to score")
        inputs = self.embed(clips, prompt_text, prefill, system, suffixes=ids)
        rmax = max(len(r) for r in ids)
        # rows are left padded, so every response ends at the last position; the logits at position t
        # predict token t + 1, hence the last rmax + 1 positions
        logits = self.forward_logits(inputs, last=rmax + 1)
        k = logits.shape[1]
        index = torch.zeros((len(ids), rmax), dtype=torch.long, device=self.device)
        target = torch.full((len(ids), rmax), int(self.tokenizer.pad_token_id), dtype=torch.long)
        mask = torch.zeros((len(ids), rmax), dtype=torch.bool)
        for r, seq in enumerate(ids):
            n = len(seq)
            index[r, :n] = torch.arange(k - n - 1, k - 1)
            target[r, :n] = torch.tensor(seq)
            mask[r, :n] = True
        picked = logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
        return ResponseBatch(picked, target.to(self.device), mask.to(self.device), list(range(len(ids))))

    def target_loss(
        self,
        waveforms: Clips,
        targets: str | Sequence[str | Sequence[int]],
        prompt_text: str | Sequence[str | None] | None = None,
        prefill: Prefill | Sequence[Prefill] = None,
        system: str | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Mean cross-entropy of each target's tokens given its clip: ``(batch,)`` with ``reduction="none"``,
        else their mean (a scalar). Differentiable w.r.t. the waveform samples."""
        rb = self.response_logits(waveforms, targets, prompt_text, prefill, system)
        return _reduce(_token_ce(rb), reduction)

    def target_scores(
        self,
        waveforms: Clips,
        targets: str | Sequence[str | Sequence[int]],
        prompt_text: str | Sequence[str | None] | None = None,
        prefill: Prefill | Sequence[Prefill] = None,
        system: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per clip, the target loss ``(batch,)`` and whether teacher-forced greedy decoding reproduces every
        target token ``(batch,)`` bool (free with the loss; a greedy generation confirms it)."""
        rb = self.response_logits(waveforms, targets, prompt_text, prefill, system)
        hit = ((rb.logits.argmax(-1) == rb.target_ids) | ~rb.mask).all(-1)
        return _token_ce(rb), hit

    # -- generation -------------------------------------------------------------------------------------------
    def generate(
        self,
        waveforms: Clips,
        config: GenerationConfig | None = None,
        prompt_text: str | Sequence[str | None] | None = None,
        prefill: Prefill | Sequence[Prefill] = None,
        system: str | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Responses to spoken prompts (the continuation after any prefill), in input order."""
        clips = as_clips(waveforms)
        texts = _per_item(prompt_text, len(clips), "prompt_text")
        convs = [self.conversation(t, system) for t in texts]
        return self.generate_conversations(
            clips, convs, config, _per_item(prefill, len(clips), "prefill"), progress
        )

    def generate_conversations(
        self,
        waveforms: Clips,
        conversations: Sequence[Conversation],
        config: GenerationConfig | None = None,
        prefills: Sequence[Prefill] | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Batched generation through ``generate(inputs_embeds=...)`` with left padding and a KV cache."""
        config = config or GenerationConfig()
        clips = as_clips(waveforms)
        out: list[str] = []
        bar = tqdm(total=len(clips), desc=f"generate ({self.name})", disable=not progress, leave=False)
        for b, start in enumerate(range(0, len(clips), config.batch_size)):
            end = start + config.batch_size
            part_prefills = prefills[start:end] if prefills is not None else None
            out += self._generate_batch(clips[start:end], conversations[start:end], part_prefills, config, b)
            bar.update(len(clips[start:end]))
        bar.close()
        return out

    @torch.inference_mode()
    def _generate_batch(
        self,
        clips: list[torch.Tensor],
        conversations: Sequence[Conversation],
        prefills: Sequence[Prefill] | None,
        config: GenerationConfig,
        batch_index: int,
    ) -> list[str]:
        inputs = self.embed_conversations(clips, conversations, prefills)
        kwargs = config.generate_kwargs(self.tokenizer.pad_token_id)
        if config.do_sample:  # one seed per batch: a sampled run is reproducible batch by batch
            torch.manual_seed(config.seed + batch_index)
        # with inputs_embeds alone, a decoder-only model returns the new tokens only
        new = self.llm.model.generate(
            inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, **kwargs
        )
        return [str(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def __repr__(self) -> str:
        return f"SpeechLM({self.describe()})"


def _token_ce(rb: ResponseBatch) -> torch.Tensor:
    """Per-row mean cross-entropy over the real response positions: ``(batch,)`` float32."""
    logits = rb.logits.float()
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), rb.target_ids.reshape(-1), reduction="none"
    ).view(rb.target_ids.shape)
    m = rb.mask.to(ce.dtype)
    return (ce * m).sum(-1) / m.sum(-1).clamp_min(1)


def _reduce(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return losses
    if reduction == "mean":
        return losses.mean()
    raise SpeechError(f"unknown reduction {reduction!r} (use 'mean' or 'none')")


class SpokenChatModel(ChatModelBase):
    """A :class:`alignscope.models.ChatModel` whose prompts are spoken: judges and generate-then-judge stages
    take it unchanged.

    The last user turn of each conversation names its clip: ``audio[text]`` (a mapping, e.g. a spoken suite's
    prompt -> waveform, or a callable). That turn's text is replaced by the marker (and ``prompt_text``); other
    turns and system prompts stay as they are. ``defense`` (e.g. :class:`alignscope.speech.attacks.defense.TDNF`)
    transforms every clip before the model, with a fresh draw per query.
    """

    def __init__(
        self,
        slm: SpeechLM,
        audio: Mapping[str, Any] | Callable[[str], Any],
        defense: Callable[[torch.Tensor], torch.Tensor] | None = None,
        prompt_text: str | None = None,
        name: str | None = None,
    ):
        self.slm = slm
        self.audio = audio
        self.defense = defense
        self.prompt_text = prompt_text
        suffix = f" [{getattr(defense, 'spec', 'defended')}]" if defense is not None else ""
        self.name = name or f"{slm.name}{suffix}"

    @property
    def supports_prefill(self) -> bool:
        return True

    def clip_for(self, text: str) -> torch.Tensor:
        try:
            clip = self.audio(text) if callable(self.audio) else self.audio[text]
        except KeyError as e:
            raise SpeechError(f"no audio for the prompt {text[:80]!r}") from e
        wave = as_clips(clip)[0]
        return self.defense(wave) if self.defense is not None else wave

    def spoken(self, conversation: Conversation) -> tuple[torch.Tensor, Conversation]:
        """The clip for ``conversation`` and the chat with the marker in place of its last user turn."""
        users = [i for i, m in enumerate(conversation) if m["role"] == "user"]
        if not users:
            raise SpeechError(f"conversation has no user turn: {conversation!r}")
        last = users[-1]
        chat = [dict(m) for m in conversation]
        chat[last]["content"] = user_content(self.prompt_text, self.slm.marker)
        return self.clip_for(conversation[last]["content"]), chat

    def _generate(self, request: GenerationRequest) -> list[str]:
        pairs = [self.spoken(c) for c in request.conversations]
        return self.slm.generate_conversations(
            [p[0] for p in pairs], [p[1] for p in pairs], request.config, request.prefills, request.progress
        )
