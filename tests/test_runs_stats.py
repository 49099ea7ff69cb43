"""Run directories (append, resume, config clashes) and confidence intervals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from alignscope.runs import RunDir, RunError
from alignscope.stats import bootstrap_mean_ci, wilson


def test_wilson_matches_known_values() -> None:
    r = wilson(8, 10)
    assert r.value == 0.8
    assert r.low == pytest.approx(0.4902, abs=1e-3)  # textbook value for 8/10 at 95%
    assert r.high == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 10).low == 0.0
    assert np.isnan(wilson(0, 0).value)


def test_bootstrap_ignores_nan_and_brackets_mean() -> None:
    vals = np.array([[1.0, np.nan], [3.0, 2.0], [2.0, 4.0]])
    mean, low, high = bootstrap_mean_ci(vals, n_boot=200)
    assert mean.tolist() == [2.0, 3.0]
    assert (low <= mean).all() and (mean <= high).all()


def test_append_resume_and_truncated_last_line(tmp_path: Path) -> None:
    run = RunDir.create("evaluate", {"model": "m"}, out=tmp_path / "r")
    run.append({"stage": "s", "key": "a", "x": 1})
    run.append({"stage": "s", "key": "b", "x": 2})
    with open(tmp_path / "r" / "samples.jsonl", "a") as f:
        f.write('{"stage": "s", "key": "c", "x"')  # killed mid-write
    again = RunDir.create("evaluate", {"model": "m"}, out=tmp_path / "r", resume=True)
    assert set(again.done("s")) == {"a", "b"}


def test_existing_run_needs_resume_and_same_config(tmp_path: Path) -> None:
    RunDir.create("evaluate", {"model": "m"}, out=tmp_path / "r")
    with pytest.raises(RunError, match="--resume"):
        RunDir.create("evaluate", {"model": "m"}, out=tmp_path / "r")
    with pytest.raises(RunError, match="model"):
        RunDir.create("evaluate", {"model": "other"}, out=tmp_path / "r", resume=True)


def test_malformed_line_in_the_middle_names_it(tmp_path: Path) -> None:
    run = RunDir.create("evaluate", {}, out=tmp_path / "r")
    (tmp_path / "r" / "samples.jsonl").write_text(
        '{"stage":"s","key":"a"}\nnot json\n{"stage":"s","key":"b"}\n'
    )
    with pytest.raises(RunError, match=r"samples.jsonl:2"):
        run.records()


def test_rewrite_keeps_backup(tmp_path: Path) -> None:
    run = RunDir.create("evaluate", {}, out=tmp_path / "r")
    run.append({"stage": "s", "key": "a", "v": 1})
    run.rewrite_records([{"stage": "s", "key": "a", "v": 2}])
    assert run.records()[0]["v"] == 2
    assert json.loads((tmp_path / "r" / "samples.jsonl.bak").read_text())["v"] == 1
