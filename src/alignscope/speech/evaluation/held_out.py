"""Held-out evaluation of a speech LLM: does it behave like its LLM reading the transcript?

On the test splits of the harmful and benign suites (never seen in a build), spoken by espeak-ng:

* **refusal of harmful questions** and **benign questions answered** (not refused, not empty), both judged by
  alignscope's keyword judge on greedy answers, with Wilson intervals; the LLM's own rates on the written
  questions are reported next to them;
* **teacher-forced top-1 agreement**: over the response positions of the LLM's greedy answer to the written
  question, the share where the speech LLM hearing the question puts its highest logit on the same token;
* **what the projector passes on** (diagnostic): each clip's audio embeddings read as text, the nearest token of
  the LLM's input embedding table at each position with repeats and the CTC blank dropped
  (:func:`heard_transcripts`, meaningful after the build's CTC stage); its word error rate against the question,
  and the LLM's own refusal rates when it reads those transcripts as text. A distilled speech LLM behaves much
  like its LLM reading what the projector heard, so these rates show whether a shortfall comes from hearing or
  from the LLM.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from tqdm.auto import tqdm

from alignscope.models.base import GenerationConfig, user_turn
from alignscope.models.loading import cache_dir
from alignscope.runs.store import RunDir
from alignscope.speech.config_io import SpeechConfigIO
from alignscope.speech.errors import SpeechOptionError
from alignscope.speech.model.slm import SpeechLM
from alignscope.stats import Rate, rate_of
from alignscope.validation import FieldChecks

__all__ = [
    "SpeechEvalConfig",
    "SpeechEvalResult",
    "embedding_reader",
    "evaluate_slm",
    "heard_transcripts",
    "run_speech_eval",
    "word_error_rate",
    "word_errors",
]


@dataclass
class SpeechEvalResult:
    """Held-out metrics of a speech LLM (see the module docstring).

    Attributes:
        model: the speech LLM's description.
        harmful_refusal: spoken harmful questions refused.
        benign_answered: spoken benign questions answered (not refused and not empty).
        top1_agreement: teacher-forced top-1 agreement over every scored response token (both suites).
        top1_by_suite: the same per suite.
        refusal_agreement: clips (both suites) where the speech LLM's refusal decision equals the LLM's on the
            written question: the behaviour a distilled speech LLM can inherit (it cannot beat its teacher).
        text_harmful_refusal / text_benign_answered: the LLM's own rates on the written questions.
        heard_wer: word error rate of the heard transcripts (:func:`heard_transcripts`) against the questions.
        heard_harmful_refusal / heard_benign_answered: the LLM's rates when it reads the heard transcripts.
        judge, generation: the judge's name and the decoding settings that produced the rates.
        voices, rates: the evaluation speech.
        seconds: wall time.
        samples: per clip: suite, id, prompt, voice, rate, spoken answer, text answer, verdicts, agreement.
    """

    model: str
    harmful_refusal: Rate
    benign_answered: Rate
    top1_agreement: float
    top1_by_suite: dict[str, float]
    refusal_agreement: Rate
    text_harmful_refusal: Rate
    text_benign_answered: Rate
    heard_wer: float
    heard_harmful_refusal: Rate
    heard_benign_answered: Rate
    judge: str
    generation: str
    voices: list[str]
    rates: list[int]
    seconds: float
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model,
            "harmful_refusal": self.harmful_refusal.to_dict(),
            "benign_answered": self.benign_answered.to_dict(),
            "top1_agreement": self.top1_agreement,
            "top1_by_suite": self.top1_by_suite,
            "refusal_agreement": self.refusal_agreement.to_dict(),
            "text_harmful_refusal": self.text_harmful_refusal.to_dict(),
            "text_benign_answered": self.text_benign_answered.to_dict(),
            "heard_wer": self.heard_wer,
            "heard_harmful_refusal": self.heard_harmful_refusal.to_dict(),
            "heard_benign_answered": self.heard_benign_answered.to_dict(),
            "judge": self.judge,
            "generation": self.generation,
            "voices": self.voices,
            "rates": self.rates,
            "seconds": self.seconds,
        }
        if samples:
            d["samples"] = self.samples
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpeechEvalResult:
        """The result :meth:`to_dict` wrote (``samples`` empty when it was left out)."""
        rates = {k: _rate(d[k]) for k in _RATE_FIELDS}
        return cls(
            model=str(d["model"]), top1_agreement=float(d["top1_agreement"]),
            top1_by_suite={str(k): float(v) for k, v in d["top1_by_suite"].items()}, heard_wer=float(d["heard_wer"]),
            judge=str(d["judge"]), generation=str(d["generation"]), voices=list(d["voices"]),
            rates=[int(r) for r in d["rates"]], seconds=float(d["seconds"]), samples=list(d.get("samples", [])),
            **rates,
        )  # fmt: skip

    def summary(self) -> str:
        return (
            f"{self.model}, held-out spoken questions ({', '.join(self.voices)} at {self.rates} wpm; "
            f"judge {self.judge}; {self.generation}):\n"
            f"  harmful refused  {self.harmful_refusal.fmt()}   (text: {self.text_harmful_refusal.fmt()})\n"
            f"  benign answered  {self.benign_answered.fmt()}   (text: {self.text_benign_answered.fmt()})\n"
            f"  refusal decision equal to the text model's: {self.refusal_agreement.fmt()}\n"
            f"  teacher-forced top-1 agreement with the text answers: {self.top1_agreement:.3f} "
            + " ".join(f"({k} {v:.3f})" for k, v in self.top1_by_suite.items())
            + f"\n  heard transcripts: word error rate {self.heard_wer:.3f}; the LLM reading them refuses "
            f"{self.heard_harmful_refusal.fmt()} of harmful, answers {self.heard_benign_answered.fmt()} of benign"
        )


_RATE_FIELDS = (
    "harmful_refusal",
    "benign_answered",
    "refusal_agreement",
    "text_harmful_refusal",
    "text_benign_answered",
    "heard_harmful_refusal",
    "heard_benign_answered",
)


def _rate(d: Mapping[str, Any]) -> Rate:
    return Rate(int(d["k"]), int(d["n"]), float(d["ci_low"]), float(d["ci_high"]))


@dataclass(frozen=True)
class SpeechEvalConfig(SpeechConfigIO):
    """Settings of ``alignscope speech evaluate``: the held-out evaluation of a speech LLM, as its build measures
    it (:func:`evaluate_slm`).

    Attributes:
        slm: spec of the speech LLM: ``default`` (the embedded build), ``build:KEY=VALUE,...``, a projector or
            build directory, or ``random[:LLM]`` (untrained projector, smoke tests only).
        harmful_suite: harmful suite spec (any suite, e.g. ``advbench:PATH``); its test half is spoken.
        benign_suite: benign suite spec (e.g. ``jsonl:PATH#instruction``); its test half is spoken.
        voices: espeak-ng voices (None: the build recipe's, :class:`~alignscope.speech.build.config.SpeechBuildConfig`).
        rates: speaking rates in words per minute (None: the build recipe's).
        limit: first test questions of each suite only (None: all).
        max_new_tokens: length of the greedy answers.
        judge: judge spec (keyword, llm-rubric[:MODEL], strongreject[:MODEL], ...).
        seed: seed of the voice and rate draw per question.
        device: cuda, mps or cpu (None: the best available).
    """

    settings_name: ClassVar[str] = "speech evaluation"

    slm: str = "default"
    harmful_suite: str = "harmful"
    benign_suite: str = "benign"
    voices: tuple[str, ...] | None = None
    rates: tuple[int, ...] | None = None
    limit: int | None = None
    max_new_tokens: int = 64
    judge: str = "keyword"
    seed: int = 1
    device: str | None = None

    def __post_init__(self) -> None:
        from alignscope.judges.registry import check_judge_spec

        check = FieldChecks(self, SpeechOptionError)
        check.non_empty("voices")
        check.each_at_least(1, "rates")
        check.at_least(1, "limit", "max_new_tokens")
        check_judge_spec(self.judge)


def run_speech_eval(
    config: SpeechEvalConfig | None = None,
    run: RunDir | None = None,
    *,
    slm: SpeechLM | None = None,
    progress: bool = True,
) -> SpeechEvalResult:
    """Load the speech LLM and the judge ``config`` names and run :func:`evaluate_slm`; with ``run``, its
    metrics (without the per-clip samples) go into the run's ``metrics.json`` under ``speech_evaluation``.
    ``slm`` replaces the speech LLM ``config.slm`` names."""
    from alignscope.models.pool import load_judge_for
    from alignscope.speech.build.config import SpeechBuildConfig
    from alignscope.speech.model import loading

    config = config or SpeechEvalConfig()
    recipe = SpeechBuildConfig()
    model = slm if slm is not None else loading.load_speech_model(config.slm, device=config.device)
    result = evaluate_slm(
        model, config.voices or recipe.voices, config.rates or recipe.rates, config.harmful_suite,
        config.benign_suite, limit=config.limit, max_new_tokens=config.max_new_tokens,
        judge=load_judge_for(config.judge, model.text_llm), seed=config.seed, progress=progress,
    )  # fmt: skip
    if run is not None:
        metrics = run.metrics()
        metrics["speech_evaluation"] = result.to_dict(samples=False)
        run.write_metrics(metrics)
    return result


def _spoken_test_split(
    suite: str, voices: Sequence[str], rates: Sequence[int], test_fraction: float, split_seed: int, seed: int,
    lead_silence: float, limit: int | None, progress: bool,
) -> Any:  # fmt: skip
    from alignscope.data import load_suite
    from alignscope.data.types import Suite
    from alignscope.speech.spoken.suites import speak_suite

    test = load_suite(suite).split(test_fraction, split_seed)[1]
    if limit is not None:
        test = Suite(test.name, test.samples[:limit], test.source)
    key = json.dumps([suite, test_fraction, split_seed, list(voices), list(rates), seed, lead_silence, limit])
    out = cache_dir() / "speech" / "suites" / f"{suite}-test-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return speak_suite(test, out, voices, rates, seed=seed, lead_silence=lead_silence, progress=progress)


def evaluate_slm(
    slm: SpeechLM,
    voices: Sequence[str] = ("en-us+klatt4", "en-us+klatt3", "en-us+klatt5", "en+klatt4"),
    rates: Sequence[int] = (150, 175, 200),
    harmful_suite: str = "harmful",
    benign_suite: str = "benign",
    test_fraction: float = 0.5,
    split_seed: int = 0,
    limit: int | None = None,
    max_new_tokens: int = 64,
    judge: Any = None,
    batch_size: int = 8,
    seed: int = 1,
    lead_silence: float = 0.4,
    progress: bool = True,
) -> SpeechEvalResult:
    """Refusal, helpfulness and agreement of ``slm`` on the held-out (test) halves of two suites, spoken with
    ``voices`` at ``rates`` (one draw per question, seeded by ``seed``; cached WAVs).

    Args:
        slm: the speech LLM; its LLM reading the written question is the reference.
        limit: use only the first ``limit`` test questions of each suite (quick checks).
        max_new_tokens: length of the greedy answers (spoken and written) and of the agreement span.
        judge: a judge with ``judge_batch(prompts, responses)`` (default: :class:`KeywordJudge`).
        batch_size: clips per forward pass.
    """
    from alignscope.judges.keyword import KeywordJudge
    from alignscope.training.builders import generate_cached

    t0 = time.perf_counter()
    judge = judge or KeywordJudge()
    gen = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)
    samples: list[dict[str, Any]] = []
    spoken_flags: dict[str, list[bool]] = {}
    text_flags: dict[str, list[bool]] = {}
    heard_flags: dict[str, list[bool]] = {}
    errors = [0, 0]
    hits: dict[str, tuple[int, int]] = {}
    same_decision: list[bool] = []
    for label, suite in (("harmful", harmful_suite), ("benign", benign_suite)):
        spoken = _spoken_test_split(
            suite, voices, rates, test_fraction, split_seed, seed, lead_silence, limit, progress
        )
        prompts = spoken.texts
        clips = [torch.from_numpy(w) for w in spoken.waveforms()]
        text_answers = generate_cached(
            slm.text_llm, [user_turn(p) for p in prompts], max_new_tokens, batch_size=16, tag="speech-eval",
            progress=progress,
        )  # fmt: skip
        answers = slm.generate(clips, gen, progress=progress)
        verdicts = judge.judge_batch(prompts, answers)
        text_verdicts = judge.judge_batch(prompts, text_answers)
        agree = _agreement(slm, clips, text_answers, batch_size, progress)
        heard = heard_transcripts(slm, clips)
        errors[0] += sum(word_errors(p, h) for p, h in zip(prompts, heard, strict=True))
        errors[1] += sum(len(_words(p)) for p in prompts)
        heard_answers = slm.text_llm.generate([user_turn(h) for h in heard], gen, progress=False)
        heard_verdicts = judge.judge_batch(heard, heard_answers)
        hits[label] = (sum(sum(a) for a in agree), sum(len(a) for a in agree))
        same_decision += [
            bool(v.refused) == bool(t.refused) for v, t in zip(verdicts, text_verdicts, strict=True)
        ]
        if label == "harmful":
            spoken_flags[label] = [bool(v.refused) for v in verdicts]
            text_flags[label] = [bool(v.refused) for v in text_verdicts]
            heard_flags[label] = [bool(v.refused) for v in heard_verdicts]
        else:
            heard_flags[label] = [
                not v.refused and bool(a.strip()) for v, a in zip(heard_verdicts, heard_answers, strict=True)
            ]
            spoken_flags[label] = [
                not v.refused and bool(a.strip()) for v, a in zip(verdicts, answers, strict=True)
            ]
            text_flags[label] = [
                not v.refused and bool(a.strip()) for v, a in zip(text_verdicts, text_answers, strict=True)
            ]
        for i, item in enumerate(spoken):
            samples.append(
                {"suite": label, "id": item.id, "prompt": item.text, "voice": item.voice, "rate": item.rate,
                 "answer": answers[i], "text_answer": text_answers[i], "verdict": verdicts[i].to_dict(),
                 "text_verdict": text_verdicts[i].to_dict(), "top1_hits": sum(agree[i]), "top1_tokens": len(agree[i]),
                 "heard": heard[i], "heard_answer": heard_answers[i], "heard_verdict": heard_verdicts[i].to_dict()}
            )  # fmt: skip
    by_suite = {k: h / max(1, n) for k, (h, n) in hits.items()}
    total_hits = sum(h for h, _ in hits.values())
    total = sum(n for _, n in hits.values())
    return SpeechEvalResult(
        model=slm.describe(),
        harmful_refusal=rate_of(spoken_flags["harmful"]),
        benign_answered=rate_of(spoken_flags["benign"]),
        top1_agreement=total_hits / max(1, total),
        top1_by_suite=by_suite,
        refusal_agreement=rate_of(same_decision),
        text_harmful_refusal=rate_of(text_flags["harmful"]),
        text_benign_answered=rate_of(text_flags["benign"]),
        heard_wer=errors[0] / max(1, errors[1]),
        heard_harmful_refusal=rate_of(heard_flags["harmful"]),
        heard_benign_answered=rate_of(heard_flags["benign"]),
        judge=str(getattr(judge, "name", type(judge).__name__)),
        generation=gen.describe(),
        voices=list(voices),
        rates=[int(r) for r in rates],
        seconds=time.perf_counter() - t0,
        samples=samples,
    )


@torch.inference_mode()
def _agreement(
    slm: SpeechLM, clips: list[torch.Tensor], answers: list[str], batch_size: int, progress: bool
) -> list[list[int]]:
    """Per clip, 1/0 per token of the written-question answer: is it the speech LLM's top-1 token there?"""
    out: list[list[int]] = [[] for _ in clips]
    idx = [i for i, a in enumerate(answers) if slm.llm.response_ids(a)]
    bar = tqdm(total=len(idx), desc="top-1 agreement", disable=not progress, leave=False)
    for start in range(0, len(idx), batch_size):
        part = idx[start : start + batch_size]
        rb = slm.response_logits([clips[i] for i in part], [answers[i] for i in part])
        ok = rb.logits.argmax(-1) == rb.target_ids
        for row, i in enumerate(part):
            out[i] = ok[row][rb.mask[row]].int().tolist()
        bar.update(len(part))
    bar.close()
    return out


@torch.inference_mode()
def heard_transcripts(slm: SpeechLM, clips: list[torch.Tensor], blank: str = " ") -> list[str]:
    """What the projector passes on, as text: per clip, its audio embeddings read by :func:`embedding_reader`.

    The build's CTC stage trains the projector toward exactly this reading; after the later stages the
    embeddings drift from the table, so the transcript is a lower bound of what the LLM can make of the audio.
    """
    read = embedding_reader(slm, blank)
    return [read(slm.audio_embeds([clip])[0]) for clip in clips]


def embedding_reader(slm: SpeechLM, blank: str = " ") -> Callable[[torch.Tensor], str]:
    """A function reading ``(positions, hidden)`` audio embeddings as text: the nearest token (cosine) of the
    LLM's input embedding table at each position, repeats collapsed and ``blank`` (the build's CTC blank)
    dropped, decoded. The normalised table is computed once, here."""
    with torch.inference_mode():
        table = torch.nn.functional.normalize(slm.llm.model.get_input_embeddings().weight.float(), dim=-1)
    blank_ids = slm.llm.response_ids(blank)
    blank_id = blank_ids[0] if len(blank_ids) == 1 else -1

    @torch.inference_mode()
    def read(embeds: torch.Tensor) -> str:
        best = (torch.nn.functional.normalize(embeds.float(), dim=-1) @ table.T).argmax(-1).tolist()
        ids = [t for k, t in enumerate(best) if t != blank_id and (k == 0 or t != best[k - 1])]
        return str(slm.tokenizer.decode(ids)).strip()

    return read


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> int:
    """Word-level edit distance (substitutions, insertions, deletions) after lower-casing and dropping
    punctuation."""
    ref, hyp = _words(reference), _words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[len(hyp)]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Total word errors over total reference words."""
    errors = sum(word_errors(r, h) for r, h in zip(references, hypotheses, strict=True))
    return errors / max(1, sum(len(_words(r)) for r in references))
