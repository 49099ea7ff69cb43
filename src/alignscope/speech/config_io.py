"""The shared :class:`~alignscope.config_io.ConfigIO` for speech configs, raising :class:`SpeechError`.

Speech commands and callers catch :class:`~alignscope.speech.errors.SpeechError` for bad speech settings, so a
dict that cannot make a speech config raises one (naming the unknown settings in the config's own words) rather
than the generic :class:`~alignscope.config_io.ConfigError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from alignscope.config_io import ConfigError, ConfigIO
from alignscope.speech.errors import SpeechError

S = TypeVar("S", bound="SpeechConfigIO")

__all__ = ["SpeechConfigIO"]


class SpeechConfigIO(ConfigIO):
    """:class:`~alignscope.config_io.ConfigIO` whose ``from_dict`` raises :class:`SpeechError`."""

    settings_name: ClassVar[str] = "speech"
    """What the settings are called in the unknown-settings error (``"unknown speech build settings: x"``)."""

    @classmethod
    def from_dict(cls: type[S], d: Mapping[str, Any]) -> S:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(d) - known)
        if unknown:
            raise SpeechError(
                f"unknown {cls.settings_name} settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        try:
            return super().from_dict(d)
        except ConfigError as e:
            raise SpeechError(str(e)) from None
