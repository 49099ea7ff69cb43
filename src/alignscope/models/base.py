"""The model interface every part of alignscope talks to.

A :class:`ChatModel` turns chat conversations into responses. Local Hugging Face models
(:class:`alignscope.models.local.LocalModel`) implement it and add white-box access (log-probs, hidden
states); a remote OpenAI-compatible endpoint implements only the black-box part, so every judge and every
black-box attack works on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, TypeVar, runtime_checkable

from alignscope.validation import FieldChecks, OptionError

Message = dict[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

Conversation = list[Message]

Prefill = str | Sequence[int] | None
"""The start of an assistant turn: text, token ids, or None for no prefill."""

P = TypeVar("P")


class ModelError(RuntimeError):
    """A model could not be resolved, loaded or run; the message names the culprit."""


class NoLogprobsError(ModelError):
    """A model answered but gave no log-probabilities (an endpoint that does not report them)."""


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding settings. Greedy is the default, as evaluation should be reproducible.

    Attributes:
        max_new_tokens: tokens generated after the prompt (and after any prefill); at least 1.
        do_sample: sample instead of greedy decoding.
        temperature: softmax temperature when sampling (> 0 when sampling; temperature 0 is greedy decoding,
            ``do_sample=False``).
        top_p: nucleus sampling mass when sampling, in (0, 1] (1.0 disables it).
        top_k: keep the k most likely tokens when sampling (0 disables it).
        seed: seed set before each batch, so a sampled run is reproducible.
        batch_size: prompts per forward pass in local generation; at least 1.
    """

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    batch_size: int = 16

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.at_least(1, "max_new_tokens", "batch_size")
        check.at_least(0, "top_k", "temperature")
        check.finite("temperature")
        check.in_range("top_p", 0, 1, low_open=True)
        if self.do_sample and self.temperature == 0:
            raise OptionError(
                "GenerationConfig.temperature", "must be > 0 when sampling (0 is greedy: do_sample=False)", 0
            )

    def with_(self, **changes: Any) -> GenerationConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def generate_kwargs(self, pad_token_id: int | None) -> dict[str, Any]:
        """Keyword arguments of Hugging Face ``generate`` for these settings. Greedy decoding passes the
        sampling parameters as None, so a model's own ``generation_config`` (which may set a temperature or
        top-p) does not make transformers warn or sample. Seeding a sampled batch is the caller's job."""
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "pad_token_id": pad_token_id,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or None)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def describe(self) -> str:
        """Short human-readable form, used in reports next to every number."""
        if not self.do_sample:
            return f"greedy, max_new_tokens={self.max_new_tokens}"
        parts = [f"T={self.temperature:g}", f"top_p={self.top_p:g}"]
        if self.top_k:
            parts.append(f"top_k={self.top_k}")
        return f"sampled ({', '.join(parts)}, seed={self.seed}), max_new_tokens={self.max_new_tokens}"


def user_turn(prompt: str, system: str | None = None) -> Conversation:
    """A one-turn conversation asking ``prompt``, with an optional system prompt."""
    messages: Conversation = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    return messages


@runtime_checkable
class ChatModel(Protocol):
    """Anything that answers chat conversations.

    ``prefills[i]`` (text or token ids), when given, is placed at the start of the assistant turn of conversation ``i`` with no
    end-of-turn after it, and the model continues from there; the returned text is the continuation only
    (the prefill is not repeated). Backends that cannot prefill raise :class:`ModelError`.
    """

    name: str

    @property
    def supports_prefill(self) -> bool: ...

    def generate(
        self,
        conversations: Sequence[Conversation],
        config: GenerationConfig | None = None,
        prefills: Sequence[Prefill] | None = None,
        progress: bool = False,
    ) -> list[str]: ...


def matched_prefills(prefills: Sequence[P] | None, n: int, of: str = "conversations") -> list[P | None]:
    """One prefill per item: ``prefills`` as a list, or ``n`` Nones when there are none.

    Raises ValueError when ``prefills`` is not as long as the ``n`` items (named by ``of``) it goes with."""
    if prefills is None:
        return [None] * n
    if len(prefills) != n:
        raise ValueError(f"prefills must be as long as {of}")
    return list(prefills)


@dataclass(frozen=True)
class GenerationRequest:
    """The arguments of one :meth:`ChatModel.generate` call, checked and filled in.

    Attributes:
        conversations: the conversations to answer, in order.
        config: the decoding settings (the default :class:`GenerationConfig` when the caller gave none).
        prefills: one prefill per conversation (None where there is none).
        progress: show a progress bar.
    """

    conversations: list[Conversation]
    config: GenerationConfig
    prefills: list[Prefill]
    progress: bool

    def pairs(self) -> list[tuple[Conversation, Prefill]]:
        """Each conversation with its prefill."""
        return list(zip(self.conversations, self.prefills, strict=True))


class ChatModelBase:
    """A base class for :class:`ChatModel` implementations: :meth:`generate` checks its arguments once (the
    default config, one prefill per conversation) and hands them to :meth:`_generate` as a
    :class:`GenerationRequest`, so every backend keeps the protocol's signature without restating it."""

    name: str

    def generate(
        self,
        conversations: Sequence[Conversation],
        config: GenerationConfig | None = None,
        prefills: Sequence[Prefill] | None = None,
        progress: bool = False,
    ) -> list[str]:
        """Responses to ``conversations`` (the continuation after any prefill), in input order; see
        :class:`ChatModel` for the meaning of ``prefills``."""
        request = GenerationRequest(
            list(conversations),
            config or GenerationConfig(),
            matched_prefills(prefills, len(conversations)),
            progress,
        )
        return self._generate(request)

    def _generate(self, request: GenerationRequest) -> list[str]:
        """The backend's generation for a checked request."""
        raise NotImplementedError
