"""The audit pipeline and the CLI end to end on a tiny model saved to disk; bad input gives clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alignscope.cli import app
from alignscope.testing import save_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_ref_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-ref", seed=1)


def _audit_args(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "audit",
        "--model",
        str(model),
        "--prefill-source",
        str(model),
        "--n-harmful",
        "4",
        "--n-borderline",
        "3",
        "--n-prefill",
        "3",
        "--n-decoding",
        "2",
        "--ks",
        "0,2",
        "--max-new-tokens",
        "4",
        "--attack-tokens",
        "3",
        "--out",
        str(out),
        *extra,
    ]


def test_audit_end_to_end_and_resume(tiny_dir: Path, tiny_ref_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(app, [*_audit_args(tiny_dir, out), "--reference", str(tiny_ref_dir)])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"evaluate", "prefill", "decoding", "token_kl"}
    harmful = metrics["evaluate"]["harmful[4]"]
    assert (
        harmful["non_refusal"]["n"] == 4
        and 0 <= harmful["non_refusal"]["ci_low"] <= harmful["non_refusal"]["ci_high"] <= 1
    )
    assert harmful["harmful"] is None  # the keyword judge does not judge harm
    assert metrics["prefill"]["measure"] == "non_refusal" and metrics["decoding"]["measure"] == "non_refusal"
    html = (out / "report.html").read_text()
    assert "non-refusal rate" in html and "ASR" not in re.sub(r"data:[^\"]+", "", html)
    assert "Prefilling attack" in html and "data:image/png;base64," in html and "Per-token KL" in html
    assert str(tiny_dir) in html  # every section names the model
    assert "Safety layers" in html and metrics["safety_layers"]["scan"]["n_layers"] == 2
    lines = (out / "samples.jsonl").read_text().splitlines()
    # resuming a finished run regenerates nothing
    res = runner.invoke(app, [*_audit_args(tiny_dir, out), "--reference", str(tiny_ref_dir), "--resume"])
    assert res.exit_code == 0, res.output
    assert (out / "samples.jsonl").read_text().splitlines() == lines
    # a second run into the same directory without --resume is refused, the first run untouched
    res = runner.invoke(app, [*_audit_args(tiny_dir, out), "--reference", str(tiny_ref_dir)])
    assert res.exit_code == 2 and "--resume" in res.output
    assert (out / "samples.jsonl").read_text().splitlines() == lines


def test_rejudge_and_report_commands(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert runner.invoke(app, _audit_args(tiny_dir, out, "--decoding", "off")).exit_code == 0
    res = runner.invoke(app, ["judge", str(out), "--judge", "keyword:list=gcg"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(r["verdict"]["judge"].startswith("keyword(list=gcg") for r in recs if "verdict" in r)
    assert (out / "samples.jsonl.bak").exists()
    assert json.loads((out / "config.json").read_text())["judge"] == "keyword:list=gcg"
    (out / "report.html").unlink()
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0
    assert (out / "report.html").exists()


def test_missing_model_path(tmp_path: Path) -> None:
    res = runner.invoke(app, ["audit", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "nowhere" in res.output and "Traceback" not in res.output


def test_malformed_suite_names_the_row(tiny_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("goal,target\nok prompt,Sure\n,Sure here\n")
    res = runner.invoke(
        app,
        [
            "attack",
            "prefill",
            "--model",
            str(tiny_dir),
            "--suite",
            f"advbench:{bad}",
            "--out",
            str(tmp_path / "r"),
        ],
    )
    assert res.exit_code == 2
    assert "bad.csv" in res.output and "3" in res.output


def test_unknown_judge(tiny_dir: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["evaluate", "--model", str(tiny_dir), "--judge", "nonsense", "--out", str(tmp_path / "r")]
    )
    assert res.exit_code == 2 and "nonsense" in res.output and "keyword" in res.output


def test_evaluate_prefill_decoding_and_token_kl_commands(
    tiny_dir: Path, tiny_ref_dir: Path, tmp_path: Path
) -> None:
    common = ["--model", str(tiny_dir)]
    res = runner.invoke(
        app,
        [
            "evaluate",
            *common,
            "--suite",
            "harmful",
            "--suite",
            "benign",
            "--n",
            "2",
            "--max-new-tokens",
            "3",
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert set(json.loads((tmp_path / "e" / "metrics.json").read_text())["evaluate"]) == {
        "harmful[2]",
        "benign[2]",
    }
    res = runner.invoke(
        app,
        [
            "attack",
            "prefill",
            *common,
            "--source",
            str(tiny_dir),
            "--n",
            "2",
            "--ks",
            "0,1",
            "--max-new-tokens",
            "2",
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app,
        ["attack", "decoding", *common, "--n", "2", "--max-new-tokens", "2", "--out", str(tmp_path / "d")],
    )
    assert res.exit_code == 0, res.output
    assert "worst_case" in json.loads((tmp_path / "d" / "metrics.json").read_text())["decoding"]
    res = runner.invoke(
        app,
        [
            "analyze",
            "token-kl",
            *common,
            "--reference",
            str(tiny_ref_dir),
            "--source",
            str(tiny_dir),
            "--n",
            "3",
            "--max-tokens",
            "5",
            "--out",
            str(tmp_path / "k"),
        ],
    )
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("prefill", [True, False])
def test_audit_of_a_served_model(tiny_dir: Path, tmp_path: Path, prefill: bool) -> None:
    """A remote model is audited through the OpenAI-compatible API: prefill sent as text when the server takes
    it (k counted with the source model's tokenizer), else reported as not applicable; KL is not applicable."""
    from alignscope.audit import AuditConfig, run_audit
    from alignscope.models import load_model
    from alignscope.runs import RunDir
    from alignscope.server import BackgroundServer, create_app

    local = load_model(str(tiny_dir))
    with BackgroundServer(create_app(local, served_name="tiny")) as server:
        spec = f"openai:{server.base_url}#tiny" + ("?prefill=continue" if prefill else "")
        cfg = AuditConfig(
            model=spec,
            reference=str(tiny_dir),
            prefill_source=str(tiny_dir),
            n_harmful=2,
            n_borderline=1,
            n_prefill=2,
            prefill_ks=(0, 2),
            decoding="off",
            max_new_tokens=3,
            attack_tokens=3,
        )
        run = RunDir.create("audit", cfg.to_dict(), out=tmp_path / "r")
        run_audit(cfg, run, models={str(tiny_dir): local}, progress=False)
    metrics = json.loads((run.path / "metrics.json").read_text())
    assert "token_kl" in metrics["notes"]
    if prefill:
        assert set(metrics["prefill"]["success"]) == {"0", "2"}
        recs = [r for r in run.records("prefill") if r["k"] == 2]
        assert all(r["k_used"] == 2 and r["k_tokenizer"] == str(tiny_dir) for r in recs)
    else:
        assert "prefill" in metrics["notes"] and "prefill" not in metrics


def test_analyze_safety_layers_command(tiny_dir: Path, tiny_ref_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "sl"
    res = runner.invoke(
        app,
        [
            "analyze",
            "safety-layers",
            "--model",
            str(tiny_dir),
            "--control",
            str(tiny_ref_dir),
            "--n",
            "6",
            "--draws",
            "20",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    sl = json.loads((out / "metrics.json").read_text())["safety_layers"]
    assert sl["control"]["model"] == str(tiny_ref_dir) and len(sl["scan"]["gap_deg"]) == 2
    html = (out / "report.html").read_text()
    assert "Safety layers" in html and sl["range_text"] in html
    assert (out / "probe_guard.json").exists()


def test_attack_gcg_command(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gcg"
    args = [
        "attack",
        "gcg",
        "--model",
        str(tiny_dir),
        "--n",
        "2",
        "--steps",
        "2",
        "--search-width",
        "8",
        "--topk",
        "8",
        "--max-new-tokens",
        "3",
        "--set",
        "gcg.screen_dtype=null",
        "--out",
        str(out),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    recs = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert sum(r["stage"] == "gcg" for r in recs) == 2
    assert "GCG" in (out / "report.html").read_text()
    # resuming redoes nothing
    assert runner.invoke(app, [*args, "--resume"]).exit_code == 0
    assert len((out / "samples.jsonl").read_text().splitlines()) == len(recs)


def test_train_command_saves_a_loadable_adapter(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "train"
    res = runner.invoke(
        app,
        [
            "train",
            "safety-sft",
            "--model",
            str(tiny_dir),
            "--out",
            str(out),
            "--set",
            "max_steps=2",
            "--set",
            "n_harmful=4",
            "--set",
            "n_utility=4",
            "--set",
            "utility_max_new_tokens=4",
        ],
    )
    assert res.exit_code == 0, res.output
    from alignscope.models import load_model

    assert load_model(str(out / "adapter")).generate([[{"role": "user", "content": "hi"}]])
    res = runner.invoke(app, ["train", "safety-sft", "--model", str(tiny_dir), "--set", "no_such_field=1"])
    assert res.exit_code == 2 and "no_such_field" in res.output
