"""The error type every speech module raises for bad input."""

from __future__ import annotations


class SpeechError(ValueError):
    """Audio, weights or a manifest could not be used: the message names the file (and line or field)."""
