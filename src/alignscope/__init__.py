"""alignscope: measure, attack and deepen the safety alignment of language models."""

__version__ = "0.1.0"
