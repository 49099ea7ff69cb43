"""Local Hugging Face causal LMs: chat formatting with prefill, batched generation, log-probs, hidden states."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from alignscope.models.base import (
    ChatModelBase,
    Conversation,
    GenerationConfig,
    GenerationRequest,
    ModelError,
    Prefill,
    matched_prefills,
)
from alignscope.models.fast_linear import fp32_linears

log = logging.getLogger("alignscope.models")

PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
    "{% else %}### Response:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)
"""Used when a tokenizer has no chat template (base models), and on request (``template="plain"``)."""


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else cuda, then mps, then cpu."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given; bf16 on GPUs that support it, fp16 on other GPUs and mps, fp32 on CPU (CPU bf16
    matmuls are slower than fp32 on most machines without AMX)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype:
        try:
            value = getattr(torch, dtype)
        except AttributeError as e:
            raise ModelError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)") from e
        if not isinstance(value, torch.dtype):
            raise ModelError(f"unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
        return value
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


@dataclass
class ResponseBatch:
    """Teacher-forced logits over response positions.

    Attributes:
        logits: ``(batch, max_response_len, vocab)``; row i, column k is the distribution that predicts
            response token k of pair i given the prompt and response tokens before it.
        target_ids: ``(batch, max_response_len)`` the response token ids (pad where ``mask`` is False).
        mask: ``(batch, max_response_len)`` True at real response positions.
        indices: which input pairs (positions in the caller's lists) this batch holds.
    """

    logits: torch.Tensor
    target_ids: torch.Tensor
    mask: torch.Tensor
    indices: list[int]


class LocalModel(ChatModelBase):
    """A local causal LM with its tokenizer; implements :class:`alignscope.models.base.ChatModel` and adds
    white-box access.

    Args:
        model: a transformers causal LM (already on its device).
        tokenizer: its tokenizer.
        name: the spec or name that reports show.
        template: ``"chat"`` uses the tokenizer's chat template (the plain template when it has none);
            ``"plain"`` forces :data:`PLAIN_TEMPLATE`.
    """

    def __init__(self, model: Any, tokenizer: Any, name: str, template: str = "chat"):
        if template not in {"chat", "plain"}:
            raise ModelError(f"unknown template {template!r} (use 'chat' or 'plain')")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.template = template
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._chat_template = (
            tokenizer.chat_template if template == "chat" and tokenizer.chat_template else PLAIN_TEMPLATE
        )
        self._token_texts: list[str] | None = None  # every token's text, stripped (built on first use)
        self.fp32_linear = "auto"
        """How ``generate`` runs float32 linear layers: ``"auto"`` through oneDNN where that is measurably
        faster than torch's BLAS (AMD CPUs), ``"torch"`` never; see :mod:`alignscope.models.fast_linear`."""
        self.min_shared_prefix = 8
        """``generate`` computes the prompt tokens that every prompt of a batch starts with (the chat
        template's system turn) once, when there are at least this many; 0 turns it off."""

    # -- properties -------------------------------------------------------------------------------------------
    @property
    def supports_prefill(self) -> bool:
        return True

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def template_name(self) -> str:
        """Which chat template formats prompts (reports state it next to KL and hidden-state results)."""
        if self._chat_template is PLAIN_TEMPLATE:
            return "plain instruction template"
        return "tokenizer chat template"

    # -- formatting -------------------------------------------------------------------------------------------
    def format_chat(self, messages: Conversation, add_generation_prompt: bool = True) -> str:
        """The prompt text for ``messages``, ending with the assistant-turn header when asked."""
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                chat_template=self._chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as e:  # jinja errors, e.g. templates that reject system prompts
            raise ModelError(f"{self.name}: chat template failed on {messages!r}: {e}") from e
        return str(text)

    def encode_prompt(self, messages: Conversation, prefill: Prefill = None) -> list[int]:
        """Token ids of the formatted prompt followed by the prefill.

        The prefill (text or token ids) is tokenised on its own and appended, so exactly its tokens start the
        assistant turn, with no end-of-turn after them.
        """
        ids = self._encode(self.format_chat(messages))
        if prefill:
            ids += list(prefill) if not isinstance(prefill, str) else self._encode(prefill)
        return ids

    def _as_ids(self, prompt: Conversation | Sequence[int]) -> list[int]:
        if len(prompt) and isinstance(prompt[0], dict):
            return self.encode_prompt(prompt)  # type: ignore[arg-type]
        return [int(t) for t in prompt]  # type: ignore[arg-type]

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def response_ids(self, text: str) -> list[int]:
        """Token ids of a response text as it would appear after the assistant header."""
        return self._encode(text)

    # -- generation -------------------------------------------------------------------------------------------
    def _generate(self, request: GenerationRequest) -> list[str]:
        """Batched generation with left padding and a KV cache. Returns the continuations (without prompt or
        prefill), in input order. Prompts are grouped by length so batches waste little padding.

        Two speed-ups keep the results: the tokens all prompts of a batch start with (typically the chat
        template's system turn) are run once and their KV cache shared by the batch (the rest of each prompt
        is left-padded after them; positions come from the attention mask, so they are unchanged), and float32
        linear layers run through oneDNN on CPUs where torch's BLAS is slow (:attr:`fp32_linear`)."""
        config, progress = request.config, request.progress
        encoded = [self.encode_prompt(c, prefill) for c, prefill in request.pairs()]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[str] = [""] * len(encoded)
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        bar = tqdm(total=len(encoded), desc=f"generate ({self.name})", disable=not progress, leave=False)
        for b, idx in enumerate(batches):
            for i, text in zip(idx, self._generate_batch([encoded[i] for i in idx], config, b), strict=True):
                out[i] = text
            bar.update(len(idx))
        bar.close()
        return out

    @torch.inference_mode()
    def _generate_batch(
        self, batch: list[list[int]], config: GenerationConfig, batch_index: int
    ) -> list[str]:
        input_ids, attention = self.left_pad(batch)
        kwargs = config.generate_kwargs(self.tokenizer.pad_token_id)
        if config.do_sample:  # one seed per batch: a sampled run is reproducible batch by batch
            torch.manual_seed(config.seed + batch_index)
        shared = self._shared_prefix(batch)
        if shared:
            input_ids, attention, cache = self._prefix_cached(batch, shared)
            kwargs[_cache_kwarg(self.model)] = cache
        try:
            with fp32_linears(self.model, self.fp32_linear):
                generated = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        except torch.OutOfMemoryError as e:
            raise ModelError(
                f"{self.name}: out of memory generating a batch of {len(batch)}; lower --batch-size"
            ) from e
        new = generated[:, input_ids.shape[1] :]
        return [str(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    def _shared_prefix(self, batch: list[list[int]]) -> int:
        """How many leading tokens every prompt of ``batch`` shares (0 when too few to be worth a pass, for
        a single prompt, or for models whose cache cannot simply be copied across the batch)."""
        if self.min_shared_prefix <= 0 or len(batch) < 2 or not _plain_cache_model(self.model):
            return 0
        n = min(len(x) for x in batch) - 1  # every prompt keeps at least one token of its own
        first = batch[0]
        for x in batch[1:]:
            n = next((i for i in range(n) if x[i] != first[i]), n)
        return n if n >= self.min_shared_prefix else 0

    def _prefix_cached(self, batch: list[list[int]], shared: int) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """``(ids, mask, cache)``: the shared prefix, then each prompt's own tokens left-padded after it, and
        a cache holding the prefix for every row (computed once)."""
        rest, mask_rest = self.left_pad([x[shared:] for x in batch])
        prefix = torch.tensor([batch[0][:shared]], device=self.device)
        with fp32_linears(self.model, self.fp32_linear):
            out = self.model(input_ids=prefix, use_cache=True, **_keep_last(self.model))
        cache = getattr(out, "cache", None)
        cache = cache if cache is not None else out.past_key_values
        cache.batch_repeat_interleave(len(batch))
        ids = torch.cat([prefix.expand(len(batch), -1), rest], dim=1)
        mask = torch.cat([torch.ones_like(prefix).expand(len(batch), -1), mask_rest], dim=1)
        return ids, mask, cache

    def left_pad(self, batch: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``(batch, width)`` ids and attention mask on the model's device, so position -1 is every
        prompt's last token."""
        width = max(len(x) for x in batch)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, x in enumerate(batch):
            if x:
                ids[r, width - len(x) :] = torch.tensor(x)
                mask[r, width - len(x) :] = 1
        return ids.to(self.device), mask.to(self.device)

    # -- white-box access -------------------------------------------------------------------------------------
    def response_logits(
        self,
        conversations: Sequence[Conversation | Sequence[int]],
        responses: Sequence[str | Sequence[int]],
        batch_size: int = 8,
        max_response_tokens: int | None = None,
    ) -> Iterator[ResponseBatch]:
        """Teacher-forced logits at every response position, one forward pass per batch.

        ``conversations`` are chats (formatted with this model's template) or already-encoded prompt token ids
        (so two models can be fed identical ids). ``responses`` are texts (tokenised as after the assistant
        header) or token ids; they are truncated to ``max_response_tokens``. Yields :class:`ResponseBatch`
        objects with float32 logits.
        """
        prompts = [self._as_ids(c) for c in conversations]
        resps = [list(r) if not isinstance(r, str) else self.response_ids(r) for r in responses]
        if max_response_tokens is not None:
            resps = [r[:max_response_tokens] for r in resps]
        for start in range(0, len(prompts), batch_size):
            idx = list(range(start, min(start + batch_size, len(prompts))))
            yield self._response_batch([prompts[i] for i in idx], [resps[i] for i in idx], idx)

    @torch.inference_mode()
    def _response_batch(
        self, prompts: list[list[int]], resps: list[list[int]], idx: list[int]
    ) -> ResponseBatch:
        seqs = [p + r for p, r in zip(prompts, resps, strict=True)]
        width = max(len(s) for s in seqs)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attn = torch.zeros((len(seqs), width), dtype=torch.long)
        for r, s in enumerate(seqs):  # right padding: positions are then the same as unpadded
            ids[r, : len(s)] = torch.tensor(s)
            attn[r, : len(s)] = 1
        logits = self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device)).logits
        rmax = max((len(r) for r in resps), default=0)
        out = torch.zeros((len(seqs), rmax, logits.shape[-1]), dtype=torch.float32)
        target = torch.full((len(seqs), rmax), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), rmax), dtype=torch.bool)
        for r, (p, resp) in enumerate(zip(prompts, resps, strict=True)):
            n = len(resp)
            if n == 0:
                continue
            # the logits at position t predict token t+1; response token k sits at len(p)+k
            out[r, :n] = logits[r, len(p) - 1 : len(p) - 1 + n].float().cpu()
            target[r, :n] = torch.tensor(resp)
            mask[r, :n] = True
        return ResponseBatch(out, target, mask, idx)

    def response_logprobs(
        self,
        conversations: Sequence[Conversation | Sequence[int]],
        responses: Sequence[str | Sequence[int]],
        batch_size: int = 8,
    ) -> list[torch.Tensor]:
        """Per-token log-probabilities of each response given its prompt: a list of ``(len_i,)`` tensors."""
        result: list[torch.Tensor] = [torch.empty(0)] * len(conversations)
        for rb in self.response_logits(conversations, responses, batch_size):
            lp = torch.log_softmax(rb.logits, dim=-1).gather(-1, rb.target_ids.unsqueeze(-1)).squeeze(-1)
            for row, i in enumerate(rb.indices):
                result[i] = lp[row][rb.mask[row]]
        return result

    def answer_logprobs(
        self,
        prompts: Sequence[str | Conversation],
        answers: Sequence[str],
        prefills: Sequence[str] | None = None,
        *,
        ignore_case: bool = False,
        add_special_tokens: bool = True,
        batch_size: int = 8,
    ) -> list[list[float]]:
        """Log-probability that the text after each prompt starts with each answer: ``(n_prompts, n_answers)``.

        For closed questions (a classifier's "yes"/"no", a rubric's digit): score the allowed answers instead of
        parsing free text.

        Args:
            prompts: raw text (a classifier's own prompt string, tokenised with the tokenizer's special tokens,
                e.g. BOS, unless ``add_special_tokens`` is False for prompts that carry their own) or a
                conversation (this model's chat template, ending with the assistant header).
            answers: the allowed answers, e.g. ``["Yes", "No"]``.
            prefills: text that continues each prompt before the answer: appended to a raw prompt, or the start
                of the assistant turn of a conversation (e.g. a judge's own rationale and ``"#thescore:"``).
            ignore_case: match answers case-insensitively.
            add_special_tokens: tokenise raw-text prompts with the tokenizer's special tokens.
            batch_size: prompts per forward pass.

        An answer that single vocabulary tokens spell is scored from one forward pass at the prompt's last
        position: the log of the summed probabilities of every token whose text, stripped of surrounding
        whitespace, equals the answer (``"Yes"`` counts ``Yes``, ``▁Yes``, ``ĠYes``). That is what a reference
        implementation decides on when it decodes one token and compares strings. An answer that no single
        token spells is teacher-forced: the summed log-probabilities of its own tokens. The values are not
        normalised over the answers; how much probability they leave out says whether the model wanted to
        answer at all.
        """
        matched = matched_prefills(prefills, len(prompts), "prompts")
        if any(not a.strip() for a in answers):
            raise ValueError(f"answers must be non-empty text, got {list(answers)!r}")
        encoded: list[list[int]] = []
        for prompt, prefill in zip(prompts, matched, strict=True):
            if isinstance(prompt, str):
                text = prompt + (prefill or "")
                encoded.append(list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]))
            else:
                encoded.append(self.encode_prompt(prompt, prefill or None))
        spelled = [self._tokens_spelling(a, ignore_case) for a in answers]
        out = [[-math.inf] * len(answers) for _ in encoded]
        single = [j for j, ids in enumerate(spelled) if ids]
        for start in range(0, len(encoded) if single else 0, batch_size):
            logprobs = self._next_token_logprobs(encoded[start : start + batch_size])
            for j in single:
                values = torch.logsumexp(logprobs[:, spelled[j]], dim=-1)
                for row, value in enumerate(values.tolist()):
                    out[start + row][j] = float(value)
        pairs = [(i, j) for i in range(len(encoded)) for j, ids in enumerate(spelled) if not ids]
        if pairs:
            forced = self.response_logprobs(
                [encoded[i] for i, _ in pairs], [answers[j] for _, j in pairs], batch_size=batch_size
            )
            for (i, j), lp in zip(pairs, forced, strict=True):
                out[i][j] = float(lp.sum())
        return out

    def _tokens_spelling(self, answer: str, ignore_case: bool) -> list[int]:
        """Ids of the vocabulary tokens whose text, stripped of whitespace, is ``answer``."""
        if self._token_texts is None:
            n = len(self.tokenizer)
            texts = self.tokenizer.batch_decode(
                [[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            self._token_texts = [str(t).strip() for t in texts]
        target = answer.strip().casefold() if ignore_case else answer.strip()
        if ignore_case:
            return [i for i, t in enumerate(self._token_texts) if t.casefold() == target]
        return [i for i, t in enumerate(self._token_texts) if t == target]

    @torch.inference_mode()
    def _next_token_logprobs(self, batch: list[list[int]]) -> torch.Tensor:
        """``(batch, vocab)`` float32 log-probabilities of the token after each prompt, on CPU."""
        ids, mask = self.left_pad(batch)
        positions = (mask.cumsum(-1) - 1).clamp(
            min=0
        )  # left padding must not shift the real tokens' positions
        extra = (
            {"logits_to_keep": 1}
            if "logits_to_keep" in inspect.signature(self.model.forward).parameters
            else {}
        )
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **extra).logits
        return torch.log_softmax(logits[:, -1, :].float(), dim=-1).cpu()

    @torch.inference_mode()
    def last_token_hidden_states(
        self,
        conversations: Sequence[Conversation],
        batch_size: int = 16,
        progress: bool = False,
    ) -> torch.Tensor:
        """Hidden state of the last prompt token (the one that predicts the first response token) at the output
        of every decoder layer, embeddings excluded: ``(n_prompts, n_layers, hidden)`` float32 on CPU.

        As in transformers, the last layer's entry is taken after the final norm."""
        encoded = [self.encode_prompt(c) for c in conversations]
        out = torch.zeros((len(encoded), self.num_layers, int(self.model.config.hidden_size)))
        # Only hidden states are needed: ask for the last position's logits alone (a (batch, 1, vocab) tensor
        # instead of (batch, length, vocab)) where the architecture supports it.
        extra = (
            {"logits_to_keep": 1}
            if "logits_to_keep" in inspect.signature(self.model.forward).parameters
            else {}
        )
        bar = tqdm(total=len(encoded), desc=f"hidden states ({self.name})", disable=not progress, leave=False)
        for start in range(0, len(encoded), batch_size):
            ids, mask = self.left_pad(encoded[start : start + batch_size])
            hs = self.model(
                input_ids=ids, attention_mask=mask, output_hidden_states=True, **extra
            ).hidden_states
            stacked = torch.stack([h[:, -1, :] for h in hs[1:]], dim=1)
            out[start : start + ids.shape[0]] = stacked.float().cpu()
            bar.update(ids.shape[0])
        bar.close()
        return out

    def __repr__(self) -> str:
        return f"LocalModel({self.name!r}, device={self.device}, dtype={self.dtype})"


def _plain_cache_model(model: Any) -> bool:
    """Whether ``model`` keeps a plain per-layer KV cache that a shared prefix can be copied into: no sliding
    windows or recurrent layers (whose caches drop or summarise positions)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    if getattr(cfg, "sliding_window", None) or getattr(cfg, "use_sliding_window", False):
        return False
    kinds = set(getattr(cfg, "layer_types", None) or ["full_attention"])
    return kinds == {"full_attention"}


def _cache_kwarg(model: Any) -> str:
    """The argument that takes a KV cache: ``cache`` from transformers 5.2x, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _keep_last(model: Any) -> dict[str, Any]:
    """``logits_to_keep=1`` where the architecture takes it (only the last position's logits are needed)."""
    return {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
