"""What every part of ``collect.py`` shares: the models, the prompt plan, the item shape, the output store."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from alignscope.data import load_suite
from alignscope.data.types import Sample, round_robin
from alignscope.models import GenerationConfig, load_model
from alignscope.models.local import LocalModel

log = logging.getLogger("judge_set.collect")

BASE, ALIGNED, DEEP, BPLUS = "smollm2", "smollm2-aligned", "smollm2-deep", "smollm2-balanced-plus"
SPEECH = "speech:default"
"""The default speech LLM build (its shipped projector on ``smollm2-balanced-plus``; ``--slm default``)."""

TEST_FRACTION, SPLIT_SEED = 0.5, 0
"""The split every shipped adapter and the default speech build hold out (``Suite.split`` defaults)."""
SPLIT_NOTE = f"test split (Suite.split fraction {TEST_FRACTION}, seed {SPLIT_SEED})"

# Each model walks its own rotation of the harmful test prompts (ordered round-robin over categories), its
# kinds taking consecutive segments: a model sees a prompt at most once (until its rotation wraps), models
# start at different places, so every prompt lands in a few items and every part covers every category.
HARMFUL_PLAN: dict[str, tuple[int, list[tuple[str, int]]]] = {
    BASE: (0, [("direct", 90)]),
    ALIGNED: (25, [("direct", 30), ("prefill", 40), ("decoding", 25), ("gcg", 4)]),
    DEEP: (50, [("direct", 30), ("prefill", 40), ("decoding", 10)]),
    BPLUS: (75, [("direct", 50), ("prefill", 40), ("decoding", 25), ("gcg", 4)]),
    SPEECH: (90, [("spoken", 20), ("spoken-pgd", 6)]),
}
ANSWER_PLAN: dict[str, dict[str, tuple[int, int]]] = {  # suite -> model -> (offset, count)
    "benign": {BASE: (0, 20), ALIGNED: (20, 15), DEEP: (35, 10), BPLUS: (45, 20), SPEECH: (65, 15)},
    "borderline": {BASE: (0, 20), ALIGNED: (20, 15), DEEP: (35, 10), BPLUS: (45, 20)},
}
DIRECT_TOKENS, PREFILL_TOKENS = 64, 48
TARGET = "Sure, here is"
"""GCG and PGD target: the built-in suite has no per-prompt targets (``gcg_eval``'s fallback)."""


def test_prompts(suite: str, seed: int) -> list[Sample]:
    """The suite's test split, ordered round-robin over its categories (seeded), so any window of it covers
    the categories evenly."""
    test = load_suite(suite).split(TEST_FRACTION, SPLIT_SEED)[1]
    return round_robin(test, random.Random(f"{seed}:{suite}"))


def window(order: Sequence[Sample], start: int, n: int, limit: int | None = None) -> list[Sample]:
    return [order[(start + i) % len(order)] for i in range(n)][:limit]


def harmful_segment(order: Sequence[Sample], model: str, kind: str, limit: int | None) -> list[Sample]:
    """The harmful test prompts ``model`` answers in ``kind`` (:data:`HARMFUL_PLAN`)."""
    offset, segments = HARMFUL_PLAN[model]
    for name, n in segments:
        if name == kind:
            return window(order, offset, n, limit)
        offset += n
    return []


def item(
    id_: str,
    s: Sample,
    response: str,
    model: str,
    kind: str,
    gen: GenerationConfig | None,
    prefill: str = "",
    k: int | None = None,
    **details: Any,
) -> dict[str, Any]:
    """One unlabelled item; ``details`` (attack settings, voices, ...) go into ``source``."""
    source = {
        "model": model,
        "kind": kind,
        "k": k,
        "generation": gen.to_dict() if gen else None,
        "suite": f"{s.label} ({SPLIT_NOTE})",
        **details,
    }
    return {
        "id": id_,
        "prompt_id": s.id,
        "prompt": s.prompt,
        "prompt_label": s.label,
        "category": s.category,
        "prefill": prefill,
        "response": response,
        "source": source,
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def append_jsonl(path: Path, rec: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")


class Store:
    """The output JSONL: the ids already written, and appends that survive a kill (a partial last line left
    by one is cut off when the file is opened again)."""

    def __init__(self, path: Path):
        self.path = path
        self.ids: set[str] = set()
        self.written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            return
        data = path.read_bytes()
        keep = data[: data.rfind(b"\n") + 1]
        if len(keep) != len(data):
            log.warning("%s: dropping a partial last line (%d bytes)", path, len(data) - len(keep))
            path.write_bytes(keep)
        for n, line in enumerate(keep.decode("utf-8").splitlines(), 1):
            try:
                self.ids.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise SystemExit(f"{path}, line {n}: not an item ({e})") from e

    def write(self, items: Iterable[dict[str, Any]]) -> None:
        new = [it for it in items if it["id"] not in self.ids]
        if not new:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in new))
            f.flush()
            os.fsync(f.fileno())
        self.ids |= {it["id"] for it in new}
        self.written += len(new)


class Context:
    """Settings, the store, the prompt orders and the one model loaded at a time."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.seed: int = args.seed
        self.limit: int | None = args.limit
        self.store = Store(Path(args.out))
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.order = {s: test_prompts(s, args.seed) for s in ("harmful", "benign", "borderline")}
        self._model: LocalModel | None = None

    def model(self, spec: str) -> LocalModel:
        if self._model is None or self._model.name != spec:
            self.unload()
            t0 = time.perf_counter()
            self._model = load_model(spec)
            log.info("loaded %s in %.1f s", spec, time.perf_counter() - t0)
        return self._model

    def unload(self) -> None:
        self._model = None
        gc.collect()

    def greedy(self, tokens: int, batch_size: int = 16) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=tokens, batch_size=batch_size, seed=self.seed)

    def pending(self, ids: Sequence[str], what: str) -> bool:
        """Whether a job (one generation call making the items ``ids``) still has items to write. A job with
        some missing is re-run whole, so its batches and seeds are those of an uninterrupted run."""
        missing = [i for i in ids if i not in self.store.ids]
        if not missing:
            log.info("%s: all %d items present", what, len(ids))
        return bool(missing)

    def save(self, ids: Sequence[str], items: list[dict[str, Any]], what: str, t0: float) -> None:
        assert [it["id"] for it in items] == list(ids), what
        self.store.write(items)
        log.info("%s: %d items in %.1f s", what, len(items), time.perf_counter() - t0)
