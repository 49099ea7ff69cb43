"""Misheard-prompt training data: teach an LLM to decide on what a speech projector hears as it decides on the
written question.

A distilled speech LLM behaves much like its LLM reading the projector's heard transcript
(:func:`alignscope.speech.evaluation.held_out.heard_transcripts`). When the LLM refuses a misheard benign question, the
speech LLM tends to as well. ``noisy_copies`` in the safety recipes trains on random word swaps; this module builds
copies with the projector's real mistakes: each train-split prompt is spoken by espeak-ng, encoded, projected and
read out as text. Every copy, clean or misheard, gets the label of the clean prompt:

* every prompt gets the LLM's own greedy answer to the clean prompt (cached). A refusal stays a refusal:
  the data asks for consistency, not for more answers (``drop_refused`` leaves out the prompts outside the
  refuse suites that the LLM refuses, so that the data asks it to answer every one it keeps);
* except a prompt of a ``refuse`` suite (``harmful`` by default) that the LLM answers: it gets a refusal from
  :data:`alignscope.training.refusals.REFUSALS`.

Labels the LLM itself writes ask nothing new of it on the clean copies; what the data asks is the same
decision on the misheard ones (``only_changed`` keeps just the misheard copies it decides otherwise). What training
on this data did to the LLM and its speech LLM is in docs/speech.md.

The records are chat JSONL for any training recipe (``alignscope train safety-sft --data FILE``). Only the
train splits enter, so the held-out spoken evaluation stays unseen.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from alignscope.models.base import user_turn
from alignscope.speech.build.data import FeatureCache, plan_utterances, sampled_prompts, suite_prompts
from alignscope.speech.errors import SpeechError
from alignscope.speech.evaluation.held_out import embedding_reader, word_error_rate
from alignscope.speech.model.slm import SpeechLM
from alignscope.training.chat_data import ChatRecord

__all__ = ["MisheardData", "misheard_records"]


@dataclass
class MisheardData:
    """Records and what they hold.

    Attributes:
        records: per prompt, the clean copy (unless ``clean=False``) then the misheard copies.
        prompts: prompts used (suite train prompts and sampled ones); ``refused_labels``: those labelled with a refusal (a refuse suite's, or the LLM
            refuses the clean prompt).
        heard_wer: word error rate of the misheard copies against their prompts.
        dropped: misheard copies left out because the read-out was empty or equal to the prompt.
        settings: the arguments that made the records, the copies ``only_changed`` left out
            (``unchanged_left_out``), the prompts ``drop_refused`` left out (``refused_left_out``), the
            projector and the LLM.
    """

    records: list[ChatRecord]
    prompts: int
    refused_labels: int
    heard_wer: float
    dropped: int
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "records": len(self.records),
            "prompts": self.prompts,
            "refused_labels": self.refused_labels,
            "heard_wer": self.heard_wer,
            "dropped": self.dropped,
            **self.settings,
        }


@torch.inference_mode()
def misheard_records(
    slm: SpeechLM,
    suites: Sequence[str] = ("harmful", "benign", "borderline"),
    refuse: Collection[str] = ("harmful",),
    voices: Sequence[str] = ("en-us+klatt4", "en-us+klatt3", "en-us+klatt5", "en+klatt4"),
    rates: Sequence[int] = (150, 175, 200),
    pitches: Sequence[int] = (40, 50, 60),
    variants: int = 2,
    clean: bool = True,
    max_new_tokens: int = 128,
    test_fraction: float = 0.5,
    split_seed: int = 0,
    lead_silence: float = 0.4,
    seed: int = 0,
    limit: int | None = None,
    sampled: int = 0,
    sampled_from: int = 600,
    only_changed: bool = False,
    drop_refused: bool = False,
    progress: bool = True,
) -> MisheardData:
    """Clean and misheard copies of the train-split prompts of ``suites`` (see the module docstring).

    ``slm``'s projector does the hearing (a build's CTC-stage projector reads out best); its ``text_llm``
    writes the answers. Each prompt is spoken ``variants`` times by distinct (voice, rate, pitch) draws seeded
    by ``seed`` and the prompt; encoder outputs are shared with the speech builds' feature cache. ``limit``
    takes the first prompts of each suite's train split only. ``sampled`` adds up to that many request-like
    sentences the LLM writes (of ``sampled_from`` drawn; the sentences a speech build with the same seed uses,
    :func:`~alignscope.speech.build.data.sampled_prompts`; never a test prompt), labelled like the other
    prompts outside the refuse suites: the LLM's answer. ``only_changed`` keeps only the misheard copies on which
    the LLM (greedy, 32 tokens, keyword judge) refuses where the label answers or answers where it refuses.
    ``drop_refused`` leaves out the prompts outside the refuse suites that the LLM refuses when written (their
    label would be its refusal, which teaches refusing them): the data then asks for answers to every prompt
    it keeps outside the refuse suites.
    """
    from alignscope.judges.keyword import KeywordJudge
    from alignscope.training.builders import generate_cached
    from alignscope.training.refusals import REFUSALS

    if not suites:
        raise SpeechError("misheard_records needs at least one suite")
    if variants < 1:
        raise SpeechError(f"variants must be at least 1, not {variants}")
    unknown = set(refuse) - set(suites)
    if unknown:
        raise SpeechError(f"refuse names suites that are not in suites: {sorted(unknown)}")
    pairs = suite_prompts(suites, "train", test_fraction, split_seed, limit)
    llm = slm.text_llm
    extra = sampled_prompts(
        llm, suites, sampled_from, sampled, {p for _, p in pairs}, test_fraction, split_seed, seed, progress
    )
    pairs += [("sampled", p) for p in extra]
    answers = generate_cached(
        llm, [user_turn(p) for _, p in pairs], max_new_tokens, batch_size=32, tag="misheard",
        progress=progress,
    )  # fmt: skip
    refused = [bool(v.refused) for v in KeywordJudge().judge_batch([p for _, p in pairs], answers)]
    refused_left_out = 0
    if drop_refused:
        kept = [i for i, ((s, _), r) in enumerate(zip(pairs, refused, strict=True)) if s in refuse or not r]
        refused_left_out = len(pairs) - len(kept)
        pairs, answers = [pairs[i] for i in kept], [answers[i] for i in kept]
        refused = [refused[i] for i in kept]
    rng = random.Random(f"misheard:{seed}")
    labels = [
        rng.choice(REFUSALS) if suite in refuse and not r else answer
        for (suite, _), answer, r in zip(pairs, answers, refused, strict=True)
    ]
    label_refused = [s in refuse or r for (s, _), r in zip(pairs, refused, strict=True)]
    plans = plan_utterances([p for _, p in pairs], voices, rates, variants, seed, lead_silence, pitches)
    cache = FeatureCache(slm.encoder, crop=slm.crop)
    read = embedding_reader(slm)
    records: list[ChatRecord] = []
    refs: list[str] = []
    heard: list[str] = []
    dropped = 0
    for i, ((suite, prompt), label, plan) in enumerate(
        tqdm(list(zip(pairs, labels, plans, strict=True)), desc="misheard prompts", disable=not progress)
    ):
        meta = {"group": "safety" if suite in refuse else "utility", "suite": suite, "prompt_index": i}
        if clean:
            records.append(ChatRecord([*user_turn(prompt), {"role": "assistant", "content": label}], meta))
        for utt, feats in zip(plan, cache.features(plan), strict=True):
            emb = slm.projector(feats.to(slm.device)[None])[0]
            text = read(emb)
            if not text or text == prompt:
                dropped += 1
                continue
            refs.append(prompt)
            heard.append(text)
            records.append(
                ChatRecord(
                    [*user_turn(text), {"role": "assistant", "content": label}],
                    {**meta, "noisy": True, "heard": True, "voice": utt.voice, "rate": utt.rate},
                )
            )
    unchanged = 0
    if only_changed:
        copies = [r for r in records if r.meta.get("heard")]
        said = generate_cached(
            llm, [r.messages[:1] for r in copies], 32, batch_size=32, tag="misheard-heard", progress=progress
        )
        verdicts = KeywordJudge().judge_batch([r.messages[0]["content"] for r in copies], said)
        same = {
            id(r) for r, v in zip(copies, verdicts, strict=True)
            if bool(v.refused) == label_refused[r.meta["prompt_index"]]
        }  # fmt: skip
        unchanged = len(same)
        records = [r for r in records if id(r) not in same]
    settings = {
        "suites": list(suites), "refuse": sorted(refuse), "voices": list(voices), "rates": list(rates),
        "pitches": list(pitches), "variants": variants, "clean": clean, "max_new_tokens": max_new_tokens,
        "seed": seed, "limit": limit, "sampled": len(extra), "only_changed": only_changed,
        "unchanged_left_out": unchanged, "drop_refused": drop_refused, "refused_left_out": refused_left_out,
        "projector": slm.describe(), "llm": llm.name,
    }  # fmt: skip
    return MisheardData(
        records,
        len(pairs),
        sum(label_refused),
        word_error_rate(refs, heard) if refs else 0.0,
        dropped,
        settings,
    )
