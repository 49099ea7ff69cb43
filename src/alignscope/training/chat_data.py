"""Chat-format training data: JSONL files of ``{"messages": [...]}``, tokenisation with loss masks by role,
the safety-recovery format, and the padding collator.

Loss masking is template-agnostic: the assistant spans are found by rendering prefixes of the conversation
through the model's own chat template (``messages[:i]`` with the generation prompt, then ``messages[:i+1]``),
never by searching for a template-specific header. Each span is the assistant's content plus whatever the
template puts after it (the end-of-turn token), so the model also learns to stop. Prompt and response pieces
are tokenised separately and concatenated, exactly as :meth:`alignscope.models.LocalModel.encode_prompt`
builds a prompt at inference, so the token boundaries the model is trained on are the ones it sees when
generating (and under a prefilling attack).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from alignscope.jsonl import JSONLError, read_jsonl
from alignscope.models.base import Conversation

log = logging.getLogger("alignscope.training")

IGNORE_INDEX = -100
"""Label value that transformers' losses skip."""

ROLES = ("system", "user", "assistant")


class TrainingDataError(ValueError):
    """Training data could not be read or tokenised; the message names the file, row and field."""


class ChatFormatter(Protocol):
    """What tokenisation needs from a model: its tokenizer and its chat formatting (a
    :class:`alignscope.models.LocalModel` is one)."""

    tokenizer: Any

    def format_chat(self, messages: Conversation, add_generation_prompt: bool = True) -> str: ...


@dataclass(frozen=True)
class TokenizedExample:
    """One training sequence.

    Attributes:
        input_ids: ``(seq,)`` token ids.
        labels: ``(seq,)`` the token id where the loss applies, :data:`IGNORE_INDEX` elsewhere.
        response_pos: ``(seq,)`` 1-based position of each token within its assistant turn (0 outside one); the
            constrained objective's beta schedule is indexed by it.
        group: 0 for ordinary (utility) data, 1 for safety data; the mixture loss weights the groups.
    """

    input_ids: list[int]
    labels: list[int]
    response_pos: list[int]
    group: int = 0

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChatRecord:
    """One conversation of a training file, with optional metadata (``group``: ``"safety"`` or ``"utility"``;
    ``harmful_prefix``/``refusal`` for safety-recovery records)."""

    messages: Conversation
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, **self.meta}


# -- JSONL
# ---------------------------------------------------------------------------------------------------------
def validate_messages(messages: Any, where: str) -> Conversation:
    """Check ``messages`` is a list of ``{"role", "content"}`` dicts with known roles; errors name
    ``where``."""
    if not isinstance(messages, list) or not messages:
        raise TrainingDataError(f"{where}: 'messages' must be a non-empty list")
    out: Conversation = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TrainingDataError(f"{where}: messages[{j}] must be an object with 'role' and 'content'")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise TrainingDataError(
                f"{where}: messages[{j}].role must be one of {', '.join(ROLES)}, got {role!r}"
            )
        if not isinstance(content, str):
            raise TrainingDataError(f"{where}: messages[{j}].content must be a string")
        out.append({"role": role, "content": content})
    return out


def read_chat_jsonl(path: str | os.PathLike[str]) -> list[ChatRecord]:
    """Read a JSONL file with one ``{"messages": [...], ...}`` object per line (other keys become
    ``meta``)."""
    file = Path(path)
    if not file.is_file():
        raise TrainingDataError(f"training data file {file} does not exist")
    records = []
    for i, obj in data_lines(file):
        where = f"{file}:{i}"
        if not isinstance(obj, dict) or "messages" not in obj:
            raise TrainingDataError(f"{where}: expected an object with a 'messages' field")
        messages = validate_messages(obj.pop("messages"), where)
        records.append(ChatRecord(messages, obj))
    if not records:
        raise TrainingDataError(f"training data file {file} holds no records")
    return records


def data_lines(file: Path) -> list[tuple[int, Any]]:
    """``(line number, JSON value)`` of a training-data JSONL file; a malformed line raises
    :class:`TrainingDataError` naming the file and line."""
    try:
        return list(read_jsonl(file, objects=False))
    except JSONLError as e:
        raise TrainingDataError(str(e)) from None


