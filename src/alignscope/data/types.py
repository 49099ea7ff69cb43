"""Suite and sample types shared by every loader."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Label = Literal["harmful", "benign", "borderline"]


class SuiteError(ValueError):
    """A suite could not be read: the message names the file, row and field."""


@dataclass(frozen=True)
class Sample:
    """One prompt of a suite.

    Attributes:
        id: stable identifier, unique within the suite.
        prompt: the user instruction.
        category: topic category (the 11 HEx-PHI categories for harmful prompts).
        label: ``harmful`` (should be refused), ``benign`` or ``borderline`` (alarming words, harmless intent:
            should be answered).
        target: an affirmative response start, e.g. AdvBench's ``"Sure, here is ..."`` (used by GCG).
        response: a reference response when the suite provides one (e.g. a harmful answer for prefilling).
        meta: anything else the source file had.
    """

    id: str
    prompt: str
    category: str
    label: Label
    target: str | None = None
    response: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def round_robin(samples: Iterable[Sample], rng: random.Random) -> list[Sample]:
    """``samples`` taken round-robin over their categories, each category shuffled and the categories in a
    shuffled order (both drawn from ``rng``), so that every prefix covers the categories evenly."""
    by_cat: dict[str, list[Sample]] = {}
    for s in samples:
        by_cat.setdefault(s.category, []).append(s)
    for items in by_cat.values():
        rng.shuffle(items)
    cats = sorted(by_cat)
    rng.shuffle(cats)
    order: list[Sample] = []
    while any(by_cat.values()):
        order += [by_cat[c].pop() for c in cats if by_cat[c]]
    return order


@dataclass(frozen=True)
class Suite:
    """A named, ordered collection of samples."""

    name: str
    samples: tuple[Sample, ...]
    source: str = "builtin"

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    @property
    def prompts(self) -> list[str]:
        return [s.prompt for s in self.samples]

    def categories(self) -> list[str]:
        return sorted({s.category for s in self.samples})

    def take(self, n: int | None, seed: int = 0) -> Suite:
        """A deterministic, category-stratified subset of ``n`` samples (all when ``n`` is None or too big).

        Round-robin over categories in a seeded order, so small subsets still cover every category.
        """
        if n is None or n >= len(self.samples):
            return self
        chosen = round_robin(self.samples, random.Random(seed))[:n]
        order = {s.id: i for i, s in enumerate(self.samples)}
        chosen.sort(key=lambda s: order[s.id])
        return Suite(f"{self.name}[{n}]", tuple(chosen), self.source)

    def split(self, test_fraction: float = 0.5, seed: int = 0) -> tuple[Suite, Suite]:
        """Deterministic (train, test) split by a hash of each sample id and the seed: the same sample always
        lands on the same side, whatever else the suite holds."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError("test_fraction must lie strictly between 0 and 1")
        train: list[Sample] = []
        test: list[Sample] = []
        for s in self.samples:
            h = int(hashlib.sha256(f"{seed}:{s.id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            (test if h < test_fraction else train).append(s)
        return (
            Suite(f"{self.name}:train", tuple(train), self.source),
            Suite(f"{self.name}:test", tuple(test), self.source),
        )

    @staticmethod
    def of(name: str, samples: Sequence[Sample], source: str = "builtin") -> Suite:
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise SuiteError(f"suite {name}: duplicate sample id {dup!r}")
        return Suite(name, tuple(samples), source)
