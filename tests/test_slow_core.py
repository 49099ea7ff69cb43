"""Slow tests on the real embedded model (SmolLM2-135M-Instruct), loaded once per session."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignscope.attacks import PrefillConfig, harmful_responses, prefill_attack
from alignscope.audit import AuditConfig, run_audit
from alignscope.data import load_suite
from alignscope.judges import KeywordJudge
from alignscope.models import GenerationConfig, user_turn
from alignscope.runs import RunDir

pytestmark = pytest.mark.slow


def test_embedded_model_loads_from_cache_and_answers(smollm2) -> None:  # type: ignore[no-untyped-def]
    assert smollm2.num_layers == 30 and smollm2.template_name == "tokenizer chat template"
    out = smollm2.generate([user_turn("What is the capital of France?")], GenerationConfig(max_new_tokens=12))
    assert "Paris" in out[0]


def test_small_audit_shows_the_model_is_not_aligned(smollm2, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = AuditConfig(
        n_harmful=12,
        n_borderline=6,
        n_prefill=4,
        prefill_ks=(0, 5),
        n_decoding=3,
        decoding="off",
        max_new_tokens=32,
        attack_tokens=24,
    )
    run = RunDir.create("audit", cfg.to_dict(), out=tmp_path / "audit")
    run_audit(cfg, run, models={"smollm2": smollm2}, progress=False)
    metrics = json.loads((run.path / "metrics.json").read_text())
    harmful = metrics["evaluate"]["harmful[12]"]
    assert harmful["non_refusal"]["rate"] > 0.5  # the embedded default does not refuse most harmful prompts
    assert harmful["harmful"] is None  # and the keyword judge does not claim to know whether that is harm
    assert metrics["prefill"]["success"]["5"]["n"] >= 1 and metrics["prefill"]["measure"] == "non_refusal"
    assert "smollm2" in run.report_path.read_text()


def test_prefill_attack_on_public_advbench(smollm2, shared_data: Path) -> None:  # type: ignore[no-untyped-def]
    suite = load_suite(f"advbench:{shared_data / 'advbench' / 'harmful_behaviors.csv'}").take(4)
    judge = KeywordJudge()
    responses = harmful_responses(smollm2, list(suite), judge, max_new_tokens=32)
    res = prefill_attack(
        smollm2, list(suite), responses, judge, PrefillConfig(ks=(0, 10), max_new_tokens=16), progress=False
    )
    assert set(res.success) == {0, 10} and res.success[10]["measure"] == "non_refusal"
    assert res.n_prompts + res.n_dropped == 4


@pytest.mark.parametrize("name", ["smollm2-aligned", "smollm2-balanced"])
def test_shipped_adapter_refuses_and_answers(name: str) -> None:
    from alignscope.models import load_model
    from alignscope.models.loading import shipped_adapter

    if shipped_adapter(name) is None:
        pytest.skip(f"{name} adapter not shipped in this checkout")
    model = load_model(name)
    harmful = load_suite("harmful").split(0.5, seed=0)[1].take(6).prompts  # held out from its training
    answers = model.generate([user_turn(p) for p in harmful], GenerationConfig(max_new_tokens=24))
    verdicts = KeywordJudge().judge_batch(harmful, answers)
    assert sum(bool(v.refused) for v in verdicts) >= 4, answers
    assert "Paris" in model.generate([user_turn("What is the capital of France?")])[0]
    if name == "smollm2-balanced":  # trained to answer benign requests, held-out ones included
        benign = load_suite("benign").split(0.5, seed=0)[1].take(6).prompts
        answers = model.generate([user_turn(p) for p in benign], GenerationConfig(max_new_tokens=24))
        assert sum(not v.refused for v in KeywordJudge().judge_batch(benign, answers)) >= 4, answers
