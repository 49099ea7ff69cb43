"""One way to turn experiment configs (frozen dataclasses) into JSON and back, name them, and set them.

Every experiment, recipe and build config inherits :class:`ConfigIO`:

* ``to_dict()``: JSON-ready (tuples as lists, paths as strings), so a recorded config compares equal to the live
  one on resume;
* ``from_dict(d)``: rebuilds the config, turning lists back into tuples and rejecting unknown keys with a
  message naming them;
* ``replace(**changes)`` and ``digest(exclude)``: a copy with changes, and a short stable hash of the settings
  (for cache keys and run identities).

:func:`parse_assignments` and :func:`load_config_file` implement the CLI's ``--set KEY=VALUE`` and
``--config FILE`` for any config. :class:`DeviceSettings` and :class:`RunSettings` hold the fields most
experiments share (where models run, the seed and the batch size), documented once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="ConfigIO")


class ConfigError(ValueError):
    """A config file, a ``--set`` assignment or a config dict that cannot make the config."""


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, paths as strings and nested configs as dicts, recursively."""
    if isinstance(value, ConfigIO):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def _tuple_field(annotation: Any) -> bool:
    """Whether a field's type is a tuple (or an optional tuple)."""
    if typing.get_origin(annotation) is tuple:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_tuple_field(a) for a in typing.get_args(annotation))
    return False


def _nested_config(annotation: Any) -> type[ConfigIO] | None:
    """The config class of a field whose type is a nested config (or an optional one), else None."""
    candidates = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    for c in candidates:
        if isinstance(c, type) and issubclass(c, ConfigIO):
            return c
    return None


def _field_value(annotation: Any, value: Any) -> Any:
    nested = _nested_config(annotation)
    if nested is not None and isinstance(value, Mapping):
        return nested.from_dict(value)
    return _tuples(value) if _tuple_field(annotation) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


class ConfigIO:
    """Mixin for frozen config dataclasses: ``to_dict``, ``from_dict``, ``replace``, ``digest``, ``preflight``."""

    suite_fields: ClassVar[tuple[str, ...]] = ()
    """Fields holding suite specs (a string or a tuple of them): :meth:`preflight` resolves them."""

    def preflight(self) -> None:
        """The checks that need more than the field values but no model: every suite spec resolves (a
        misspelt built-in, a missing file or a malformed row raises :class:`~alignscope.data.types.SuiteError`
        naming it). The CLI calls this before it makes a run directory or loads a model."""
        from alignscope.data import load_suite

        for name in self.suite_fields:
            value = getattr(self, name)
            for spec in (value,) if isinstance(value, str | Path) else value or ():
                load_suite(spec)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: jsonable(getattr(self, f.name)) for f in config_fields(type(self))}

    @classmethod
    def from_dict(cls: type[C], d: Mapping[str, Any]) -> C:
        """Build the config from a dict (JSON), lists becoming tuples where the field is a tuple."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} field(s): {', '.join(unknown)} (known: {', '.join(sorted(fields))})"
            )
        hints = typing.get_type_hints(cls)
        values = {k: _field_value(hints.get(k), v) for k, v in d.items()}
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"{cls.__name__}: {e}") from e

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def digest(self, exclude: Iterable[str] = ()) -> str:
        """12 hex digits of the SHA-256 of the settings (minus ``exclude``), stable across runs."""
        skip = set(exclude)
        data = {k: v for k, v in self.to_dict().items() if k not in skip}
        return digest_of(data)


def config_fields(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The dataclass fields of ``cls``, its own first, then each base's in method resolution order.

    Dataclass inheritance puts a base's fields first; shared settings (:class:`RunSettings`) read better last,
    in ``to_dict`` and in the generated CLI options, as they stood before they moved into a base."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    order: dict[str, None] = {}
    for klass in cls.__mro__:
        for name in vars(klass).get("__annotations__", {}):
            if name in by_name:
                order.setdefault(name)
    return [by_name[name] for name in order]


@dataclass(frozen=True, kw_only=True)
class DeviceSettings(ConfigIO):
    """Where an experiment's local models run.

    Attributes:
        device: cuda, mps or cpu (None: the best available).
        dtype: float32, bfloat16 or float16 (None: by device).
    """

    device: str | None = None
    dtype: str | None = None


@dataclass(frozen=True, kw_only=True)
class RunSettings(DeviceSettings):
    """The settings shared by experiments that draw prompt subsets and generate in batches.

    Attributes:
        seed: seeds the prompt subsets and any sampling.
        batch_size: generation batch size.
    """

    seed: int = 0
    batch_size: int = 16


def digest_of(data: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of ``data`` as sorted JSON."""
    blob = json.dumps(jsonable(dict(data)), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def parse_assignments(items: Iterable[str]) -> dict[str, Any]:
    """``["epochs=3", "suite=harmful", "ks=[5,10]"]`` -> ``{"epochs": 3, "suite": "harmful", "ks": [5, 10]}``:
    each value is read as JSON when it is JSON, else kept as the string."""
    values: dict[str, Any] = {}
    for item in items:
        pair = read_assignment(item)
        if pair is None:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        values[pair[0]] = pair[1]
    return values


def read_assignment(item: str, strip_text: bool = False) -> tuple[str, Any] | None:
    """``"ks=[5,10]"`` -> ``("ks", [5, 10])``: the key stripped and the value read as JSON when it is JSON,
    else kept as the text after ``=`` (stripped with ``strip_text``); None when ``item`` is not KEY=VALUE."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        return None
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw.strip() if strip_text else raw


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path`` (``--config FILE``); errors name the file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config {p}: no such file") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"--config {p}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p}: expected a JSON object, got {type(data).__name__}")
    return data
