"""The experiment scaffolding: default config, one shared pool, the report rebuilt last, the registry's
signature shown for the decorated function."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import pytest

from alignscope.config_io import DeviceSettings
from alignscope.models.pool import ModelPool
from alignscope.runs import experiment as scaffolding
from alignscope.runs.experiment import experiment
from alignscope.runs.store import RunDir


@dataclass(frozen=True)
class _Config(DeviceSettings):
    n: int = 1


def _body(config: _Config, run: RunDir | None, pool: ModelPool, progress: bool) -> dict[str, Any]:
    """Returns what it was given."""
    return {"config": config, "run": run, "pool": pool, "progress": progress}


@pytest.mark.parametrize("report", [True, False])
def test_experiment_fills_in_the_scaffolding(monkeypatch: pytest.MonkeyPatch, report: bool) -> None:
    rebuilt: list[Any] = []
    monkeypatch.setattr(scaffolding, "rebuild_report", rebuilt.append)
    runner = experiment(_Config, report=report)(_body)
    got = runner()
    assert got["config"] == _Config() and got["run"] is None and got["progress"] is True
    assert isinstance(got["pool"], ModelPool)
    pool = ModelPool()
    got = runner(_Config(n=3), "RUN", models=pool, progress=False)  # type: ignore[arg-type]
    assert got["config"].n == 3 and got["pool"] is pool and got["progress"] is False
    assert rebuilt == ([None, "RUN"] if report else [])


def test_experiment_shows_the_registry_signature() -> None:
    runner = experiment(_Config)(_body)
    assert (runner.__name__, runner.__doc__, runner.__module__) == ("_body", _body.__doc__, __name__)  # type: ignore[attr-defined]
    params = inspect.signature(runner).parameters
    assert list(params) == ["config", "run", "models", "progress"]
    assert params["models"].kind is inspect.Parameter.KEYWORD_ONLY
