"""The speech experiments have the shape of every experiment: a frozen config and a typed result that both survive
``to_dict`` -> JSON -> ``from_dict``, registered with their commands."""

from __future__ import annotations

import json
from typing import Any

import pytest

from alignscope.experiments import EXPERIMENTS
from alignscope.speech.attacks.config import SpokenAttackConfig
from alignscope.speech.attacks.experiments import (
    AudioPGDAttackConfig,
    AudioTransferConfig,
    SpokenAttackResult,
)
from alignscope.speech.errors import SpeechError
from alignscope.speech.evaluation.held_out import SpeechEvalConfig, SpeechEvalResult
from alignscope.speech.evaluation.speechguard import SpeechGuardConfig, SpeechGuardResult
from alignscope.stats import rate_of

SPEECH = {
    "audio-pgd": "attack audio-pgd",
    "audio-transfer": "attack audio-transfer",
    "speech-evaluate": "speech evaluate",
    "speechguard": "reproduce speechguard",
}


def _json(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d))


def test_speech_experiments_are_registered_with_their_commands() -> None:
    for name, command in SPEECH.items():
        exp = EXPERIMENTS[name]
        assert exp.command == command and not exp.generated
        assert callable(exp.runner) and hasattr(exp.result_class, "from_dict")


CONFIGS = [
    AudioPGDAttackConfig(),
    AudioPGDAttackConfig(
        slm="random", device="cpu",
        attack=SpokenAttackConfig(budgets=("snr:30", "linf:0.01"), defenses=(20.0, 10.0), adaptive=2, n=None),
    ),
    AudioTransferConfig(),
    AudioTransferConfig(surrogate="build:seed=2", attack=SpokenAttackConfig(white_box=False, transfer=True, n=3)),
    SpeechEvalConfig(),
    SpeechEvalConfig(voices=("en-us",), rates=(150, 175), limit=3, judge="keyword", device="cpu"),
    SpeechGuardConfig(),
    SpeechGuardConfig(slm="tiny", budgets=("snr:30",), defenses=(20.0,), build={"seed": 2}),
]  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_speech_experiment_config_round_trips(config: Any) -> None:
    d = _json(config.to_dict())
    assert type(config).from_dict(d) == config
    assert _json(type(config).from_dict(d).to_dict()) == d


@pytest.mark.parametrize("name", list(SPEECH))
def test_registered_configs_round_trip_from_their_defaults(name: str) -> None:
    cls = EXPERIMENTS[name].config_class
    assert cls.from_dict(_json(cls().to_dict())) == cls()
    with pytest.raises(SpeechError, match="bogus"):
        cls.from_dict({"bogus": 1})


def test_transfer_config_needs_the_transfer_attack() -> None:
    with pytest.raises(SpeechError, match=r"attack\.transfer must be true"):
        AudioTransferConfig(attack=SpokenAttackConfig())


def _rate(k: int, n: int) -> dict[str, Any]:
    return rate_of([True] * k + [False] * (n - k)).to_dict()


def test_every_speech_experiment_result_round_trips() -> None:
    condition = {"kind": "white-box", "budget": "snr:30", "attack_defense": None, "eval_defense": "none",
                 "label": "white-box PGD (SNR >= 30 dB)", "n": 2, "success": {**_rate(1, 2), "measure": "non_refusal"},
                 "median_snr_db": 31.2, "median_steps": 10.0}  # fmt: skip
    spoken = SpokenAttackResult(
        conditions=[condition], headline=[condition["label"]],
        helpfulness=[{"eval_defense": "none", "n": 2, "answered": _rate(2, 2), "token_f1": 0.5, "top1_agreement": 0.7}],
        judge=["keyword"], decoding=["greedy, max_new_tokens=8"], pgd={"steps": 10}, models=["tiny"], n_harmful=2,
        n_benign=2,
    )  # fmt: skip
    evaluation = SpeechEvalResult(
        model="tiny", harmful_refusal=rate_of([True, False]), benign_answered=rate_of([True]), top1_agreement=0.5,
        top1_by_suite={"harmful": 0.4, "benign": 0.6}, refusal_agreement=rate_of([True, True]),
        text_harmful_refusal=rate_of([True, True]), text_benign_answered=rate_of([True]), heard_wer=0.3,
        heard_harmful_refusal=rate_of([False, True]), heard_benign_answered=rate_of([True]), judge="keyword",
        generation="greedy, max_new_tokens=8", voices=["en-us"], rates=[175], seconds=1.5,
        samples=[{"suite": "harmful", "id": "h1", "answer": "no"}],
    )  # fmt: skip
    guard = SpeechGuardResult(
        metrics=spoken.to_dict(), checks={"white_box_above_transfer": True, "statements": ["White-box 50%."]},
        markdown="| condition |", seconds=2.0,
    )  # fmt: skip
    for result in (spoken, evaluation, guard):
        d = _json(result.to_dict())
        again = type(result).from_dict(d)
        assert again == result and _json(again.to_dict()) == d
        assert isinstance(result.summary(), str) and result.summary()
    assert "white-box PGD (SNR >= 30 dB): 50% (1/2)" in spoken.summary()
    assert SpeechEvalResult.from_dict(evaluation.to_dict(samples=False)).samples == []
