"""A run killed at any byte of samples.jsonl: reading skips the torn record, appending cuts it off, and
report, re-judging and a resumed stage all work, with nothing before the torn record lost."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from alignscope.data import load_suite
from alignscope.evaluate import evaluate_suites
from alignscope.judges import get_judge
from alignscope.models.base import GenerationConfig
from alignscope.report.build import rebuild
from alignscope.runs import RunDir, RunError
from alignscope.runs.rejudge import rejudge_run
from alignscope.testing import tiny_local_model

RECORDS = [
    {"stage": "s", "key": "a", "text": "plain"},
    {"stage": "s", "key": "b", "text": "café naïve ☕ 漢字"},  # multi-byte UTF-8 (stored unescaped)
    {"stage": "s", "key": "c", "text": "third", "n": 3},
]
TORN = {"stage": "s", "key": "d", "text": "über ☕ torn"}
TORN_LINE = json.dumps(TORN, ensure_ascii=False).encode("utf-8")


def _cut(where: str) -> bytes:
    """The torn record's bytes up to a cut point."""
    if where == "mid-key":
        return TORN_LINE[: TORN_LINE.index(b'"key"') + 3]
    if where == "mid-string":
        return TORN_LINE[: TORN_LINE.index(b"torn") + 2]
    if where == "mid-utf8":  # inside the 3-byte encoding of the cup
        return TORN_LINE[: TORN_LINE.index("☕".encode()) + 1]
    if where == "lone-brace":
        return b"{"
    if where == "after-brace":  # the whole object, only the newline missing
        return TORN_LINE
    if where == "garbage-line":  # a last line with its newline that is not JSON
        return b"\x00\x00garbage\n"
    raise AssertionError(where)


def _write_run(tmp_path: Path, tail: bytes) -> tuple[RunDir, bytes]:
    run = RunDir.create("evaluate", {"model": "m"}, out=tmp_path / "r")
    for r in RECORDS:
        run.append(r)
    good = (run.path / "samples.jsonl").read_bytes()
    with open(run.path / "samples.jsonl", "ab") as f:
        f.write(tail)
    return run, good


