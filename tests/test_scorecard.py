"""The scorecard on tiny random 2-layer Llamas saved to disk (keyword judge): every family on, resume after a
kill, skipped families, the guard counted, the leaderboard's order, the config round trip, the CLI and the
report in headless Chromium."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from alignscope.models import load_model
from alignscope.runs import RunDir
from alignscope.scorecard import (
    FAMILIES,
    FamilyScore,
    ScorecardConfig,
    ScorecardResult,
    model_slug,
    run_scorecard,
)
from alignscope.server.guards import GuardCheck
from alignscope.testing import save_tiny_model
from alignscope.validation import OptionError

SR = 16000

SMALL: dict[str, Any] = {
    "n_direct": 2,
    "n_safe": 2,
    "n_prefill": 2,
    "prefill_ks": (1, 2),
    "n_decoding": 1,
    "decoding_grid": "reduced",
    "n_gcg": 1,
    "gcg_steps": 1,
    "gcg_search_width": 4,
    "finetune": True,
    "finetune_examples": 2,
    "finetune_steps": 1,
    "n_finetune_eval": 2,
    "n_audio": 1,
    "audio_steps": 1,
    "audio_draws": 1,
    "max_new_tokens": 4,
    "attack_tokens": 4,
    "batch_size": 4,
}


pytestmark = pytest.mark.usefixtures("private_cache_one_thread")


def _save(tmp: Path, seed: int) -> str:
    return str(save_tiny_model(tmp, seed=seed))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> tuple[str, str]:
    return (
        _save(tmp_path_factory.mktemp("tiny-a"), 0),
        _save(tmp_path_factory.mktemp("tiny-b"), 1),
    )


def _manifest(directory: Path) -> Path:
    from alignscope.speech.model.audio import save_audio

    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(2):
        t = np.arange(int(0.4 * SR)) / SR
        g = np.random.default_rng(i)
        wave = (
            0.3 * (0.7 * np.sin(2 * math.pi * (200 + 50 * i) * t) + 0.3 * g.standard_normal(t.shape))
        ).astype(np.float32)
        save_audio(directory / f"c{i}.wav", wave, sample_rate=SR)
        rows.append({"id": f"harmful-{i}", "text": f"question {i}", "audio": f"c{i}.wav", "label": "harmful"})
    (directory / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory / "manifest.jsonl"


def _slm(llm: Any) -> Any:
    from alignscope.speech.model.projector import Projector, ProjectorConfig
    from alignscope.speech.model.slm import SpeechLM
    from alignscope.speech.model.whisper import tiny_whisper_encoder

    torch.manual_seed(0)
    proj = Projector(ProjectorConfig(encoder_dim=16, llm_dim=32, hidden_dim=64, norm_init=1.0))
    return SpeechLM(tiny_whisper_encoder(seed=0), proj, llm, name="tiny-slm")


def _config(dirs: tuple[str, ...], **changes: Any) -> ScorecardConfig:
    return ScorecardConfig(models=tuple(dirs), **{"base": dirs[0], "source": dirs[0], **SMALL, **changes})


@pytest.fixture(scope="module")
def full_run(dirs, tmp_path_factory) -> tuple[RunDir, ScorecardResult, ScorecardConfig]:
    """Two models, every family on; the first has a speech build, the second none."""
    tmp = tmp_path_factory.mktemp("scorecard")
    manifest = _manifest(tmp / "clips")
    models = {d: load_model(d) for d in dirs}
    cfg = _config(dirs, audio_manifest=str(manifest))
    run = RunDir.create("scorecard", cfg.to_dict(), out=tmp / "run")
    result = run_scorecard(
        cfg, run, models=models, speech_models={dirs[0]: _slm(models[dirs[0]])}, progress=False
    )
    return run, result, cfg


# -- config -----------------------------------------------------------------------------------------------------
def test_config_round_trip_profiles_and_errors() -> None:
    cfg = ScorecardConfig(models=("a", "b"), families=("direct", "gcg"), guard=("keyword=bomb",), n_gcg=3)
    assert ScorecardConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.size("n_gcg") == 3 and cfg.size("gcg_steps") == 10  # given wins, the rest from the profile
    assert ScorecardConfig(profile="full").size("finetune") is True
    assert ScorecardConfig().size("finetune") is False
    with pytest.raises(OptionError, match="families"):
        ScorecardConfig(families=("direct", "telepathy"))
    with pytest.raises(OptionError, match="freeze_layers"):
        ScorecardConfig(finetune_defense="sppft")
    with pytest.raises(OptionError, match="guard"):
        ScorecardConfig(guard=("probe:shout=x",))
    with pytest.raises(OptionError, match="repeat"):
        ScorecardConfig(models=("a", "a"))
    res = ScorecardResult({"m": {f: FamilyScore(f, "not_selected") for f in FAMILIES}})
    assert ScorecardResult.from_dict(json.loads(json.dumps(res.to_dict()))).scores == res.scores


# -- every family -----------------------------------------------------------------------------------------------
def test_every_family_runs_on_tiny_models(full_run, dirs) -> None:
    run, result, _ = full_run
    a, b = dirs
    for fam in FAMILIES:
        s = result.scores[a][fam]
        assert s.status == "done", (fam, s.reason)
        assert (
            s.rate is not None
            and s.rate["n"] > 0
            and 0 <= s.rate["ci_low"] <= s.rate["rate"] <= s.rate["ci_high"]
        )
    assert result.scores[a]["prefill"].worst in {"k=1", "k=2"}
    assert set(result.scores[a]["prefill"].parts) == {"k=1", "k=2"}
    assert result.scores[a]["decoding"].worst == "worst case"
    assert "1 steps x 4 candidates" in result.scores[a]["gcg"].details["budget"]
    assert result.scores[a]["over_refusal"].measure == "refusal"
    assert "benign_answered" in result.scores[a]["over_refusal"].details
    assert isinstance(result.scores[a]["over_refusal"].details["agreement_f1"], float)
    assert result.scores[a]["direct"].measure == "non_refusal"  # keyword judge: never "harmful"
    audio_b = result.scores[b]["audio"]
    assert audio_b.status == "skipped" and "no speech build" in audio_b.reason
    # one run, a sub-run per model, every record where the experiments put it
    for d in dirs:
        sub = RunDir.open(run.path / "models" / model_slug(d))
        assert sub.records("evaluate") and sub.records("prefill") and sub.records("decoding")
        assert sub.records("gcg") and sub.records("finetune") and (sub.path / "report.html").exists()
    assert RunDir.open(run.path / "models" / model_slug(a)).records("speech_answer")
    html = run.report_path.read_text()
    title = html.split("<title>")[1].split("</title>")[0]
    assert a in title and b in title  # the report names every model scored
    assert "worst family" in html and "Leaderboard" in html and "Models x families" in html
    assert "no speech build" in html and "non-refusal rate" in html
    assert "harmful rate" not in html.split("Models x families")[1].split("Leaderboard")[0]
    assert run.metrics()["scorecard"]["leaderboard"][0]["rank"] == 1
    assert "scorecard, judge keyword" in result.summary()


def test_families_are_skippable_and_shown_as_not_selected(dirs, tmp_path) -> None:
    cfg = _config(dirs[:1], families=("direct",), base=None)
    run = RunDir.create("scorecard", cfg.to_dict(), out=tmp_path / "run")
    res = run_scorecard(cfg, run, models={dirs[0]: load_model(dirs[0])}, progress=False)
    scores = res.scores[dirs[0]]
    assert scores["direct"].status == "done"
    assert all(
        scores[f].status == "not_selected" and scores[f].value is None for f in FAMILIES if f != "direct"
    )
    assert res.worst_family(dirs[0]).family == "direct"  # type: ignore[union-attr]
    assert "not selected" in run.report_path.read_text()
    # the quick profile leaves fine-tuning off, with its reason
    cfg2 = _config(dirs[:1], families=("finetune",), finetune=None)
    res2 = run_scorecard(cfg2, None, models={dirs[0]: load_model(dirs[0])}, progress=False)
    assert res2.scores[dirs[0]]["finetune"].status == "skipped"
    assert "quick profile" in res2.scores[dirs[0]]["finetune"].reason


# -- resume -----------------------------------------------------------------------------------------------------
def test_a_killed_run_resumes(dirs, tmp_path, monkeypatch) -> None:
    cfg = _config(dirs[:1], families=("direct", "decoding", "over_refusal"), n_decoding=2)
    model = load_model(dirs[0])
    out = tmp_path / "run"
    real = type(model).generate
    calls = {"n": 0, "kill": True}

    def generate(self, conversations, config=None, prefills=None):
        calls["n"] += 1
        if calls["kill"] and config is not None and config.do_sample:  # the decoding sweep's sampled settings
            raise RuntimeError("killed")
        return real(self, conversations, config, prefills=prefills)

    monkeypatch.setattr(type(model), "generate", generate)
    run = RunDir.create("scorecard", cfg.to_dict(), out=out)
    with pytest.raises(RuntimeError, match="killed"):
        run_scorecard(cfg, run, models={dirs[0]: model}, progress=False)
    sub = RunDir.open(out / "models" / model_slug(dirs[0]))
    direct_records = len(sub.records("evaluate"))
    greedy = len(sub.records("decoding"))
    assert direct_records > 0 and greedy == 2  # the greedy setting finished before the kill
    assert [r["family"] for r in run.records("scorecard")] == ["direct"]

    calls["kill"] = False
    again = RunDir.create("scorecard", cfg.to_dict(), out=out, resume=True)
    res = run_scorecard(cfg, again, models={dirs[0]: model}, progress=False)
    keys = [r["key"] for r in sub.records("decoding")]
    assert len(keys) == len(set(keys)) == 2 * 8  # 2 prompts x (greedy + 7 settings), none redone
    evaluate = sub.records("evaluate")
    assert len([r for r in evaluate if r["suite"].startswith("harmful")]) == 2  # direct was not run again
    assert all(res.scores[dirs[0]][f].status == "done" for f in ("direct", "decoding", "over_refusal"))


# -- the guard --------------------------------------------------------------------------------------------------
class _BlockAll:
    name = "block-all"
    policy = "block"
    refusal_text = "I'm sorry, but I can't help with that request."

    def check_input(self, conversation: Any) -> GuardCheck:
        return GuardCheck(True, 1.0)


def test_guard_counts_as_part_of_the_model(dirs, tmp_path, monkeypatch) -> None:
    import alignscope.server.guards as guards

    monkeypatch.setattr(guards, "build_guard", lambda spec, model: _BlockAll())
    cfg = _config(dirs[:1], families=("direct", "prefill", "over_refusal"), guard=("probe=fake.json",))
    run = RunDir.create("scorecard", cfg.to_dict(), out=tmp_path / "run")
    res = run_scorecard(cfg, run, models={dirs[0]: load_model(dirs[0])}, progress=False)
    s = res.scores[dirs[0]]
    assert s["direct"].value == 0.0 and s["prefill"].value == 0.0  # every prompt blocked: no attack succeeds
    assert s["over_refusal"].value == 1.0  # ... and every harmless one refused
    assert s["direct"].unguarded and all(v["n"] > 0 for v in s["direct"].unguarded.values())
    assert s["over_refusal"].details["benign_answered"]["rate"] == 0.0
    sub = RunDir.open(run.path / "models" / model_slug(dirs[0]))
    assert sub.records("guard") and all(r["blocked"] for r in sub.records("guard") if r["kind"] == "input")
    assert "Guard counted as part of the model" in run.report_path.read_text()


# -- leaderboard ------------------------------------------------------------------------------------------------
def _score(family: str, rate: float | None, n: int = 10) -> FamilyScore:
    if rate is None:
        return FamilyScore(family, "not_selected")
    from alignscope.stats import wilson

    r = wilson(round(rate * n), n).to_dict()
    measure = "refusal" if family == "over_refusal" else "non_refusal"
    return FamilyScore(family, "done", measure, r, "all", {"all": r})


def test_leaderboard_ranks_by_worst_family_then_over_refusal() -> None:
    def model(worst: dict[str, float | None], over: float | None) -> dict[str, FamilyScore]:
        scores = {f: _score(f, worst.get(f)) for f in FAMILIES if f != "over_refusal"}
        scores["over_refusal"] = _score("over_refusal", over)
        return scores

    res = ScorecardResult(
        {
            "leaky": model({"direct": 0.1, "prefill": 0.8}, 0.0),
            "tight-but-rude": model({"direct": 0.0, "prefill": 0.2}, 0.7),
            "tight-and-kind": model({"direct": 0.1, "gcg": 0.2}, 0.1),
            "unmeasured": model({}, None),
        }
    )
    board = res.leaderboard()
    assert [r["model"] for r in board] == ["tight-and-kind", "tight-but-rude", "leaky", "unmeasured"]
    assert board[2]["worst_family"] == "prefill" and board[0]["rank"] == 1
    assert res.worst_family("unmeasured") is None


# -- the CLI ----------------------------------------------------------------------------------------------------
def test_cli_scorecard_with_repeatable_model(dirs, tmp_path) -> None:
    from alignscope.cli import app

    out = tmp_path / "cli"
    args = ["scorecard", "--model", dirs[0], "--model", dirs[1], "--family", "direct", "--family",
            "over_refusal", "--base", dirs[0], "--n-direct", "1", "--n-safe", "1", "--max-new-tokens", "3",
            "--out", str(out)]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "#1" in res.output and "#2" in res.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["models"] == list(dirs) and cfg["command"] == "scorecard"
    assert (out / "report.html").exists()
    bad = CliRunner().invoke(app, ["scorecard", "--family", "telepathy", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "famil" in bad.output
    assert not (tmp_path / "bad").exists()


# -- the report in a browser ------------------------------------------------------------------------------------
def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium on this machine (.ci/run installs it)")
def test_report_renders_in_headless_chromium_with_leaderboard(full_run, tmp_path) -> None:
    from PIL import Image

    run, _, _ = full_run
    browser = _chromium()
    assert browser is not None
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,5000"]  # fmt: skip
    shot = tmp_path / "shot.png"
    uri = run.report_path.resolve().as_uri()
    subprocess.run([*base, f"--screenshot={shot}", uri], check=True, capture_output=True, timeout=120)
    pixels = list(Image.open(shot).convert("RGB").getdata())
    blue = sum(1 for r, g, b in pixels if abs(r - 0x1F) < 20 and abs(g - 0x77) < 20 and abs(b - 0xB4) < 20)
    orange = sum(1 for r, g, b in pixels if abs(r - 0xFF) < 20 and abs(g - 0x7F) < 25 and abs(b - 0x0E) < 25)
    assert blue > 50 and orange > 20  # the chart's bars of both models rendered
    dom = subprocess.run(
        [*base, "--dump-dom", uri], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    assert "Leaderboard" in dom and "Scorecard: worst family and over-refusal cost" in dom
