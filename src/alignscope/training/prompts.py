"""Text a model writes itself: request-like sentences sampled from it, and the helpers that cut and compare them.

Used for more instructions than a suite holds: the utility data of the safety recipes
(``utility_sampled``) and the speech build's corpus. Everything is cached under ``$ALIGNSCOPE_CACHE``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from alignscope.jsonl import read_jsonl
from alignscope.models.loading import cache_dir
from alignscope.models.local import LocalModel

log = logging.getLogger("alignscope.training")

__all__ = [
    "perturb_words",
    "prompt_starts",
    "sampled_sentences",
    "split_sentences",
    "substituted_texts",
    "text_key",
    "vocabulary_words",
]

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_MARKUP = re.compile(r"^\s*(?:[#>*\-•]+|\d+[.)]|[A-Za-z][.)])\s*")
_CODE_LIKE = re.compile(r"[{}<>=_/\\|@#$%^~`\[\]]")


def split_sentences(text: str, min_words: int = 3, max_words: int = 25) -> list[str]:
    """Speakable sentences of a generated answer: split at sentence ends and line breaks, list markers and
    markdown emphasis removed, lines that look like code or tables dropped, ``min_words..max_words`` words."""
    out = []
    for raw in _SENTENCE_END.split(text):
        s = _MARKUP.sub("", raw).replace("**", "").replace("__", "").strip().strip('"').strip()
        if not s or _CODE_LIKE.search(s) or not s.isascii():
            continue
        s = re.sub(r"\s+", " ", s)
        words = s.split()
        if not min_words <= len(words) <= max_words:
            continue
        if sum(c.isalpha() for c in s) < 0.6 * len(s):
            continue
        if s[-1] not in ".!?":
            if s[-1] in ":;,":
                continue  # a sentence cut off before a list or at the generation limit
            s += "."
        out.append(s)
    return out


def sampled_sentences(
    llm: LocalModel,
    starts: Sequence[str],
    n: int,
    max_new_tokens: int = 28,
    temperature: float = 0.9,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> list[str]:
    """``n`` sentences sampled from ``llm`` as a plain language model (no chat template), each continuing one of
    ``starts`` (drawn with ``seed``), cut at the first sentence end; cached like :func:`cached_answers`.

    Started from the first words of the suites' prompts ("How do I", "Write a short"), they read like spoken
    requests, the speech a speech LLM is asked to understand; a sample that yields no sentence is dropped."""
    if n <= 0 or not starts:
        return []
    rng = random.Random(f"starts:{seed}")
    chosen = [rng.choice(list(starts)) for _ in range(n)]
    settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
    key = json.dumps({"model": llm.name, "starts": chosen, **settings})
    file = cache_dir() / "generated" / f"sampled-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl"
    if file.is_file():
        rows = [row for _, row in read_jsonl(file)]
        if len(rows) == n:
            return [str(r["text"]) for r in rows if r["text"]]
    log.info("sampling %d sentences from %s, cached in %s", n, llm.name, file)
    tok = llm.tokenizer
    texts: list[str] = []
    bar = tqdm(total=n, desc="sampling corpus sentences", disable=not progress, leave=False)
    for b, start in enumerate(range(0, n, batch_size)):
        part = chosen[start : start + batch_size]
        ids, mask = llm.left_pad([llm.response_ids(s) for s in part])
        torch.manual_seed(seed * 100_003 + b)
        with torch.inference_mode():
            new = llm.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True,
                temperature=temperature, top_p=0.95, top_k=None, pad_token_id=tok.pad_token_id,
            )[:, ids.shape[1] :]  # fmt: skip
        for s, cont in zip(part, tok.batch_decode(new, skip_special_tokens=True), strict=True):
            first = re.split(r"(?<=[.!?])\s|\n", s + cont, maxsplit=1)[0]
            found = split_sentences(first) if re.search(r"[.!?]$", first.strip()) else []
            texts.append(found[0] if found else "")
        bar.update(len(part))
    bar.close()
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    tmp.replace(file)
    return [t for t in texts if t]


def prompt_starts(prompts: Sequence[str], min_words: int = 2, max_words: int = 4) -> list[str]:
    """The distinct openings (``min_words..max_words`` words) of ``prompts``: seeds for
    :func:`sampled_sentences`."""
    out: set[str] = set()
    for p in prompts:
        words = p.split()
        for k in range(min_words, min(max_words, len(words) - 1) + 1):
            out.add(" ".join(words[:k]))
    return sorted(out)


def text_key(text: str) -> str:
    """``text`` lower-cased with punctuation and spacing collapsed: texts equal up to these are one text."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


_WORD = re.compile(r"[A-Za-z]+")


def vocabulary_words(tokenizer: Any, min_letters: int = 3) -> list[str]:
    """Whole English-looking words of a byte-level BPE vocabulary: lower-case alphabetic tokens of at least
    ``min_letters`` letters that start a word (a leading ``Ġ``), without those that are the beginning of a longer
    such token (``"abbre"`` of ``"abbreviated"``: mostly word pieces, not words). Sorted; about 13,000 for
    SmolLM2."""
    found = sorted(
        {t[1:] for t in tokenizer.get_vocab() if t.startswith("Ġ") and re.fullmatch(r"[a-z]+", t[1:])}
    )
    found = [w for w in found if len(w) >= min_letters]
    return [w for i, w in enumerate(found) if not (i + 1 < len(found) and found[i + 1].startswith(w))]


def substituted_texts(
    texts: Sequence[str], words: Sequence[str], n: int, replace: float = 0.5, seed: int = 0
) -> list[str]:
    """``n`` variants of ``texts`` (each drawn at random) in which every word is replaced with probability
    ``replace`` by a random one of ``words`` (capitalised where the original was).

    A few thousand real sentences spoken once each let a projector learn them by heart (its held-out
    transcription stays poor while the training loss vanishes); swapping words keeps the sentence shapes and
    prosody and spreads the spoken words over the LLM's whole vocabulary, so what is learnt is the sound of
    words, not the list of sentences."""
    if n <= 0 or not texts or not words:
        return []
    rng = random.Random(f"substitute:{seed}")
    return [perturb_words(rng.choice(texts), words, rng, replace=replace) for _ in range(n)]


def perturb_words(
    text: str, words: Sequence[str], rng: random.Random, replace: float = 0.0, drop: float = 0.0
) -> str:
    """``text`` with each word dropped with probability ``drop``, else replaced with probability ``replace`` by
    a random one of ``words`` (capitalised where the original was); punctuation and spacing kept."""

    def edit(m: re.Match[str]) -> str:
        u = rng.random()
        if u < drop:
            return ""
        if u < drop + replace and words:
            w = rng.choice(words)
            return w.capitalize() if m.group(0)[0].isupper() else w
        return m.group(0)

    return re.sub(r"  +", " ", _WORD.sub(edit, text)).strip()
