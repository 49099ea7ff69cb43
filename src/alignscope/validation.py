"""Checks of numeric and structural settings, shared by the config dataclasses and the CLI.

A config checks its fields in ``__post_init__`` (so a notebook user gets the same error as the CLI), and the CLI
builds its configs, or calls these checks for options no config holds, before it loads a model or creates a
run directory. Every check raises :class:`OptionError`, a ``ValueError`` whose message names the setting, the
allowed range and the value given::

    >>> at_least("n_safety", 1, 2)
    Traceback (most recent call last):
    ...
    alignscope.validation.OptionError: n_safety must be >= 2, got 1

Configs name their fields (``AuditConfig.n_safety``); the CLI prints the option instead (``--n-safety``),
see :meth:`OptionError.renamed`. A value of None passes every check: it means "not set" (all prompts, the
default), and the type hints say where None is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from typing import Any

__all__ = [
    "FieldChecks",
    "OptionError",
    "at_least",
    "each_at_least",
    "each_finite",
    "finite",
    "in_range",
    "non_empty",
    "one_of",
    "positive",
]


class OptionError(ValueError):
    """A setting is out of its allowed range.

    Attributes:
        option: the setting as named where it was checked (``"AuditConfig.n_safety"``, ``"--n"``).
        requirement: what it must satisfy (``"must be >= 2"``).
        value: the value given.
    """

    def __init__(self, option: str, requirement: str, value: Any) -> None:
        self.option, self.requirement, self.value = option, requirement, value
        super().__init__(f"{option} {requirement}, got {value!r}")

    @property
    def field(self) -> str:
        """The bare field name (``n_safety`` for ``AuditConfig.n_safety``)."""
        return self.option.rsplit(".", 1)[-1]

    def renamed(self, option: str) -> OptionError:
        """The same error naming the setting ``option`` (e.g. the CLI flag of a config field)."""
        return OptionError(option, self.requirement, self.value)


def _number(option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(option, "must be a number", value)
    return float(value)


def at_least(option: str, value: float | None, minimum: float) -> None:
    """``value >= minimum`` (counts, sizes, token budgets)."""
    if value is not None and not _number(option, value) >= minimum:
        raise OptionError(option, f"must be >= {minimum:g}", value)


def positive(option: str, value: float | None) -> None:
    """``value > 0`` and finite (learning rates, step sizes, scales)."""
    if value is not None and not 0 < _number(option, value) < math.inf:
        raise OptionError(option, "must be a finite number > 0", value)


def finite(option: str, value: float | None) -> None:
    """A finite number (SNRs in dB, where any real value is meaningful but inf and nan are not)."""
    if value is not None and not math.isfinite(_number(option, value)):
        raise OptionError(option, "must be a finite number", value)


def in_range(
    option: str,
    value: float | None,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """``low <= value <= high``, either end open on request: ``in_range("top_p", p, 0, 1, low_open=True)``
    is ``0 < p <= 1``."""
    if value is None:
        return
    v = _number(option, value)
    ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise OptionError(option, f"must be in {interval}", value)


def non_empty(option: str, values: Collection[Any] | None) -> None:
    """At least one value (a list option such as ``--ks`` or ``--budget``)."""
    if values is not None and len(values) == 0:
        raise OptionError(option, "needs at least one value", list(values))


def each_at_least(option: str, values: Iterable[float] | None, minimum: float) -> None:
    """A non-empty list whose every value is ``>= minimum`` (``--ks``: non-negative token counts)."""
    if values is None:
        return
    items = list(values)
    non_empty(option, items)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int | float) or not v >= minimum:
            raise OptionError(option, f"needs values >= {minimum:g}", items)


def each_finite(option: str, values: Iterable[float] | None) -> None:
    """Every value a finite number (a list of SNRs)."""
    for v in values or ():
        finite(option, v)


def one_of(option: str, value: Any, choices: Collection[Any]) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise OptionError(option, f"must be one of {', '.join(map(str, choices))}", value)


class FieldChecks:
    """The checks above (in the same order) applied to fields of a config, named ``Class.field`` in errors::

        def __post_init__(self) -> None:
            check = FieldChecks(self)
            check.at_least(1, "n_harmful", "batch_size")
            check.in_range("top_p", 0, 1, low_open=True)

    ``error`` is the class raised, a subclass of :class:`OptionError` (e.g. one that is also a package's own
    error type, so callers catching that keep working).
    """

    def __init__(self, config: Any, error: type[OptionError] = OptionError) -> None:
        self.config, self.owner, self.error = config, type(config).__name__, error

    def _check(self, check: Callable[..., None], names: Iterable[str], *args: Any, **kwargs: Any) -> None:
        """``check`` applied to each of the fields ``names``; an error names the field as ``Class.field``."""
        for name in names:
            option = f"{self.owner}.{name}"
            try:
                check(option, getattr(self.config, name), *args, **kwargs)
            except OptionError as e:
                raise self.error(e.option, e.requirement, e.value) from None

    def at_least(self, minimum: float, *names: str) -> None:
        self._check(at_least, names, minimum)

    def positive(self, *names: str) -> None:
        self._check(positive, names)

    def finite(self, *names: str) -> None:
        self._check(finite, names)

    def in_range(
        self, name: str, low: float, high: float, *, low_open: bool = False, high_open: bool = False
    ) -> None:
        self._check(in_range, [name], low, high, low_open=low_open, high_open=high_open)

    def non_empty(self, *names: str) -> None:
        self._check(non_empty, names)

    def each_at_least(self, minimum: float, *names: str) -> None:
        self._check(each_at_least, names, minimum)

    def each_finite(self, *names: str) -> None:
        self._check(each_finite, names)

    def one_of(self, name: str, choices: Collection[Any]) -> None:
        self._check(one_of, [name], choices)