@pytest.mark.parametrize("where", ["mid-key", "mid-string", "mid-utf8", "lone-brace", "garbage-line"])
def test_torn_tail_is_dropped_on_append_and_nothing_before_it_is_lost(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    run, good = _write_run(tmp_path, _cut(where))
    assert run.records() == RECORDS  # readers skip the torn record
    with caplog.at_level(logging.WARNING, logger="alignscope.runs"):
        run.append({"stage": "s", "key": "e", "text": "after"})
    data = (run.path / "samples.jsonl").read_bytes()
    assert data.startswith(good)  # every byte before the torn record kept
    assert data.endswith(b"\n") and all(json.loads(line) for line in data.splitlines())
    assert [r["key"] for r in run.records()] == ["a", "b", "c", "e"]
    assert run.records()[1]["text"] == RECORDS[1]["text"]
    dropped = len(_cut(where))
    msg = " ".join(r.getMessage() for r in caplog.records if r.name == "alignscope.runs")
    assert "dropped a torn last record" in msg and f"{dropped} bytes" in msg
    # a second append finds a clean file and logs nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alignscope.runs"):
        run.append({"stage": "s", "key": "f"})
    assert not caplog.records
    assert [r["key"] for r in run.records()] == ["a", "b", "c", "e", "f"]


def test_complete_last_record_without_newline_is_kept(tmp_path: Path) -> None:
    run, good = _write_run(tmp_path, _cut("after-brace"))
    assert [r["key"] for r in run.records()] == ["a", "b", "c", "d"]
    run.append({"stage": "s", "key": "e"})
    assert (run.path / "samples.jsonl").read_bytes() == good + TORN_LINE + b'\n{"stage": "s", "key": "e"}\n'
    assert [r["key"] for r in run.records()] == ["a", "b", "c", "d", "e"]


def test_every_cut_of_the_last_record_reads_and_appends(tmp_path: Path) -> None:
    """All byte offsets of the torn record: the first three records always survive, the fourth exactly when
    it was written whole."""
    for cut in range(len(TORN_LINE) + 1):
        run, good = _write_run(tmp_path / str(cut), TORN_LINE[:cut])
        whole = cut == len(TORN_LINE)
        expected = ["a", "b", "c", "d"] if whole else ["a", "b", "c"]
        assert [r["key"] for r in run.records()] == expected, cut
        run.append({"stage": "s", "key": "e"})
        assert [r["key"] for r in run.records()] == [*expected, "e"], cut
        assert (run.path / "samples.jsonl").read_bytes().startswith(good)


def test_malformed_line_before_the_last_is_still_an_error(tmp_path: Path) -> None:
    run, _ = _write_run(tmp_path, b"{torn\n" + TORN_LINE + b"\n")
    with pytest.raises(RunError, match=r"samples.jsonl:4"):
        run.records()


@pytest.fixture(scope="module")
def tiny() -> Any:
    return tiny_local_model(seed=0)


class _Counting:
    """Wraps a model and counts the conversations it is asked to answer."""

    def __init__(self, model: Any) -> None:
        self.model, self.name, self.asked = model, model.name, 0

    @property
    def supports_prefill(self) -> bool:
        return True

    def generate(
        self, conversations: Any, config: Any = None, prefills: Any = None, progress: bool = False
    ) -> Any:
        self.asked += len(conversations)
        return self.model.generate(conversations, config, prefills=prefills)


@pytest.mark.parametrize("cut", [1, 17, 60, -1])
def test_report_rejudge_and_resume_after_a_torn_record(tiny: Any, tmp_path: Path, cut: int) -> None:
    suite = load_suite("harmful").take(4, 0)
    gen = GenerationConfig(max_new_tokens=4, batch_size=1)  # one prompt per pass: regenerating is exact
    judge = get_judge("keyword")
    run = RunDir.create("evaluate", {"model": tiny.name}, out=tmp_path / "r")
    first = evaluate_suites(tiny, [suite], judge, gen, run, progress=False)
    file = run.path / "samples.jsonl"
    lines = file.read_bytes().splitlines(keepends=True)
    kept = b"".join(lines[:-1])
    # killed while writing the last record: its line cut at byte ``cut`` (-1: only the newline missing)
    file.write_bytes(kept + (lines[-1][:cut] if cut > 0 else lines[-1][:-1]))
    n_whole = 4 if cut < 0 else 3

    # report: metrics from the records that survived
    metrics, _ = rebuild(RunDir.open(run.path))
    assert metrics["evaluate"][suite.name]["refusal"]["n"] == n_whole

    # judge: re-judging (on a copy) keeps every whole record and leaves a clean file
    copy = RunDir.open(shutil.copytree(run.path, tmp_path / "copy"))
    assert rejudge_run(copy, "keyword:list=gcg") == n_whole
    assert (
        len([json.loads(line) for line in (copy.path / "samples.jsonl").read_bytes().splitlines()]) == n_whole
    )

    # --resume: only the torn sample is generated again, the same as before (greedy); nothing before it lost
    resumed = RunDir.create("evaluate", {"model": tiny.name}, out=tmp_path / "r", resume=True)
    counting = _Counting(tiny)
    again = evaluate_suites(counting, [suite], judge, gen, resumed, progress=False)  # type: ignore[arg-type]
    assert counting.asked == 4 - n_whole
    assert [r["response"] for r in again] == [r["response"] for r in first]
    assert file.read_bytes().startswith(kept)
    assert [r["key"] for r in resumed.records()] == [r["key"] for r in first]
    assert rebuild(resumed)[0]["evaluate"][suite.name]["refusal"]["n"] == 4


def test_gcg_records_of_a_killed_run_skip_the_torn_record(tmp_path: Path) -> None:
    from alignscope.attacks.gcg_training import read_gcg_records

    run = RunDir.create("attack gcg", {}, out=tmp_path / "r")
    run.append({"stage": "gcg", "key": "x", "suffix": "! !"})
    with open(run.path / "samples.jsonl", "ab") as f:
        f.write(b'{"stage": "gcg", "key": "y", "suf')
    assert [r["key"] for r in read_gcg_records(run.path)] == ["x"]


def test_one_jsonl_reader_names_file_and_line(tmp_path: Path) -> None:
    from alignscope.jsonl import JSONLError, iter_jsonl, read_jsonl

    assert list(iter_jsonl('{"a": 1}\n\n[2]\n', "x", objects=False)) == [(1, {"a": 1}), (3, [2])]
    with pytest.raises(JSONLError, match=r"^x:3: expected a JSON object, got list$"):
        list(iter_jsonl('{"a": 1}\n\n[2]\n', "x"))
    file = tmp_path / "f.jsonl"
    file.write_bytes(b'{"a": 1}\n{"b": \xff\n')
    assert list(read_jsonl(file, torn_tail=True)) == [(1, {"a": 1})]
    with pytest.raises(JSONLError, match=r"f\.jsonl:2: not valid UTF-8"):
        list(read_jsonl(file))
