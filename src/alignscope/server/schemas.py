"""Request validation and OpenAI-style errors for the chat-completions server.

The request schema accepts what the official ``openai`` client sends and rejects, with a 400 naming the field,
what alignscope cannot honour (``stop``, ``logprobs``, tools, penalties...) rather than silently ignoring it.
Types are strict (``"10"`` is not an integer, ``"yes"`` not a boolean). Unknown extra fields are ignored, as
most OpenAI-compatible servers do.
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


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class InputAudio(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    data: str = Field(description="base64-encoded audio")
    format: str = "wav"


class AudioPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["input_audio"]
    input_audio: InputAudio


class OtherPart(BaseModel):
    """Any other content part (``image_url``, ``file``...): parsed so the error can name its type."""

    model_config = ConfigDict(extra="allow", strict=True)
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


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
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


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


_UNSUPPORTED = ("stop", "logprobs", "top_logprobs", "tools", "functions", "tool_choice", "logit_bias")
_UNSUPPORTED_NONZERO = ("presence_penalty", "frequency_penalty")


class ChatCompletionRequest(BaseModel):
    """The fields of ``POST /v1/chat/completions`` that alignscope honours.

    Extensions (as in vLLM): ``top_k``; ``continue_final_message`` (continue the trailing assistant message
    instead of opening a new turn: the assistant-prefill the prefilling attack needs) with
    ``add_generation_prompt`` (must then be false or absent).
    """

    model_config = ConfigDict(extra="allow", strict=True)

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=8)
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
        for name in _UNSUPPORTED_NONZERO:
            if extra.get(name) not in (None, 0, 0.0):
                raise ValueError(f"{name!r} other than 0 is not supported by alignscope serve")
        if self.continue_final_message:
            if self.messages[-1].role != "assistant":
                raise ValueError("continue_final_message needs a trailing assistant message to continue")
            if self.add_generation_prompt:
                raise ValueError("continue_final_message and add_generation_prompt cannot both be true")
        if self.stream and self.n > 1:
            raise ValueError("stream with n > 1 is not supported")
        return self

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
