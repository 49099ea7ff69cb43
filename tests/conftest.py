"""Shared fixtures: the embedded model once per session for slow tests, the public data directory, tiny models
(in memory and saved), and a private cache on one thread for the heavier pipelines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`tiny` saved to a model directory (read-only: shared by every test of the session)."""
    from alignscope.testing import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture()
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``$ALIGNSCOPE_CACHE`` in the test's own directory: nothing cached by another test (or a real run) is
    reused, and nothing the test caches outlives it."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ALIGNSCOPE_CACHE", str(cache))
    return cache


@pytest.fixture()
def private_cache_one_thread(private_cache: Path):
    """:func:`private_cache` and torch on one thread (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
