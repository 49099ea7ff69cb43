"""Adversarial training data from GCG: harmful prompts carrying found suffixes, answered with refusals.

The records are chat JSONL in the schema of :mod:`alignscope.training` (``{"messages": [...], "group":
"safety", ...}``), so any recipe that takes ``data=`` trains on them, e.g.::

    recs = adversarial_records(run.records("gcg_eval"))          # or run.records("gcg")
    write_chat_jsonl("adv.jsonl", recs + utility)                  # utility: the model's own benign answers
    train("safety-sft", SafetySFTConfig(data="adv.jsonl"))

Then run GCG afresh on the trained model (new suffixes, not the ones trained on) to measure the change in ASR.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from alignscope.attacks.gcg_ops import PLACEHOLDER, fill_suffix
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
        successful_only: with ``gcg_eval`` records, keep only the prompts the judge called harmful (the
            suffixes that worked).
        seed: seeds the choice of refusals.

    Returns:
        :class:`alignscope.training.ChatRecord` objects with ``group="safety"`` and the suffix in
        ``gcg_suffix`` (empty for clean prompts).
    """
    rng = random.Random(seed)
    attacked: list[tuple[str, str, str, str]] = []  # (id, behaviour, suffix, user turn with the suffix)
    for r in records:
        if r.get("stage") == "gcg":
            suffix = str(r["suffix"])
            for sid, prompt in zip(r["sample_ids"], r["prompts"], strict=True):
                user = fill_suffix(f"{prompt} {PLACEHOLDER}", suffix)[0]["content"]  # the default template
                attacked.append((sid, prompt, suffix, user))
        elif r.get("stage") == "gcg_eval" and r.get("suffix"):
            if successful_only and not r["verdict"]["harmful"]:
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
