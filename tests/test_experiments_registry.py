"""Every registered experiment resolves, is importable from the package root in one hop, and its config
round-trips through ``to_dict`` / ``from_dict`` (JSON included)."""

from __future__ import annotations

import importlib
import json

import pytest

import alignscope
from alignscope.experiments import EXPERIMENTS, report_sections


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_experiment_resolves_and_imports_from_the_root(name: str) -> None:
    exp = EXPERIMENTS[name]
    config_cls, runner, result_cls = exp.config_class, exp.runner, exp.result_class
    config_name, run_name, result_name = exp.names
    root = importlib.import_module("alignscope")
    assert getattr(root, config_name) is config_cls
    assert getattr(root, run_name) is runner
    assert getattr(root, result_name) is result_cls
    assert {config_name, run_name, result_name} <= set(alignscope.__all__)
    assert callable(runner) and hasattr(result_cls, "to_dict")


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_result_has_from_dict(name: str) -> None:
    assert hasattr(EXPERIMENTS[name].result_class, "from_dict")


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_config_round_trips(name: str) -> None:
    cls = EXPERIMENTS[name].config_class
    config = cls()
    data = json.loads(json.dumps(config.to_dict()))
    assert cls.from_dict(data) == config
    assert cls.from_dict(data).to_dict() == data


def test_one_hop_imports() -> None:
    from alignscope import (  # noqa: F401
        FinetuneAttackConfig,
        PrefillConfig,
        SafetyLayersConfig,
        ShallowDeepConfig,
        run_finetune_attack,
        run_prefill,
        run_safety_layers,
        run_shallow_vs_deep,
    )


def test_report_sections_resolve() -> None:
    assert all(callable(s) for s in report_sections())


def test_shared_run_settings_keep_their_help_and_place() -> None:
    """Fields inherited from RunSettings/DeviceSettings get their help from the base's docstring unless the
    config documents them itself, and stay last in to_dict and in the generated options."""
    from alignscope.analysis.safety_layers import SafetyLayersConfig
    from alignscope.cli.generate import field_docs
    from alignscope.config_io import DeviceSettings
    from alignscope.evaluate import EvaluateConfig

    docs = field_docs(EvaluateConfig)
    assert docs["device"].startswith("cuda, mps or cpu") and docs["batch_size"] == "generation batch size."
    assert field_docs(SafetyLayersConfig)["batch_size"] == "prompts per forward pass."
    assert list(EvaluateConfig().to_dict())[-4:] == ["seed", "batch_size", "device", "dtype"]
    shared = [e.config_class for e in EXPERIMENTS.values() if issubclass(e.config_class, DeviceSettings)]
    assert len(shared) >= 8
    for cls in shared:
        assert {"device", "dtype"} <= set(field_docs(cls)), cls.__name__
