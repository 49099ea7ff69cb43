"""Every numeric and structural option is checked when a command is parsed: a bad value exits 2 with a
message naming the option and its allowed range, before any model loads and before a run directory exists;
the configs behind the commands give Python users the same checks. A resumed run may change only options that
do not change finished samples."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from alignscope.attacks.gcg import GCGConfig
from alignscope.attacks.prefill import PrefillConfig
from alignscope.audit import AuditConfig
from alignscope.cli import app
from alignscope.models.base import GenerationConfig
from alignscope.runs import RunDir, RunError
from alignscope.speech.attacks.config import SpokenAttackConfig
from alignscope.speech.errors import SpeechError
from alignscope.training.config import DeepAlignConfig, SafetySFTConfig
from alignscope.validation import OptionError, at_least, each_at_least, finite, in_range

runner = CliRunner()


@pytest.fixture
def no_models(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every way a command loads a model or starts work raises; the working directory is empty."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded (or work started) before the options were checked")

    import alignscope.models.loading as loading
    import alignscope.speech.build.adversarial as adversarial
    import alignscope.speech.build.builder as build
    import alignscope.speech.evaluation.speechguard as speech_reproduce
    import alignscope.speech.model.loading as speech_loading
    import alignscope.training as training
    import alignscope.training.reproduce as reproduce

    monkeypatch.setattr(loading, "_load_hf", forbidden)
    monkeypatch.setattr(loading, "load_model", forbidden)
    monkeypatch.setattr(loading, "load_chat_model", forbidden)
    monkeypatch.setattr(speech_loading, "load_speech_model", forbidden)
    for module, name in [
        (build, "build_slm"),
        (adversarial, "adversarial_train"),
        (speech_reproduce, "run_speechguard"),
        (reproduce, "reproduce_shallow_vs_deep"),
        (training, "train"),
        (training, "launch"),
    ]:
        monkeypatch.setattr(module, name, forbidden)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


CASES: list[tuple[list[str], str]] = [
    # evaluate
    (["evaluate", "--n", "0"], "--n must be >= 1, got 0"),
    (["evaluate", "--n", "-3"], "--n must be >= 1, got -3"),
    (["evaluate", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["evaluate", "--temperature", "-1"], "--temperature must be >= 0"),
    (["evaluate", "--temperature", "nan"], "--temperature must be"),
    (["evaluate", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["evaluate", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["evaluate", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["evaluate", "--judge", "nonsense"], "unknown judge 'nonsense'"),
    # audit
    (["audit", "--n-safety", "1"], "--n-safety must be >= 2, got 1"),
    (["audit", "--n-harmful", "0"], "--n-harmful must be >= 1"),
    (["audit", "--n-borderline", "-1"], "--n-borderline must be >= 1"),
    (["audit", "--n-prefill", "0"], "--n-prefill must be >= 1"),
    (["audit", "--n-decoding", "0"], "--n-decoding must be >= 1"),
    (["audit", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["audit", "--attack-tokens", "0"], "--attack-tokens must be >= 1"),
    (["audit", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["audit", "--decoding", "bogus"], "--decoding must be one of reduced, full, off"),
    (["audit", "--ks=-1,3"], "--ks"),
    (["audit", "--ks", ","], "--ks needs at least one"),
    (["audit", "--judge", "keyword:smollm2"], "uses no model"),
    (["audit", "--harmful-suite", "harmfull"], "harmfull"),
    # attack prefill / decoding / gcg
    (["attack", "prefill", "--n", "0"], "--n must be >= 1"),
    (["attack", "prefill", "--ks", "x"], "--ks must be comma-separated integers"),
    (["attack", "prefill", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["attack", "prefill", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["attack", "decoding", "--n", "0"], "--n must be >= 1"),
    (["attack", "decoding", "--max-new-tokens", "-2"], "--max-new-tokens must be >= 1"),
    (["attack", "decoding", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["attack", "gcg", "--n", "0"], "--n must be >= 1"),
    (["attack", "gcg", "--steps", "0"], "--steps must be >= 1"),
    (["attack", "gcg", "--search-width", "0"], "--search-width must be >= 1"),
    (["attack", "gcg", "--topk", "0"], "--topk must be >= 1"),
    (["attack", "gcg", "--n-replace", "0"], "--n-replace must be >= 1"),
    (["attack", "gcg", "--held-out", "-1"], "--held-out must be >= 0"),
    (["attack", "gcg", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    # analyses
    (["analyze", "token-kl", "--n", "0"], "--n must be >= 1"),
    (["analyze", "token-kl", "--max-tokens", "0"], "--max-tokens must be >= 1"),
    (["analyze", "safety-layers", "--n", "1"], "--n must be >= 2"),
    (["analyze", "safety-layers", "--draws", "0"], "--draws must be >= 1"),
    (["analyze", "safety-layers", "--alpha", "0"], "--alpha must be a finite number > 0"),
    (["analyze", "safety-layers", "--template", "bogus"], "--template must be one of chat, plain"),
    (["analyze", "safety-layers", "--malicious", "harmful@-3"], "subset size and must be >= 1, got -3"),
    (["analyze", "safety-layers", "--initial-range", "9-3"], "--initial-range expects START-END"),
    (["analyze", "safety-layers", "--initial-range", "6"], "--initial-range expects START-END"),
    (["evaluate", "--suite", "harmfull"], "did you mean harmful?"),
    # training and reproduction configs, set with --set
    (["train", "safety-sft", "--set", "batch_size=0"], "--set batch_size must be >= 1"),
    (["train", "deep-align", "--set", "p_zero=1.5"], "--set p_zero must be in [0, 1]"),
    (["train", "harden", "--set", "contrast_refusals=0"], "--set contrast_refusals must be >= 1"),
    (["train", "harden", "--set", "adversarial=true"], "gcg_runs must name run directories"),
    (["analyze", "safety-layers", "--guard-fpr", "1"], "--guard-fpr must be in [0, 1)"),
    (["analyze", "safety-layers", "--guard-safe", "safe-alarmin"], "safe-alarming"),
    (["attack", "finetune", "--set", "n_examples=0"], "--set n_examples must be >= 1"),
    (["reproduce", "shallow-vs-deep", "--set", "batch_size=0"], "--set batch_size must be >= 1"),
    (["reproduce", "shallow-vs-deep", "--set", "ks=[]"], "--set ks needs at least one value"),
    # speech
    (["speech", "speak", "--suite", "harmful", "--out", "wavs", "--n", "0"], "--n must be >= 1"),
    (["speech", "speak", "--suite", "harmful", "--out", "wavs", "--rates", "0"], "--rates needs values >= 1"),
    (["speech", "speak", "--suite", "harmful", "--out", "wavs", "--lead-silence", "-1"], "--lead-silence"),
    (
        ["speech", "speak", "--suite", "harmful", "--out", "wavs", "--voices", ","],
        "--voices needs at least one",
    ),
    (["speech", "misheard-data", "--out", "m.jsonl", "--variants", "-1"], "--variants must be >= 0"),
    (
        ["speech", "misheard-data", "--out", "m.jsonl", "--max-new-tokens", "0"],
        "--max-new-tokens must be >= 1",
    ),
    (["speech", "misheard-data", "--out", "m.jsonl", "--limit", "0"], "--limit must be >= 1"),
    (["speech", "evaluate", "--limit", "0"], "--limit must be >= 1"),
    (["speech", "evaluate", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["speech", "evaluate", "--rates", "150,-1"], "--rates needs values >= 1"),
    (["speech", "evaluate", "--judge", "nonsense"], "unknown judge"),
    (["speech", "build", "--distill-steps", "-1"], "--distill-steps must be >= 0"),
    (["speech", "build", "--set", "batch_size=0"], "--set batch_size must be >= 1"),
    (["speech", "adversarial-train", "--rounds", "0"], "--rounds must be >= 1"),
    (["speech", "adversarial-train", "--eval-n", "-1"], "--eval-n must be >= 0"),
    (["speech", "adversarial-train", "--budget", "snr:inf"], "bad budget"),
    (["attack", "audio-pgd", "--n", "0"], "--n must be >= 1"),
    (["attack", "audio-pgd", "--steps", "0"], "--steps must be >= 1"),
    (["attack", "audio-pgd", "--restarts", "0"], "--restarts must be >= 1"),
    (["attack", "audio-pgd", "--step-size", "0"], "--step-size must be a finite number > 0"),
    (["attack", "audio-pgd", "--adaptive", "-1"], "--adaptive must be >= 0"),
    (["attack", "audio-pgd", "--n-benign", "-1"], "--n-benign must be >= 0"),
    (["attack", "audio-pgd", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["attack", "audio-pgd", "--budget", "snr:inf"], "bad budget"),
    (["attack", "audio-pgd", "--budget", "snr:nan"], "bad budget"),
    (["attack", "audio-pgd", "--defense", "tdnf:snr=inf"], "snr must be finite"),
    (["attack", "audio-pgd", "--set", "check_every=0"], "--set check_every must be >= 1"),
    (["attack", "audio-pgd", "--set", "batch_size=0"], "--set batch_size must be >= 1"),
    (["attack", "audio-transfer", "--surrogate", "random", "--steps", "0"], "--steps must be >= 1"),
    (["reproduce", "speechguard", "--set", "n=0"], "--set n must be >= 1"),
    (["reproduce", "speechguard", "--set", "defenses=[1e999]"], "--set defenses must be a finite number"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_option_fails_before_any_model_or_run_directory(
    no_models: Path, args: list[str], message: str
) -> None:
    takes_out = args[0] in {"evaluate", "audit"} or args[:2] in (
        ["attack", "prefill"],
        ["attack", "decoding"],
        ["attack", "gcg"],
        ["analyze", "token-kl"],
        ["analyze", "safety-layers"],
        ["reproduce", "shallow-vs-deep"],
        ["attack", "audio-pgd"],
        ["attack", "audio-transfer"],
        ["reproduce", "speechguard"],
    )
    out = ["--out", str(no_models / "run")] if takes_out else []
    res = runner.invoke(app, [*args, *out])
    assert res.exit_code == 2, (res.output, res.exception)
    assert message in res.output, res.output
    assert "Traceback" not in res.output
    assert list(no_models.iterdir()) == []  # no run directory, no output file


def test_good_values_pass_the_same_checks() -> None:
    GenerationConfig(max_new_tokens=1, temperature=0.0, top_p=1.0, top_k=0, batch_size=1)
    GenerationConfig(do_sample=True, temperature=0.7, top_p=0.01)
    AuditConfig(n_safety=2, n_harmful=1, prefill_ks=(0,), decoding="off")
    PrefillConfig(ks=(0, 160))
    GCGConfig(num_steps=1, batch_size=None)
    SpokenAttackConfig(n=None, n_benign=0, defenses=(-5.0,), budgets=("snr:-3",))
    DeepAlignConfig(p_zero=0.0, alpha=1.0, max_steps=-1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: GenerationConfig(max_new_tokens=0), "GenerationConfig.max_new_tokens must be >= 1, got 0"),
        (lambda: GenerationConfig(batch_size=0), "GenerationConfig.batch_size must be >= 1"),
        (lambda: GenerationConfig(temperature=-1.0), "GenerationConfig.temperature must be >= 0"),
        (lambda: GenerationConfig(do_sample=True, temperature=0.0), "must be > 0 when sampling"),
        (lambda: GenerationConfig(top_p=0.0), "GenerationConfig.top_p must be in (0, 1], got 0.0"),
        (lambda: GenerationConfig(top_k=-1), "GenerationConfig.top_k must be >= 0"),
        (lambda: AuditConfig(n_safety=1), "AuditConfig.n_safety must be >= 2, got 1"),
        (lambda: AuditConfig(prefill_ks=()), "AuditConfig.prefill_ks needs at least one value"),
        (lambda: PrefillConfig(ks=(5, -1)), "PrefillConfig.ks needs values >= 0"),
        (lambda: GCGConfig(num_steps=0), "GCGConfig.num_steps must be >= 1"),
        (lambda: GCGConfig(batch_size=0), "GCGConfig.batch_size must be >= 1"),
        (lambda: SafetySFTConfig(test_fraction=1.0), "SafetySFTConfig.test_fraction must be in (0, 1)"),
        (lambda: SafetySFTConfig(max_steps=0), "SafetySFTConfig.max_steps must be >= 1"),
        (lambda: SafetySFTConfig(n_harmful="3"), "SafetySFTConfig.n_harmful must be a number, got '3'"),
    ],
)
def test_configs_check_their_fields(make: Any, message: str) -> None:
    with pytest.raises(OptionError) as err:
        make()
    assert message in str(err.value)


def test_speech_config_errors_stay_speech_errors() -> None:
    with pytest.raises(SpeechError, match=r"SpokenAttackConfig.steps must be >= 1"):
        SpokenAttackConfig(steps=0)
    with pytest.raises(OptionError, match=r"SpokenAttackConfig.adaptive_snrs must be a finite number"):
        SpokenAttackConfig(adaptive=1, adaptive_snrs=(float("inf"),), defenses=(20.0,))


def test_check_functions() -> None:
    at_least("x", None, 1)  # None: not set
    with pytest.raises(OptionError, match=r"^x must be >= 1, got 0$"):
        at_least("x", 0, 1)
    with pytest.raises(OptionError, match="must be a number"):
        at_least("x", True, 0)
    with pytest.raises(OptionError, match=r"must be in \[0, 1\), got 1"):
        in_range("x", 1, 0, 1, high_open=True)
    with pytest.raises(OptionError, match="finite"):
        finite("snr", float("nan"))
    with pytest.raises(OptionError, match=r"needs values >= 0, got \[1, -2\]"):
        each_at_least("ks", (1, -2), 0)


# -- resume ---------------------------------------------------------------------------------------------------
def test_resume_accepts_batch_size_and_refuses_judge_and_suite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = AuditConfig(batch_size=16).to_dict()
    gcg = {"model": "m", "gcg": GCGConfig().to_dict(), "judge": "keyword"}
    RunDir.create("audit", base, out=tmp_path / "a")
    RunDir.create("attack gcg", gcg, out=tmp_path / "g")

    with caplog.at_level(logging.WARNING, logger="alignscope.runs"):
        RunDir.create("audit", {**base, "batch_size": 4, "device": "cpu"}, out=tmp_path / "a", resume=True)
    assert "batch_size (16 -> 4)" in caplog.text and "device (None -> 'cpu')" in caplog.text
    recorded = json.loads((tmp_path / "a" / "config.json").read_text())
    assert recorded["batch_size"] == 16  # the original settings stay; the change is recorded
    assert recorded["resumed_with"] == [{"batch_size": [16, 4], "device": [None, "cpu"]}]
    # nested: GCG's candidate batch size and progress bars
    changed = {**gcg, "gcg": {**gcg["gcg"], "batch_size": 64, "progress": True}}
    RunDir.create("attack gcg", changed, out=tmp_path / "g", resume=True)

    for key, value in [
        ("judge", "keyword:list=gcg"),
        ("harmful_suite", "advbench:x.csv"),
        ("dtype", "bfloat16"),
    ]:
        with pytest.raises(RunError, match=rf"differs in {key} \(a resumed run may change only batch_size"):
            RunDir.create("audit", {**base, key: value}, out=tmp_path / "a", resume=True)
    with pytest.raises(RunError, match=r"differs in gcg.num_steps"):
        RunDir.create(
            "attack gcg", {**gcg, "gcg": {**gcg["gcg"], "num_steps": 3}}, out=tmp_path / "g", resume=True
        )


def test_cli_resume_with_another_batch_size_regenerates_nothing(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["audit", "--model", str(tiny_dir), "--prefill-source", str(tiny_dir), "--n-harmful", "3"]
    args += ["--n-borderline", "2", "--n-prefill", "2", "--ks", "0,2", "--max-new-tokens", "3"]
    args += ["--attack-tokens", "2", "--decoding", "off", "--no-safety-layers", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    lines = (out / "samples.jsonl").read_text().splitlines()
    res = runner.invoke(app, [*args, "--resume", "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    assert (out / "samples.jsonl").read_text().splitlines() == lines
    assert json.loads((out / "config.json").read_text())["resumed_with"] == [{"batch_size": [16, 2]}]
    res = runner.invoke(app, [*args, "--resume", "--judge", "keyword:list=gcg"])
    assert res.exit_code == 2 and "differs in judge" in res.output


def test_every_training_recipe_has_a_train_command():
    from alignscope.cli.train import RECIPE_COMMANDS
    from alignscope.training import RECIPES

    assert sorted(RECIPE_COMMANDS) == sorted(RECIPES)
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for name in RECIPES:
        assert name in result.output
