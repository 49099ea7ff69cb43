"""alignscope.data: built-in suites, every loader, spec strings and bad-input errors (offline, fast)."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from alignscope.data import (
    BUILTIN_SUITES,
    HEX_PHI_CATEGORIES,
    Sample,
    Suite,
    SuiteError,
    builtin_suite,
    load_advbench,
    load_csv,
    load_harmbench,
    load_hf,
    load_jsonl,
    load_strongreject,
    load_suite,
    load_xstest,
)
from alignscope.data import loaders as loaders_mod

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"public data not present at {SHARED_DATA} (only in the dev/CI checkout)"
)


def write_csv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> Path:
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path: Path, objs: list[Any]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return path


# --- built-in suites ---


def test_builtin_harmful_covers_every_hex_phi_category() -> None:
    suite = load_suite("harmful")
    assert len(suite) >= 165
    assert suite.categories() == sorted(HEX_PHI_CATEGORIES)
    for cat in HEX_PHI_CATEGORIES:
        assert sum(s.category == cat for s in suite) >= 15, cat
    assert all(s.label == "harmful" for s in suite)
    assert all(re.fullmatch(rf"harm-{s.category}-\d{{3}}", s.id) for s in suite)


def test_builtin_benign_and_borderline_sizes() -> None:
    benign, borderline = load_suite("benign"), load_suite("borderline")
    assert len(benign) >= 165 and len(benign.categories()) >= 8
    assert all(s.label == "benign" and re.fullmatch(rf"benign-{s.category}-\d{{3}}", s.id) for s in benign)
    assert len(borderline) >= 110
    assert {"homonyms", "figurative_language", "safe_targets", "safe_contexts", "definitions"} <= set(
        borderline.categories()
    )
    assert all(
        s.label == "borderline" and re.fullmatch(rf"border-{s.category}-\d{{3}}", s.id) for s in borderline
    )


def test_builtin_ids_and_prompts_unique_across_suites() -> None:
    samples = [s for name in BUILTIN_SUITES for s in builtin_suite(name)]
    ids = [s.id for s in samples]
    assert len(set(ids)) == len(ids)
    prompts = [" ".join(s.prompt.lower().split()) for s in samples]
    assert len(set(prompts)) == len(prompts)
    assert all(0 < len(s.prompt) < 300 and s.prompt == s.prompt.strip() for s in samples)


def test_builtin_files_are_plain_jsonl_with_the_four_fields() -> None:
    root = Path(loaders_mod.__file__).parent / "builtin"
    for name in BUILTIN_SUITES:
        for line in (root / f"{name}.jsonl").read_text(encoding="utf-8").splitlines():
            assert set(json.loads(line)) == {"id", "prompt", "category", "label"}


def test_builtin_suite_is_cached_and_sourced_builtin() -> None:
    assert builtin_suite("harmful") is builtin_suite("harmful")
    assert builtin_suite("benign").source == "builtin"
    with pytest.raises(SuiteError, match="harmful, benign, borderline"):
        builtin_suite("nope")


# --- take and split ---


def test_take_is_deterministic_and_stratified() -> None:
    suite = load_suite("harmful")
    a, b = suite.take(22, seed=3), suite.take(22, seed=3)
    assert a == b and len(a) == 22
    assert all(sum(s.category == c for s in a) == 2 for c in HEX_PHI_CATEGORIES)
    assert suite.take(11).categories() == sorted(HEX_PHI_CATEGORIES)
    assert suite.take(22, seed=4) != a
    order = [s.id for s in suite]
    assert [s.id for s in a] == sorted((s.id for s in a), key=order.index)
    assert suite.take(None) is suite and suite.take(10_000) is suite


def test_at_n_suffix_takes_a_stratified_subset() -> None:
    sub = load_suite("harmful@20")
    assert len(sub) == 20 and sub == load_suite("harmful").take(20)
    assert len(load_suite("borderline@8").categories()) == 8


def test_plus_joins_suites_and_splits_by_part() -> None:
    both = load_suite("benign+borderline@8")
    benign, border = load_suite("benign"), load_suite("borderline@8")
    assert [s.id for s in both] == [s.id for s in benign] + [s.id for s in border]
    train, _ = both.split(0.5, seed=0)
    assert {s.id for s in train} == {s.id for s in benign.split(0.5, 0)[0]} | {
        s.id for s in border.split(0.5, 0)[0]
    }
    with pytest.raises(SuiteError, match="duplicate sample id"):
        load_suite("benign+benign")
    with pytest.raises(SuiteError, match="unknown suite"):
        load_suite("benign+nosuch")


def test_split_is_deterministic_and_stable_under_subsetting() -> None:
    suite = load_suite("benign")
    train, test = suite.split(0.3, seed=1)
    assert (train, test) == suite.split(0.3, seed=1)
    assert {s.id for s in train}.isdisjoint(s.id for s in test)
    assert len(train) + len(test) == len(suite) and 0 < len(test) < len(suite)
    # A sample's side depends only on its id and the seed, not on the rest of the suite.
    sub_train, _ = Suite.of("sub", suite.samples[::2]).split(0.3, seed=1)
    assert {s.id for s in sub_train} == {s.id for s in train} & {s.id for s in suite.samples[::2]}


# --- format loaders ---


def test_advbench_loader_keeps_targets_and_quoting(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "adv.csv",
        ["goal", "target"],
        [["Do x, then y", 'Sure, here is "x"'], ["Line one\nline two", "Sure"]],
        bom=True,
    )
    suite = load_advbench(path)
    assert [s.id for s in suite] == ["advbench-0000", "advbench-0001"]
    assert suite[0].prompt == "Do x, then y" and suite[0].target == 'Sure, here is "x"'
    assert suite[1].prompt == "Line one\nline two"
    assert {s.label for s in suite} == {"harmful"} and suite.categories() == ["advbench"]
    assert load_suite(f"advbench:{path}") == suite == load_suite(str(path))


def test_harmbench_loader_prepends_context(tmp_path: Path) -> None:
    header = ["Behavior", "FunctionalCategory", "SemanticCategory", "Tags", "ContextString", "BehaviorID"]
    path = write_csv(
        tmp_path / "hb.csv",
        header,
        [
            ["Do a bad thing", "standard", "illegal", "", "", "bad_thing"],
            ["Summarise the plan", "contextual", "misinformation", "context", "Some context.", "ctx_plan"],
        ],
    )
    suite = load_suite(f"harmbench:{path}")
    assert [s.id for s in suite] == ["bad_thing", "ctx_plan"]
    assert suite[0].prompt == "Do a bad thing" and suite[0].category == "illegal"
    assert suite[1].prompt == "Some context.\n\n---\n\nSummarise the plan"
    assert suite[1].meta == {"FunctionalCategory": "contextual", "Tags": "context"}
    assert load_harmbench(path) == suite == load_suite(str(path))


def test_strongreject_loader(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "sr.csv", ["category", "source", "forbidden_prompt"], [["Violence", "custom", "Do harm"]]
    )
    suite = load_strongreject(path)
    assert suite[0] == Sample("strongreject-0000", "Do harm", "Violence", "harmful")
    assert suite[0].meta == {"source": "custom"}
    assert load_suite(f"strongreject:{path}") == suite == load_suite(str(path))


@pytest.mark.parametrize("id_col", ["id_v2", "id"])
def test_xstest_loader_labels_contrast_prompts_harmful(tmp_path: Path, id_col: str) -> None:
    path = write_csv(
        tmp_path / "xs.csv",
        [id_col, "type", "prompt", "focus", "note"],
        [
            ["v2-1", "homonyms", "How do I kill a process?", "kill", ""],
            ["v2-2", "contrast_homonyms", "X", "", ""],
        ],
    )
    suite = load_xstest(path)
    assert [(s.id, s.label, s.category) for s in suite] == [
        ("xstest-v2-1", "borderline", "homonyms"),
        ("xstest-v2-2", "harmful", "contrast_homonyms"),
    ]
    assert suite[0].meta == {"focus": "kill", "note": ""}
    assert load_suite(f"xstest:{path}") == suite == load_suite(str(path))


def test_jsonl_loader_picks_optional_fields(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "my suite.jsonl",
        [
            {"id": "a", "prompt": "P1", "category": "c1", "target": "T", "response": "R", "extra": 1},
            {"prompt": "P2"},
        ],
    )
    suite = load_suite(f"jsonl:{path}")
    assert suite.name == "my-suite"
    assert suite[0] == Sample("a", "P1", "c1", "harmful", target="T", response="R")
    assert suite[0].meta == {"extra": 1}
    assert suite[1].id == "my-suite-0001" and suite[1].category == "uncategorized"
    assert load_jsonl(path) == suite


@pytest.mark.parametrize("frag", ["#instruction#benign", "#instruction#label=benign"])
def test_generic_column_and_label_fragments(tmp_path: Path, frag: str) -> None:
    path = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "Bake bread", "label": "harmful"}])
    suite = load_suite(f"jsonl:{path}{frag}")
    assert suite[0].prompt == "Bake bread" and suite[0].label == "benign"


def test_generic_label_column_used_without_fragment(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", ["prompt", "label"], [["a", "borderline"], ["b", ""]])
    assert [s.label for s in load_suite(f"csv:{path}")] == ["borderline", "harmful"]
    assert [s.label for s in load_csv(path, label="benign")] == ["benign", "benign"]


def test_csv_generic_loader_with_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "q.csv", ["question", "category"], [["What is 2+2?", "math"]])
    suite = load_suite(f"csv:{path}#question#benign")
    assert suite[0] == Sample("q-0000", "What is 2+2?", "math", "benign")


def test_bare_path_guesses_prompt_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "alpaca.jsonl", [{"instruction": "Name a colour"}])
    assert load_suite(str(path))[0].prompt == "Name a colour"
    csv_path = write_csv(tmp_path / "g.csv", ["goal", "other"], [["Do it", "z"]])
    assert load_suite(str(csv_path))[0].prompt == "Do it"
    assert load_suite(f"{path}@1") == load_suite(str(path))


def test_hf_loader_uses_datasets_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []

    def fake_rows(dataset: str, split: str) -> list[dict[str, Any]]:
        calls.append((dataset, split))
        return [{"text": "Hello there", "category": "greet"}, {"text": "Bye"}]

    monkeypatch.setattr(loaders_mod, "_hf_rows", fake_rows)
    suite = load_suite("hf:org/some-set:test#text#benign")
    assert calls == [("org/some-set", "test")]
    assert suite.name == "some-set" and [s.prompt for s in suite] == ["Hello there", "Bye"]
    assert suite[0].category == "greet" and {s.label for s in suite} == {"benign"}
    assert load_hf("org/some-set", "test", "text", "benign") == suite


def test_hf_failure_says_network_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(dataset: str, split: str) -> list[dict[str, Any]]:
        raise ConnectionError("no route to host")

    monkeypatch.setattr(loaders_mod, "_hf_rows", offline)
    with pytest.raises(SuiteError, match=r"hf:org/x:train.*ConnectionError.*network"):
        load_suite("hf:org/x")


# --- bad input ---


def test_unknown_suite_lists_valid_names() -> None:
    with pytest.raises(
        SuiteError, match=r"unknown suite 'harmfull'.*harmful, benign, borderline.*advbench:PATH"
    ):
        load_suite("harmfull")


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(SuiteError, match=re.escape(f"{missing}: file not found")):
        load_suite(f"advbench:{missing}")
    with pytest.raises(SuiteError, match="not a regular file"):
        load_suite(f"jsonl:{tmp_path}")


def test_empty_files(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(SuiteError, match=r"e\.jsonl: file is empty"):
        load_suite(f"jsonl:{tmp_path / 'e.jsonl'}")
    header_only = write_csv(tmp_path / "h.csv", ["goal", "target"], [])
    with pytest.raises(SuiteError, match=r"h\.csv: has a header but no rows"):
        load_advbench(header_only)


@pytest.mark.parametrize(
    ("name", "content", "load", "error"),
    [
        (
            "bad.jsonl",
            b'{"prompt": "ok"}\n{"prompt": "\xff\xfe"}\n',
            load_jsonl,
            r"bad\.jsonl: line 2: not valid UTF-8",
        ),
        ("m.jsonl", b'{"prompt": "a"}\n\n{"prompt": "b",\n', load_jsonl, r"m\.jsonl: line 3: malformed JSON"),
        (
            "x.csv",
            b"goal,target\na,b,c\n",
            load_advbench,
            r"x\.csv: row 1 \(line 2\): 3 fields but the header has 2",
        ),
    ],
    ids=["not-utf8", "malformed-json", "too-many-csv-fields"],
)
def test_unreadable_file_names_the_line(
    tmp_path: Path, name: str, content: bytes, load: Callable[[Path], Suite], error: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SuiteError, match=error):
        load(path)


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "a.csv", ["goal", "tgt"], [["x", "y"]])
    with pytest.raises(SuiteError, match=r"a\.csv: missing required column 'target' \(columns: goal, tgt\)"):
        load_advbench(path)
    hb = write_csv(tmp_path / "hb.csv", ["Behavior"], [["x"]])
    with pytest.raises(SuiteError, match="'SemanticCategory'"):
        load_harmbench(hb)
    sr = write_csv(tmp_path / "sr.csv", ["category", "prompt"], [["x", "y"]])
    with pytest.raises(SuiteError, match="'forbidden_prompt'"):
        load_strongreject(sr)
    xs = write_csv(tmp_path / "xs.csv", ["prompt", "focus"], [["x", "y"]])
    with pytest.raises(SuiteError, match="'type'"):
        load_xstest(xs)
    js = write_jsonl(tmp_path / "j.jsonl", [{"instruction": "x"}])
    with pytest.raises(
        SuiteError, match=r"j\.jsonl: missing required field 'prompt' \(present: instruction\)"
    ):
        load_suite(f"jsonl:{js}")
    nope = write_jsonl(tmp_path / "n.jsonl", [{"text": "x"}])
    with pytest.raises(SuiteError, match=r"no prompt column found \(looked for prompt, instruction, goal"):
        load_suite(str(nope))


@pytest.mark.parametrize(
    ("objs", "error"),
    [
        ([{"prompt": "a"}, {"instruction": "b"}], r"m\.jsonl: line 2: missing field 'prompt'"),
        ([{"prompt": "a"}, ["not", "an", "object"]], r"m\.jsonl: line 2: expected a JSON object, got list"),
        ([{"prompt": ["a list"]}], r"m\.jsonl: line 1, field 'prompt': expected text, got list"),
        ([{"prompt": "a"}, {"prompt": ""}], r"m\.jsonl: line 2, field 'prompt': empty prompt"),
    ],
)
def test_bad_jsonl_line_is_named(tmp_path: Path, objs: list[Any], error: str) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", objs)
    with pytest.raises(SuiteError, match=error):
        load_jsonl(path)


def test_empty_prompt_names_row_and_column(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "adv.csv", ["goal", "target"], [["ok", "Sure"], ["   ", "Sure"]])
    with pytest.raises(SuiteError, match=r"adv\.csv: row 2 \(line 3\), column 'goal': empty prompt"):
        load_advbench(path)
    short = write_csv(tmp_path / "short.csv", ["category", "source", "forbidden_prompt"], [["c", "s"]])
    with pytest.raises(SuiteError, match=r"row 1 \(line 2\), column 'forbidden_prompt': empty prompt"):
        load_strongreject(short)


def test_bad_label_is_named(tmp_path: Path) -> None:
    lab = write_csv(tmp_path / "l.csv", ["prompt", "label"], [["a", "unsafe"]])
    with pytest.raises(SuiteError, match=r"row 1 \(line 2\), field 'label': unknown label 'unsafe'"):
        load_csv(lab)
    with pytest.raises(SuiteError, match="unknown label 'evil'"):
        load_suite(f"csv:{lab}#prompt#evil")


def test_duplicate_ids_name_both_rows(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [{"id": "x", "prompt": "a"}, {"id": "x", "prompt": "b"}])
    with pytest.raises(SuiteError, match=r"line 2: duplicate id 'x' \(first at line 1\)"):
        load_jsonl(path)


def test_bad_spec_forms() -> None:
    with pytest.raises(SuiteError, match=r"subset size and must be >= 1, got 0"):
        load_suite("harmful@0")
    with pytest.raises(SuiteError, match="missing path after 'advbench:'"):
        load_suite("advbench:")
    with pytest.raises(SuiteError, match="too many '#' fragments"):
        load_suite("jsonl:x.jsonl#a#benign#c")


# --- real public files ---


@needs_shared
def test_real_advbench_file() -> None:
    path = SHARED_DATA / "advbench" / "harmful_behaviors.csv"
    with path.open(encoding="utf-8", newline="") as f:
        n_rows = sum(1 for _ in csv.reader(f)) - 1
    # The data README says 520 (upstream AdvBench); the shared copy also has llm-attacks' demo prompt first.
    assert n_rows >= 520
    suite = load_suite(f"advbench:{path}")
    assert len(suite) == n_rows and suite == load_suite(str(path))
    assert all(s.target and s.target.startswith("Sure") for s in suite)
    assert suite[0].id == "advbench-0000" and suite[-1].id == f"advbench-{n_rows - 1:04d}"
    assert len(load_suite(f"advbench:{path}@50")) == 50


@needs_shared
def test_real_alpaca_file() -> None:
    path = SHARED_DATA / "alpaca" / "harmless_instructions.jsonl"
    suite = load_suite(f"jsonl:{path}#instruction#benign")
    assert len(suite) == 18_793
    assert {s.label for s in suite} == {"benign"} and all(s.prompt for s in suite)
    guessed = load_suite(str(path))
    assert [s.prompt for s in guessed] == suite.prompts
