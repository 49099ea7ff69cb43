"""Request validation and OpenAI-style errors for the chat-completions server.

The request schema accepts what OpenAI clients send (``stop``, ``n``, ``seed``, the penalties, ``logprobs`` /
``top_logprobs``, ``user``, ``stream_options``, ``response_format`` of type ``text``) and rejects, with a 400
naming the field, what alignscope cannot honour (tools, ``logit_bias``, JSON response formats, audio output...)
rather than silently ignoring it. Types are strict (``"10"`` is not an integer, ``"yes"`` not a boolean).
Other unknown fields are ignored, as most OpenAI-compatible servers do.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from alignscope.models.base import Conversation


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    """Strict types (``"10"`` is not an integer); unknown fields ignored. Subclasses that keep unknown fields
    (to name them in an error) set ``extra="allow"``."""

    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class InputAudio(_Strict):
    data: str = Field(description="base64-encoded audio")
    format: str = "wav"


class AudioPart(_Strict):
    type: Literal["input_audio"]
    input_audio: InputAudio


class OtherPart(_Strict):
    """Any other content part (``image_url``, ``file``...): parsed so the error can name its type."""

    model_config = ConfigDict(extra="allow")
    type: str


def _part_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in {"text", "input_audio"} else "other"


ContentPart = Annotated[
    Annotated[TextPart, Tag("text")]
    | Annotated[AudioPart, Tag("input_audio")]
    | Annotated[OtherPart, Tag("other")],
    Discriminator(_part_kind),
]


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))

    def audio_parts(self) -> list[AudioPart]:
        if isinstance(self.content, list):
            return [p for p in self.content if isinstance(p, AudioPart)]
        return []

    def other_parts(self) -> list[str]:
        if isinstance(self.content, list):
            return [p.type for p in self.content if isinstance(p, OtherPart)]
        return []


class StreamOptions(_Strict):
    include_usage: bool = False


class ResponseFormat(_Strict):
    model_config = ConfigDict(extra="allow")
    type: str


_UNSUPPORTED = (
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "logit_bias",
    "audio",
    "prediction",
    "web_search_options",
)
MAX_STOP = 16


class ChatCompletionRequest(_Strict):
    """The fields of ``POST /v1/chat/completions`` that alignscope honours.

    Extensions (as in vLLM): ``top_k``; ``continue_final_message`` (continue the trailing assistant message
    instead of opening a new turn: the assistant-prefill the prefilling attack needs) with
    ``add_generation_prompt`` (must then be false or absent); up to 16 ``stop`` strings (OpenAI allows 4).
    """

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=8)
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    user: str | None = None
    response_format: ResponseFormat | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    continue_final_message: bool = False
    add_generation_prompt: bool | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        extra = self.model_extra or {}
        for name in _UNSUPPORTED:
            if extra.get(name) not in (None, False, [], {}, ""):
                raise ValueError(f"{name!r} is not supported by alignscope serve")
        modalities = extra.get("modalities")
        if modalities not in (None, [], ["text"]):
            raise ValueError(
                f"modalities {modalities!r} are not supported by alignscope serve (only ['text'])"
            )
        if self.response_format is not None and self.response_format.type != "text":
            raise ValueError(
                f"response_format type {self.response_format.type!r} is not supported by alignscope serve "
                "(only 'text')"
            )
        if isinstance(self.stop, list):
            if len(self.stop) > MAX_STOP:
                raise ValueError(f"stop takes at most {MAX_STOP} strings (got {len(self.stop)})")
            if any(not s for s in self.stop):
                raise ValueError("stop strings must not be empty")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        if self.continue_final_message:
            if self.messages[-1].role != "assistant":
                raise ValueError("continue_final_message needs a trailing assistant message to continue")
            if self.add_generation_prompt:
                raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        return self

    @property
    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None or self.stop == "":
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def conversation(self) -> tuple[Conversation, str | None]:
        """The text conversation and the assistant prefill (the trailing assistant message when
        ``continue_final_message``)."""
        messages: Conversation = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]
        if self.continue_final_message:
            return messages[:-1], messages[-1]["content"]
        return messages, None

    def input_chars(self) -> int:
        return sum(len(m.text()) for m in self.messages)


def validation_error(e: ValidationError) -> APIError:
    """The first validation problem as a 400 naming the field path (``messages.0.content``)."""
    errors = e.errors()
    first = max(errors, key=lambda x: len(x.get("loc", ())))  # the deepest: the real problem inside a union
    parts: list[str] = []
    for x in first.get("loc", ()):
        if not _is_union_tag(x) and (not parts or parts[-1] != str(x)):  # drop union tags ("text.text")
            parts.append(str(x))
    loc = ".".join(parts)
    msg = str(first.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    where = f"{loc}: " if loc else ""
    more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
    return APIError(400, f"invalid request: {where}{msg}{more}", param=loc or None, code="invalid_value")


def _is_union_tag(x: Any) -> bool:
    # pydantic inserts the union member's name into the location (``content.str``, ``content.list[...]``)
    return isinstance(x, str) and (x in {"str", "int", "float", "bool"} or "[" in x or x.endswith("Part"))
