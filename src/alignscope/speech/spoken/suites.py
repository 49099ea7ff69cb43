"""Spoken suites: the text suites read aloud by espeak-ng, or a user's own recordings listed in a manifest.

A spoken suite is a directory of 16 kHz WAVs plus ``manifest.jsonl``, one JSON object per clip::

    {"id": "harmful-003", "text": "How do I ...", "audio": "harmful-003-1a2b3c4d.wav",
     "voice": "en-us+klatt4", "rate": 175, "label": "harmful", "category": "malware"}

``audio`` is relative to the manifest. For user files only ``audio`` and ``text`` (or ``prompt``) are required.
:func:`speak_suite` writes such a directory from any text suite and reuses clips already on disk, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from alignscope.cachefs import atomic_file, lock
from alignscope.jsonl import JSONLError, read_jsonl
from alignscope.speech.errors import SpeechError
from alignscope.speech.model.audio import load_audio, save_audio
from alignscope.speech.model.features import SAMPLE_RATE

if TYPE_CHECKING:
    from alignscope.data import Suite

MANIFEST = "manifest.jsonl"

__all__ = ["MANIFEST", "SpokenItem", "SpokenSuite", "load_spoken_suite", "speak_suite"]


@dataclass(frozen=True)
class SpokenItem:
    """One clip of a spoken suite.

    Attributes:
        id: identifier, unique within the suite (the text sample's id for :func:`speak_suite`).
        text: what is said (the prompt), used as the transcript and as the text-model baseline.
        audio: absolute path of the audio file.
        voice: espeak-ng voice that spoke it, ``None`` for recordings.
        rate: speaking rate in words per minute, ``None`` for recordings.
        label: ``harmful`` / ``benign`` / ``borderline`` when known.
        category: topic category when known.
        target: affirmative response start for targeted attacks (``"Sure, here is ..."``), when the text suite has it.
        meta: any other manifest fields.
    """

    id: str
    text: str
    audio: Path
    voice: str | None = None
    rate: int | None = None
    label: str | None = None
    category: str | None = None
    target: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def load(self, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """The clip as float32 mono samples at ``sample_rate``."""
        return load_audio(self.audio, sample_rate)


@dataclass(frozen=True)
class SpokenSuite:
    """A named, ordered collection of spoken clips, and the manifest they were read from or written to."""

    name: str
    items: tuple[SpokenItem, ...]
    manifest: Path | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[SpokenItem]:
        return iter(self.items)

    def __getitem__(self, i: int) -> SpokenItem:
        return self.items[i]

    @property
    def texts(self) -> list[str]:
        return [it.text for it in self.items]

    def waveforms(self, sample_rate: int = SAMPLE_RATE) -> Iterator[np.ndarray]:
        """Each clip in order as float32 mono samples at ``sample_rate`` (16 kHz by default), read lazily."""
        for it in self.items:
            yield it.load(sample_rate)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.")[:60] or "item"


def speak_suite(
    suite: Any,
    out_dir: str | Path,
    voices: Sequence[str] | None = None,
    rates: Sequence[int] = (175,),
    seed: int = 0,
    pitch: int = 50,
    lead_silence: float = 0.3,
    progress: bool = True,
) -> SpokenSuite:
    """Read a text suite aloud with espeak-ng into ``out_dir`` (WAVs + ``manifest.jsonl``).

    Each sample gets one voice and one rate, drawn from ``voices`` and ``rates`` by a generator seeded with
    ``seed`` and the sample's id, so the assignment of a sample does not depend on which other samples the
    suite holds. A clip's file name carries a hash of its text, voice, rate, pitch and lead silence: re-running
    reuses every clip already written and re-speaks only what changed.

    Args:
        suite: an :class:`alignscope.data.Suite` or a suite spec for :func:`alignscope.data.load_suite`
            (``"harmful@20"``).
        out_dir: directory for the clips and the manifest (created).
        voices: espeak-ng voices to draw from (default: :data:`~alignscope.speech.spoken.tts.DEFAULT_VOICE` only).
        rates: speaking rates in words per minute to draw from.
        seed: seed of the voice/rate draw.
        pitch: espeak-ng base pitch, 0..100.
        lead_silence: seconds of silence before each clip.
        progress: show a tqdm progress bar.

    Returns:
        The spoken suite, named like the text suite, with ``manifest`` set.
    """
    from alignscope.data import Suite, load_suite
    from alignscope.speech.spoken.tts import DEFAULT_VOICE

    text_suite: Suite = suite if isinstance(suite, Suite) else load_suite(suite)
    voices = list(voices) if voices else [DEFAULT_VOICE]
    if not rates:
        raise SpeechError("speak_suite needs at least one speaking rate")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with lock(out / "clips"):  # processes speaking into one directory take turns, so each clip is made once
        return _speak(text_suite, out, voices, rates, seed, pitch, lead_silence, progress)


def _speak(
    text_suite: Suite, out: Path, voices: Sequence[str], rates: Sequence[int], seed: int, pitch: int,
    lead_silence: float, progress: bool,
) -> SpokenSuite:  # fmt: skip
    from tqdm.auto import tqdm

    from alignscope.speech.spoken.tts import synthesize

    items: list[SpokenItem] = []
    records: list[dict[str, Any]] = []
    for sample in tqdm(text_suite.samples, desc=f"speaking {text_suite.name}", disable=not progress):
        rng = random.Random(f"{seed}:{sample.id}")
        voice, rate = rng.choice(voices), int(rng.choice(list(rates)))
        key = json.dumps([sample.prompt, voice, rate, pitch, lead_silence, SAMPLE_RATE])
        name = f"{_slug(sample.id)}-{hashlib.sha256(key.encode()).hexdigest()[:8]}.wav"
        path = out / name
        if not path.is_file():
            save_audio(path, synthesize(sample.prompt, voice, rate, pitch, lead_silence))
        item = SpokenItem(
            id=sample.id,
            text=sample.prompt,
            audio=path.resolve(),
            voice=voice,
            rate=rate,
            label=sample.label,
            category=sample.category,
            target=sample.target,
        )
        items.append(item)
        records.append(
            {"id": item.id, "text": item.text, "audio": name, "voice": voice, "rate": rate, "pitch": pitch,
             "label": item.label, "category": item.category, "target": item.target, "suite": text_suite.name}
        )  # fmt: skip
    manifest = out / MANIFEST
    with atomic_file(manifest) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return SpokenSuite(text_suite.name, tuple(items), manifest.resolve())


_KNOWN = {"id", "text", "prompt", "audio", "voice", "rate", "label", "category", "target", "suite"}


def _optional_str(value: Any, where: str, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpeechError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def load_spoken_suite(manifest_path: str | Path, name: str | None = None) -> SpokenSuite:
    """Read a spoken suite from a JSONL manifest (or a directory holding ``manifest.jsonl``).

    Each non-blank line is a JSON object with ``audio`` (a path relative to the manifest, or absolute) and
    ``text`` or ``prompt``; optional ``id`` (default: the line number), ``label`` (``harmful``, ``benign`` or
    ``borderline``), ``category``, ``target``, ``voice``, ``rate``; other fields go to ``meta``.

    Args:
        manifest_path: the manifest file or its directory.
        name: suite name (default: the ``suite`` field of the first line, else the directory's name).

    Raises:
        SpeechError: naming the file and line for malformed JSON, a missing or mistyped field, an unknown label
            or a duplicate id, and naming the audio file when it does not exist.
    """
    from alignscope.data import LABELS

    path = Path(manifest_path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise SpeechError(f"spoken-suite manifest not found: {path}")
    base = path.parent
    items: list[SpokenItem] = []
    seen: set[str] = set()
    suite_name = name
    try:
        records = list(read_jsonl(path))
    except JSONLError as e:
        raise SpeechError(f"{path}, line {e.line}: {e.detail}") from e
    for lineno, rec in records:
        where = f"{path}, line {lineno}"
        audio = _optional_str(rec.get("audio"), where, "audio")
        if not audio:
            raise SpeechError(f"{where}: missing field 'audio' (path of the clip, relative to the manifest)")
        text = _optional_str(rec.get("text", rec.get("prompt")), where, "text")
        if not text:
            raise SpeechError(f"{where}: missing field 'text' (or 'prompt'): what the clip says")
        label = _optional_str(rec.get("label"), where, "label")
        if label is not None and label not in LABELS:
            raise SpeechError(f"{where}: label {label!r} is not one of {list(LABELS)}")
        rate = rec.get("rate")
        if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool)):
            raise SpeechError(f"{where}: field 'rate' must be an integer (words per minute), got {rate!r}")
        item_id = str(rec.get("id", f"{path.stem}-{lineno}"))
        if item_id in seen:
            raise SpeechError(f"{where}: duplicate id {item_id!r}")
        seen.add(item_id)
        audio_path = (base / audio).resolve()
        if not audio_path.is_file():
            raise SpeechError(f"{where}: audio file not found: {audio_path}")
        if suite_name is None and isinstance(rec.get("suite"), str):
            suite_name = rec["suite"]
        items.append(
            SpokenItem(
                id=item_id,
                text=text,
                audio=audio_path,
                voice=_optional_str(rec.get("voice"), where, "voice"),
                rate=rate,
                label=label,
                category=_optional_str(rec.get("category"), where, "category"),
                target=_optional_str(rec.get("target"), where, "target"),
                meta={k: v for k, v in rec.items() if k not in _KNOWN},
            )
        )
    if not items:
        raise SpeechError(f"{path}: the manifest lists no clips")
    return SpokenSuite(suite_name or base.name, tuple(items), path.resolve())