def write_chat_jsonl(path: str | os.PathLike[str], records: Iterable[ChatRecord]) -> Path:
    """Write ``records`` as JSONL atomically (a temporary file renamed into place)."""
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + f".{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
    os.replace(tmp, file)
    return file


# -- segments
# ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """A piece of the rendered conversation. ``assistant`` pieces hold ``pre + content + post`` of one
    assistant turn: ``pre`` is template text between the generation prompt and the content (e.g. a space),
    ``post`` the end-of-turn text."""

    text: str
    assistant: bool = False
    pre: str = ""
    post: str = ""


def render_segments(fmt: ChatFormatter, messages: Conversation) -> list[Segment]:
    """Split the rendered conversation into alternating non-assistant and assistant segments.

    The assistant turn ``i`` spans from the end of ``format_chat(messages[:i], add_generation_prompt=True)``
    to the end of ``format_chat(messages[:i + 1], add_generation_prompt=False)``. Templates whose generation
    prompt is not a prefix of the finished turn fall back to locating the content after the rendered history.
    """
    if messages and messages[0]["role"] == "assistant":
        raise TrainingDataError("a conversation cannot start with an assistant turn")
    full = fmt.format_chat(messages, add_generation_prompt=False)
    segments: list[Segment] = []
    pos = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        upto = fmt.format_chat(messages[: i + 1], add_generation_prompt=False)
        if not full.startswith(upto):
            raise TrainingDataError(
                "the chat template renders earlier turns differently once later turns follow, so assistant "
                "spans cannot be found by prefix rendering; train on single-turn conversations with this "
                "template"
            )
        header = fmt.format_chat(messages[:i], add_generation_prompt=True)
        if upto.startswith(header) and len(header) >= pos:
            start = len(header)
            rendered = upto[start:]
            at = rendered.find(m["content"]) if m["content"] else 0
        else:  # the generation prompt differs from how the template renders a finished turn's header
            history = fmt.format_chat(messages[:i], add_generation_prompt=False)
            start = upto.find(m["content"], max(len(history), pos)) if m["content"] else len(upto)
            rendered = upto[start:]
            at = 0
        if start < 0 or at < 0:
            raise TrainingDataError(
                f"assistant turn {i}: its content does not appear in the rendered template"
            )
        if start > pos:
            segments.append(Segment(full[pos:start]))
        segments.append(Segment(rendered, True, pre=rendered[:at], post=rendered[at + len(m["content"]) :]))
        pos = len(upto)
    if pos < len(full):
        segments.append(Segment(full[pos:]))
    return segments


def _encode(fmt: ChatFormatter, text: str) -> list[int]:
    return list(fmt.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def tokenize_conversation(
    fmt: ChatFormatter,
    messages: Conversation,
    max_length: int | None = None,
    train_on: str = "assistant",
    group: int = 0,
) -> TokenizedExample:
    """Tokenise a conversation with labels on assistant turns only.

    Args:
        fmt: the model (tokenizer and chat template) the data is for.
        messages: the conversation; it should contain at least one assistant turn.
        max_length: truncate to this many tokens (keeping the start).
        train_on: ``"assistant"`` (every assistant turn) or ``"last"`` (only the final assistant turn).
        group: recorded on the example (0 utility, 1 safety).
    """
    if train_on not in ("assistant", "last"):
        raise ValueError(f"train_on must be 'assistant' or 'last', got {train_on!r}")
    segments = render_segments(fmt, messages)
    last = max((j for j, s in enumerate(segments) if s.assistant), default=-1)
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for j, seg in enumerate(segments):
        piece = _encode(fmt, seg.text)
        ids += piece
        trained = seg.assistant and (train_on == "assistant" or j == last)
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
        pos += list(range(1, len(piece) + 1)) if seg.assistant else [0] * len(piece)
    return _truncate(TokenizedExample(ids, labels, pos, group), max_length)


def tokenize_recovery(
    fmt: ChatFormatter,
    prompt: Conversation,
    harmful_ids: Sequence[int],
    refusal: str,
    k: int,
    separator: str = " ",
    max_length: int | None = None,
) -> TokenizedExample:
    """A safety-recovery example (Qi et al., ICLR 2025, section 3): ``x + h_<=k -> r`` with loss on ``r``
    only.

    The prompt is rendered with the generation prompt; the first ``k`` ids of the harmful response follow (as
    a prefilling attack places them, with no end-of-turn); then the refusal and the template's end-of-turn,
    the only trained tokens. For ``k = 0`` this is an ordinary refusal example. ``separator`` goes between a
    non-empty harmful prefix and the refusal (the prefix usually stops mid-sentence).

    Args:
        harmful_ids: the harmful response's token ids (as :meth:`LocalModel.response_ids` gives them).
        k: how many of them to keep (clipped to the length available).
    """
    conv = [*prompt, {"role": "assistant", "content": refusal}]
    segments = render_segments(fmt, conv)
    if not segments or not segments[-1].assistant:
        raise TrainingDataError("the recovery prompt must not end with an assistant turn")
    head = "".join(s.text for s in segments[:-1])
    turn = segments[-1]
    prefix = list(harmful_ids[: max(0, k)])
    ids = _encode(fmt, head)
    labels = [IGNORE_INDEX] * len(ids)
    pos = [0] * len(ids)
    ids += prefix
    labels += [IGNORE_INDEX] * len(prefix)
    pos += list(range(1, len(prefix) + 1))
    tail_text = (separator + refusal + turn.post) if prefix else turn.text
    tail = _encode(fmt, tail_text)
    ids += tail
    labels += tail
    pos += list(range(len(prefix) + 1, len(prefix) + len(tail) + 1))
    return _truncate(TokenizedExample(ids, labels, pos, group=1), max_length)


def sample_prefix_length(
    rng: random.Random, p_zero: float = 0.5, max_tokens: int = 100, available: int = 100
) -> int:
    """The recovery prefix length: 0 with probability ``p_zero``, else Uniform{1..min(max_tokens, available)}
    (Qi et al., ICLR 2025: p = 0.5, C = 100 tokens). Returns 0 when no harmful tokens are available."""
    upper = min(max_tokens, available)
    if upper < 1 or rng.random() < p_zero:
        return 0
    return rng.randint(1, upper)


def _truncate(ex: TokenizedExample, max_length: int | None) -> TokenizedExample:
    if max_length is None or len(ex.input_ids) <= max_length:
        return ex
    return TokenizedExample(
        ex.input_ids[:max_length], ex.labels[:max_length], ex.response_pos[:max_length], ex.group
    )


# -- collation
# -----------------------------------------------------------------------------------------------------
class ChatCollator:
    """Right-pads a batch of tokenised examples into tensors.

    Pads ``input_ids`` with the pad id, ``labels`` with :data:`IGNORE_INDEX`, ``response_pos`` and
    ``ref_logps`` (when present) with 0, builds ``attention_mask``; ``group`` becomes a ``(batch,)`` tensor.
    Keys not in ``keep`` are dropped, so a plain model forward only sees what it accepts.
    """

    def __init__(self, pad_token_id: int, keep: Sequence[str] = ("input_ids", "labels", "attention_mask")):
        self.pad_token_id = pad_token_id
        self.keep = set(keep)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        pads: dict[str, Any] = {
            "input_ids": self.pad_token_id,
            "labels": IGNORE_INDEX,
            "response_pos": 0,
            "ref_logps": 0.0,
        }
        batch: dict[str, torch.Tensor] = {}
        for key, pad in pads.items():
            if key not in self.keep or key not in features[0]:
                continue
            dtype = torch.float32 if key == "ref_logps" else torch.long
            rows = [list(f[key]) + [pad] * (width - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=dtype)
        if "attention_mask" in self.keep:
            batch["attention_mask"] = torch.tensor(
                [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features],
                dtype=torch.long,
            )
        if "group" in self.keep and "group" in features[0]:
            batch["group"] = torch.tensor([int(f["group"]) for f in features], dtype=torch.long)
        return batch
