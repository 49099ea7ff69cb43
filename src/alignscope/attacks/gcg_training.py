"""Adversarial training data from GCG: harmful prompts carrying found suffixes, answered with refusals.

The records are chat JSONL in the schema of :mod:`alignscope.training` (``{"messages": [...], "group":
"safety", ...}``), so any recipe that takes ``data=`` trains on them, e.g.::

    recs = adversarial_records(run.records("gcg_eval"))          # or run.records("gcg")
    write_chat_jsonl("adv.jsonl", recs + utility)                  # utility: the model's own benign answers
    train("safety-sft", SafetySFTConfig(data="adv.jsonl"))

Then run GCG afresh on the trained model (new suffixes, not the ones trained on) to measure the change in ASR.
The ``adversarial-sft`` recipe does this in one step: :func:`suffix_pool` collects the suffixes of GCG runs and
:func:`suffixed_refusal_records` applies them to the harmful train prompts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from alignscope.attacks.gcg_ops import PLACEHOLDER, fill_suffix
from alignscope.data.types import Sample
from alignscope.judges.outcomes import success_flags
from alignscope.runs.store import RunError, iter_jsonl_records
from alignscope.training.chat_data import ChatRecord
from alignscope.training.refusals import REFUSALS


def adversarial_records(
    records: Iterable[dict[str, Any]],
    refusals_per_prompt: int = 1,
    include_clean: bool = True,
    successful_only: bool = False,
    seed: int = 0,
) -> list[ChatRecord]:
    """Refusal-target training records from GCG run records.

    Args:
        records: ``gcg`` records (one optimisation: its suffix on each of its behaviours) or ``gcg_eval``
            records (one attacked prompt each, with its verdict); other stages are ignored.
        refusals_per_prompt: refusal texts per attacked prompt (different ones, from
            :data:`alignscope.training.refusals.REFUSALS`).
        include_clean: also add the behaviour without its suffix (once per behaviour), so the model does not
            learn to refuse only when gibberish follows.
        successful_only: with ``gcg_eval`` records, keep only the prompts the attack succeeded on (the
            suffixes that worked): judged harmful where the judge judges harm, else not refused.
        seed: seeds the choice of refusals.

    Returns:
        :class:`alignscope.training.ChatRecord` objects with ``group="safety"`` and the suffix in
        ``gcg_suffix`` (empty for clean prompts).
    """
    rng = random.Random(seed)
    records = list(records)
    evals = [r for r in records if r.get("stage") == "gcg_eval" and r.get("suffix")]
    _, worked = success_flags(evals) if evals else ("", [])
    succeeded = {id(r) for r, ok in zip(evals, worked, strict=True) if ok}
    attacked: list[tuple[str, str, str, str]] = []  # (id, behaviour, suffix, user turn with the suffix)
    for r in records:
        if r.get("stage") == "gcg":
            suffix = str(r["suffix"])
            for sid, prompt in zip(r["sample_ids"], r["prompts"], strict=True):
                user = fill_suffix(f"{prompt} {PLACEHOLDER}", suffix)[0]["content"]  # the default template
                attacked.append((sid, prompt, suffix, user))
        elif r.get("stage") == "gcg_eval" and r.get("suffix"):
            if successful_only and id(r) not in succeeded:
                continue
            attacked.append(
                (str(r["sample_id"]), str(r["prompt"]), str(r["suffix"]), str(r["attack_prompt"]))
            )
    out: list[ChatRecord] = []
    seen: set[tuple[str, str]] = set()
    clean_done: set[str] = set()
    for sid, prompt, suffix, user in attacked:
        if (sid, suffix) in seen:
            continue
        seen.add((sid, suffix))
        out += _refusals(user, {"group": "safety", "id": sid, "gcg_suffix": suffix}, refusals_per_prompt, rng)
        if include_clean and sid not in clean_done:
            clean_done.add(sid)
            out += _refusals(
                prompt, {"group": "safety", "id": sid, "gcg_suffix": ""}, refusals_per_prompt, rng
            )
    return out


def _refusals(user: str, meta: dict[str, Any], n: int, rng: random.Random) -> Sequence[ChatRecord]:
    texts = rng.sample(REFUSALS, min(n, len(REFUSALS)))
    return [
        ChatRecord([{"role": "user", "content": user}, {"role": "assistant", "content": t}], dict(meta))
        for t in texts
    ]


class GCGRecordsError(ValueError):
    """GCG records could not be read (a missing run directory, a malformed line)."""


def read_gcg_records(path: str | Path) -> list[dict[str, Any]]:
    """The ``gcg`` stage records of a run directory of ``alignscope attack gcg`` (its ``samples.jsonl``) or of
    a JSONL file of such records."""
    p = Path(path)
    file = p / "samples.jsonl" if p.is_dir() else p
    if not file.is_file():
        raise GCGRecordsError(
            f"no GCG records at {path}: expected a run directory of 'alignscope attack gcg'"
        )
    try:  # the run store's reader: a torn last record (a killed run) is skipped, not an error
        out = [rec for rec in iter_jsonl_records(file) if rec.get("stage") == "gcg"]
    except RunError as e:
        raise GCGRecordsError(str(e)) from None
    if not out:
        raise GCGRecordsError(f"{file} holds no 'gcg' records (no finished optimisation)")
    return out


def suffix_pool(records: Iterable[dict[str, Any]], trajectory: int = 0) -> list[str]:
    """Distinct suffixes of ``gcg`` records, in order: each optimisation's best suffix, then the suffixes of its
    last ``trajectory`` steps."""
    pool: dict[str, None] = {}
    for r in records:
        if r.get("stage") != "gcg":
            continue
        pool[str(r["suffix"])] = None
        steps = [str(s) for s in r.get("strings", [])]
        for s in steps[len(steps) - trajectory :] if trajectory > 0 else []:
            pool[s] = None
    return [s for s in pool if s.strip()]


def suffixed_refusal_records(
    samples: Sequence[Sample], suffixes: Sequence[str], per_prompt: int = 2, seed: int = 0
) -> list[ChatRecord]:
    """Each harmful prompt with ``per_prompt`` different suffixes from ``suffixes`` (in the default GCG user
    turn, ``"{prompt} {optim_str}"``), answered with a refusal."""
    if not suffixes:
        raise GCGRecordsError("the suffix pool is empty")
    rng = random.Random(seed)
    out: list[ChatRecord] = []
    for s in samples:
        for suffix in rng.sample(list(suffixes), min(per_prompt, len(suffixes))):
            user = fill_suffix(f"{s.prompt} {PLACEHOLDER}", suffix)[0]["content"]
            out += _refusals(user, {"group": "safety", "id": s.id, "gcg_suffix": suffix}, 1, rng)
    return out
