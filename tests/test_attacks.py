"""Prefilling attack, decoding-parameter grid and the resumable generate-and-judge stage on tiny models."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from alignscope.attacks import (
    FULL_GRID,
    REDUCED_GRID,
    GenItem,
    PrefillConfig,
    decoding_attack,
    decoding_settings,
    generate_and_judge,
    prefill_attack,
)
from alignscope.data import Sample
from alignscope.judges import KeywordJudge, Verdict
from alignscope.models import GenerationConfig
from alignscope.runs import RunDir
from alignscope.testing import tiny_local_model

SAMPLES = [Sample(f"h{i}", f"do harmful thing {i}", "cat", "harmful") for i in range(3)]


class CountingJudge:
    """A harm judge that calls every response harmful, counts what it judged and keeps the prefills it got."""

    name = "counting"
    judges_harm = True

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.prefills: list[str] = []

    def judge_batch(
        self, prompts: Sequence[str], responses: Sequence[str], prefills: Sequence[str] | None = None
    ) -> list[Verdict]:
        self.seen += list(responses)
        self.prefills += list(prefills or [""] * len(responses))
        return [Verdict("counting", refused=False, complied=True, harmful=True, raw=r) for r in responses]


def test_full_grid_is_the_papers() -> None:
    assert len(FULL_GRID["temperature"]) == 20 and FULL_GRID["temperature"][0] == 0.05
    assert FULL_GRID["top_p"][-1] == 1.0
    assert FULL_GRID["top_k"] == (1, 2, 5, 10, 20, 50, 100, 200, 500)
    settings = decoding_settings(FULL_GRID)
    assert len(settings) == 50 and settings[0][0] == "greedy"
    t = dict(settings)["temperature=0.35"]
    assert t.do_sample and t.temperature == 0.35 and t.top_p == 1.0 and t.top_k == 0


def test_prefill_uses_exactly_k_response_tokens(tmp_path: Path) -> None:
    model = tiny_local_model()
    responses = {s.id: "Sure, here is how to do it step by step." for s in SAMPLES}
    judge = CountingJudge()
    res = prefill_attack(
        model, SAMPLES, responses, judge, PrefillConfig(ks=(0, 3, 50), max_new_tokens=4), progress=False
    )
    by_k = {k: [r for r in res.records if r["k"] == k] for k in (0, 3, 50)}
    full = len(model.response_ids(responses["h0"]))
    assert all(r["k_used"] == 0 and r["prefill"] == "" for r in by_k[0])
    assert all(r["k_used"] == 3 for r in by_k[3])
    assert all(r["k_used"] == full for r in by_k[50])  # shorter than k: the whole response
    assert by_k[3][0]["prefill"] == model.tokenizer.decode(model.response_ids(responses["h0"])[:3])
    # every judge gets the prefix beside the continuation; a model judge records that it reads both
    assert judge.prefills[len(SAMPLES) : 2 * len(SAMPLES)] == [r["prefill"] for r in by_k[3]]
    assert judge.seen[len(SAMPLES)] == by_k[3][0]["response"]
    assert by_k[3][0]["judged"] == "prefix + continuation" and by_k[0][0]["judged"] == "response"
    assert res.success[3]["rate"] == 1.0 and res.success[3]["measure"] == "harmful" and res.n_prompts == 3


def test_prefill_with_keyword_judge_reads_the_continuation_and_counts_non_refusal() -> None:
    model = tiny_local_model()
    responses = {"h0": "Sure, here is how to do it step by step."}
    res = prefill_attack(
        model,
        SAMPLES[:1],
        responses,
        KeywordJudge(),
        PrefillConfig(ks=(5,), max_new_tokens=3),
        progress=False,
    )
    rec = res.records[0]
    assert rec["judged"] == KeywordJudge.reads and rec["verdict"]["harmful"] is None
    assert res.success[5]["measure"] == "non_refusal"
    assert res.n_dropped == 0


def test_stage_resumes_without_redoing(tmp_path: Path) -> None:
    model = tiny_local_model()
    run = RunDir.create("t", {}, out=tmp_path / "r")
    items = [GenItem.of(s) for s in SAMPLES]
    judge = CountingJudge()
    cfg = GenerationConfig(max_new_tokens=3)
    first = generate_and_judge(model, items[:2], "s", cfg, judge, run, progress=False)
    assert len(judge.seen) == 2
    again = generate_and_judge(model, items, "s", cfg, judge, run, progress=False)
    assert len(judge.seen) == 3  # only the new item was generated and judged
    assert [r["key"] for r in again] == ["h0", "h1", "h2"] and again[:2] == first


def test_decoding_attack_worst_case_is_any_setting() -> None:
    model = tiny_local_model()

    class SecondSettingOnly(CountingJudge):
        def judge_batch(
            self, prompts: Sequence[str], responses: Sequence[str], prefills: Sequence[str] | None = None
        ) -> list[Verdict]:
            self.seen += list(responses)
            harmful = len(self.seen) > len(SAMPLES) and len(self.seen) <= 2 * len(SAMPLES)
            return [
                Verdict("x", refused=False, complied=True, harmful=harmful and i == 0)
                for i, _ in enumerate(responses)
            ]

    grid = {"temperature": (0.7,), "top_k": (5,)}
    res = decoding_attack(model, SAMPLES, SecondSettingOnly(), grid, max_new_tokens=3, progress=False)
    assert set(res.per_setting) == {"greedy", "temperature=0.7", "top_k=5"}
    assert res.greedy["rate"] == 0.0
    assert res.per_setting["temperature=0.7"]["k"] == 1
    assert res.worst_case["k"] == 1 and res.worst_case["n"] == 3 and res.measure == "harmful"
    assert len(REDUCED_GRID["temperature"]) == 3
