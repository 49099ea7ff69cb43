"""Training data of a speech build: alignscope's own text corpus, its spoken versions as cached encoder
features, and the utterance plan (which voice and rate speaks which text).

Every text is alignscope's own: the train splits of the built-in suites, and sentences of the LLM's own answers
to the benign and borderline train prompts (generated once, greedy and sampled, and cached), and those sentences
with words swapped for other words of the LLM's vocabulary (:func:`substituted_texts`). The held-out test splits
never enter: a sentence equal to a test prompt is dropped.

Encoder outputs are cached on disk, one safetensors file per utterance, under
``$ALIGNSCOPE_CACHE/speech/features/<encoder fingerprint>/`` keyed by text, voice, rate, pitch and silences: a
second build (another seed, other step counts) synthesises and encodes nothing it has seen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from alignscope.cachefs import atomic_file
from alignscope.models.base import GenerationConfig, user_turn
from alignscope.models.loading import cache_dir
from alignscope.models.local import LocalModel
from alignscope.speech.errors import SpeechError
from alignscope.speech.model.features import N_SAMPLES_30S, log_mel
from alignscope.training.prompts import (
    prompt_starts,
    sampled_sentences,
    split_sentences,
    substituted_texts,
    text_key,
    vocabulary_words,
)

log = logging.getLogger("alignscope.speech.build.builder")

__all__ = [
    "FeatureCache",
    "Utterance",
    "cached_answers",
    "corpus_texts",
    "plan_utterances",
    "prompt_starts",
    "sampled_prompts",
    "sampled_sentences",
    "split_sentences",
    "substituted_texts",
    "suite_prompts",
    "text_key",
    "vocabulary_words",
]


def suite_prompts(
    suites: Sequence[str], part: str, test_fraction: float = 0.5, seed: int = 0, limit: int | None = None
) -> list[tuple[str, str]]:
    """``(suite name, prompt)`` of the ``part`` (``"train"`` or ``"test"``) split of each suite (the first
    ``limit`` of each when given)."""
    from alignscope.data import load_suite

    out = []
    for name in suites:
        train, test = load_suite(name).split(test_fraction, seed)
        chosen = train if part == "train" else test
        out += [(name, s.prompt) for s in chosen.samples[:limit]]
    return out


def sampled_prompts(
    llm: LocalModel,
    suites: Sequence[str],
    n: int,
    keep: int,
    exclude: Collection[str] = (),
    test_fraction: float = 0.5,
    split_seed: int = 0,
    seed: int = 0,
    progress: bool = False,
    test_suites: Sequence[str] = (),
) -> list[str]:
    """Up to ``keep`` of ``n`` sentences ``llm`` writes continuing the openings of ``suites``' train prompts
    (:func:`sampled_sentences`, cached), none equal (up to case and spacing) to a text of ``exclude`` or to a
    test prompt of ``suites`` or ``test_suites``."""
    if keep <= 0 or n <= 0:
        return []
    starts = prompt_starts([p for _, p in suite_prompts(suites, "train", test_fraction, split_seed)])
    seen = {text_key(p) for p in exclude}
    for names in (suites, test_suites):
        seen |= {text_key(p) for _, p in suite_prompts(names, "test", test_fraction, split_seed)}
    out: list[str] = []
    for t in sampled_sentences(llm, starts, n, seed=seed, progress=progress):
        if text_key(t) not in seen:
            seen.add(text_key(t))
            out.append(t)
    return out[:keep]


def cached_answers(
    llm: LocalModel,
    prompts: Sequence[str],
    max_new_tokens: int,
    samples: int = 1,
    temperature: float = 0.8,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[str]]:
    """``samples`` answers of ``llm`` to each prompt: the greedy one first, then sampled ones (``temperature``,
    top-p 0.95, seeds ``seed + 1..``). Cached as JSONL under ``$ALIGNSCOPE_CACHE/speech/corpus/`` keyed by the
    model name, the prompts and the settings; delete the file to regenerate."""
    convs = [user_turn(p) for p in prompts]
    out: list[list[str]] = [[] for _ in prompts]
    for k in range(samples):
        sampled = k > 0
        gen = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=sampled,
            temperature=temperature if sampled else 1.0,
            top_p=0.95 if sampled else 1.0,
            seed=seed + k,
            batch_size=batch_size,
        )
        key = json.dumps({"model": llm.name, "prompts": list(prompts), "generation": gen.to_dict()})
        file = (
            cache_dir()
            / "speech"
            / "corpus"
            / f"answers-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"
        )
        answers: list[str] | None = None
        if file.is_file():
            rows = [
                json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
            if len(rows) == len(prompts):
                answers = [str(r["response"]) for r in rows]
        if answers is None:
            log.info(
                "answering %d prompts with %s (%s), cached in %s",
                len(prompts),
                llm.name,
                gen.describe(),
                file,
            )
            answers = llm.generate(convs, gen, progress=progress)
            with atomic_file(file) as tmp:
                tmp.write_text(
                    "".join(
                        json.dumps({"prompt": p, "response": a}) + "\n"
                        for p, a in zip(prompts, answers, strict=True)
                    ),
                    encoding="utf-8",
                )
        for i, a in enumerate(answers):
            out[i].append(a)
    return out


def corpus_texts(
    llm: LocalModel,
    prompt_suites: Sequence[str],
    answer_suites: Sequence[str],
    n_texts: int,
    answer_tokens: int = 256,
    answer_samples: int = 1,
    sampled: int = 0,
    test_fraction: float = 0.5,
    split_seed: int = 0,
    seed: int = 0,
    progress: bool = False,
    substituted: int = 0,
    replace: float = 0.5,
) -> list[str]:
    """Up to ``n_texts`` distinct transcripts for the ASR stage, all alignscope's own: every train prompt of
    ``prompt_suites``; ``sampled`` sentences sampled from ``llm`` continuing the openings of those prompts
    (:func:`sampled_sentences`); sentences of ``llm``'s answers (``answer_samples`` per prompt) to the train
    prompts of ``answer_suites``. The generated sentences are shuffled together with ``seed``. Then up to
    ``substituted`` more: those texts with words swapped (probability ``replace``) for words of the LLM's
    vocabulary (:func:`substituted_texts`). Nothing equal (up to case and punctuation) to a held-out test prompt
    is kept."""
    held_out = {text_key(p) for _, p in suite_prompts(prompt_suites, "test", test_fraction, split_seed)}
    held_out |= {text_key(p) for _, p in suite_prompts(answer_suites, "test", test_fraction, split_seed)}
    prompts = [p for _, p in suite_prompts(prompt_suites, "train", test_fraction, split_seed)]
    answer_prompts = [p for _, p in suite_prompts(answer_suites, "train", test_fraction, split_seed)]
    sentences: list[str] = []
    if len(prompts) < n_texts:
        sentences += sampled_sentences(llm, prompt_starts(prompts), sampled, seed=seed, progress=progress)
        if answer_prompts and answer_samples > 0:
            for answers in cached_answers(
                llm, answer_prompts, answer_tokens, answer_samples, seed=seed, progress=progress
            ):
                for a in answers:
                    sentences += split_sentences(a)
    random.Random(f"corpus:{seed}").shuffle(sentences)
    seen: set[str] = set()
    texts: list[str] = []
    for t in [*prompts, *sentences]:
        key = text_key(t)
        if key and key not in seen and key not in held_out:
            seen.add(key)
            texts.append(t)
    if len(texts) < n_texts:
        log.info("the corpus holds %d distinct texts (%d asked for)", len(texts), n_texts)
    texts = texts[:n_texts]
    words = vocabulary_words(llm.tokenizer) if substituted > 0 else []
    for t in substituted_texts(texts, words, substituted, replace, seed):
        key = text_key(t)
        if key not in seen and key not in held_out:
            seen.add(key)
            texts.append(t)
    return texts


@dataclass(frozen=True)
class Utterance:
    """One clip to synthesise: ``text`` spoken by espeak-ng ``voice`` at ``rate`` words per minute."""

    text: str
    voice: str
    rate: int
    pitch: int = 50
    lead_silence: float = 0.4
    tail_silence: float = 0.2

    def key(self) -> str:
        """Cache key of the clip (the synthesis settings; the encoder is keyed by the cache directory)."""
        raw = json.dumps([self.text, self.voice, self.rate, self.pitch, self.lead_silence, self.tail_silence])
        return hashlib.sha256(raw.encode()).hexdigest()[:24]


def plan_utterances(
    texts: Sequence[str],
    voices: Sequence[str],
    rates: Sequence[int],
    per_text: int,
    seed: int = 0,
    lead_silence: float = 0.4,
    pitches: Sequence[int] = (50,),
) -> list[list[Utterance]]:
    """Per text, ``per_text`` distinct (voice, rate, pitch) draws (fewer if there are fewer combinations),
    seeded by ``seed`` and the text itself, so a text is spoken the same way whatever else the list holds."""
    if not voices or not rates or not pitches:
        raise SpeechError("a speech build needs at least one voice, one rate and one pitch")
    combos = [(v, int(r), int(p)) for v in voices for r in rates for p in pitches]
    plans = []
    for t in texts:
        rng = random.Random(f"{seed}:{t}")
        chosen = rng.sample(combos, min(per_text, len(combos)))
        plans.append([Utterance(t, v, r, p, lead_silence) for v, r, p in chosen])
    return plans


def encoder_fingerprint(encoder: Any, crop: bool) -> str:
    """A short hash of the encoder's weights and the crop mode: the feature cache's directory name."""
    h = hashlib.sha256(f"crop={crop};n_mels={int(encoder.n_mels)}".encode())
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class FeatureCache:
    """Encoder outputs of synthesised utterances, computed once and kept on disk.

    ``features(utterances)`` gives, per utterance, the ``(frames, d_model)`` float16 encoder output of its clip
    exactly as :meth:`alignscope.speech.model.slm.SpeechLM.audio_embeds` computes it (log-mel of the clip, cropped
    to its length or padded to 30 s, then the encoder). ``hits`` and ``misses`` count reuse.

    Args:
        encoder: the frozen Whisper-style encoder.
        crop: encode each clip at its own length (as a ``SpeechLM(crop=True)`` does).
        root: cache directory (default ``$ALIGNSCOPE_CACHE/speech/features``); a sub-directory per encoder
            fingerprint.
    """

    def __init__(self, encoder: Any, crop: bool = True, root: str | Path | None = None):
        self.encoder = encoder
        self.crop = crop
        self.fingerprint = encoder_fingerprint(encoder, crop)
        self.dir = Path(root) if root is not None else cache_dir() / "speech" / "features"
        self.dir = self.dir / self.fingerprint
        self.hits = 0
        self.misses = 0

    def path(self, utt: Utterance) -> Path:
        return self.dir / utt.key()[:2] / f"{utt.key()}.safetensors"

    @torch.inference_mode()
    def encode(self, samples: np.ndarray) -> torch.Tensor:
        """``(frames, d_model)`` float32 encoder output of one clip."""
        dev = next(self.encoder.parameters()).device
        dtype = next(self.encoder.parameters()).dtype
        wave = torch.from_numpy(np.asarray(samples, dtype=np.float32)).to(dev)
        if wave.numel() > N_SAMPLES_30S:
            raise SpeechError(
                f"a training clip is {wave.numel() / 16000:.1f} s long; Whisper takes at most 30 s"
            )
        if not self.crop:
            wave = torch.nn.functional.pad(wave, (0, N_SAMPLES_30S - wave.numel()))
        mel = log_mel(wave, n_mels=int(self.encoder.n_mels))
        return self.encoder(mel.to(dtype))[0].float().cpu()

    def features(
        self, utterances: Sequence[Utterance], progress: bool = False, desc: str = "speech"
    ) -> list[torch.Tensor]:
        from safetensors.torch import load_file, save_file

        from alignscope.speech.spoken.tts import synthesize

        out = []
        for utt in tqdm(utterances, desc=f"{desc}: synthesise + encode", disable=not progress, leave=False):
            path = self.path(utt)
            if path.is_file():
                try:
                    out.append(load_file(str(path))["features"])
                    self.hits += 1
                    continue
                except Exception as e:  # a truncated file from a killed run: make it again
                    log.warning("rebuilding unreadable cached features %s (%s)", path, e)
            wave = synthesize(utt.text, utt.voice, utt.rate, utt.pitch, utt.lead_silence, utt.tail_silence)
            feats = self.encode(wave).to(torch.float16).contiguous()
            meta = {"text": utt.text, "voice": utt.voice, "rate": str(utt.rate), "pitch": str(utt.pitch)}
            with atomic_file(path) as tmp:  # private name: processes encoding the same clip do not collide
                save_file({"features": feats}, str(tmp), metadata=meta)
            self.misses += 1
            out.append(feats)
        return out
