"""The error type every speech module raises for bad input."""

from __future__ import annotations

from alignscope.validation import OptionError


class SpeechError(ValueError):
    """Audio, weights or a manifest could not be used: the message names the file (and line or field)."""


class SpeechOptionError(SpeechError, OptionError):
    """A speech setting out of its allowed range (both a :class:`SpeechError` and an
    :class:`~alignscope.validation.OptionError`)."""
