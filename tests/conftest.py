"""Shared fixtures: the embedded model once per session for slow tests, and the public data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded default (SmolLM2-135M-Instruct), loaded once for every slow test."""
    from alignscope.models import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"public data not found at {SHARED_DATA} (a fresh clone has no ../shared)")
    return SHARED_DATA


@pytest.fixture()
def tiny():
    """A tiny random 2-layer Llama with a ChatML template."""
    from alignscope.testing import tiny_local_model

    return tiny_local_model(seed=0)
