"""Caches shared by processes: three processes building the same entry on an empty cache all succeed, the
entry is built once and complete; the real GGUF-dequantisation and Whisper-conversion paths likewise."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alignscope.cachefs import atomic_file, build_dir

N_FILES = 5


def _fake_convert(out: Path, log: Path) -> None:
    """A slow converter: several files, a pause between them, as a real conversion writes its shards."""
    with open(log, "a") as f:  # O_APPEND: one line per build, whoever runs it
        f.write(f"{os.getpid()}\n")
    for i in range(N_FILES):
        (out / f"part{i}.bin").write_bytes(bytes([i]) * 1000)
        time.sleep(0.05)
    (out / "done.json").write_text(json.dumps({"files": N_FILES}))


def _complete(path: Path) -> bool:
    return (path / "done.json").is_file()


def _build_worker(target: str, log: str, start: float) -> str:
    while time.time() < start:  # start together
        time.sleep(0.005)
    return str(build_dir(Path(target), lambda tmp: _fake_convert(tmp, Path(log)), ready=_complete))


def _run_three(fn: Any, *args: Any) -> list[Any]:
    ctx = mp.get_context("spawn")
    with ctx.Pool(3) as pool:
        start = time.time() + 3.0  # the spawned interpreters need a moment to import
        return pool.starmap(fn, [(*args, start)] * 3)


def test_three_processes_build_one_entry_once(tmp_path: Path) -> None:
    target, log = tmp_path / "cache" / "entry", tmp_path / "builds.log"
    results = _run_three(_build_worker, str(target), str(log))
    assert results == [str(target)] * 3
    assert len(log.read_text().splitlines()) == 1  # built once; the others waited and reused it
    assert sorted(p.name for p in target.iterdir()) == sorted(
        [*(f"part{i}.bin" for i in range(N_FILES)), "done.json"]
    )
    assert all((target / f"part{i}.bin").read_bytes() == bytes([i]) * 1000 for i in range(N_FILES))
    leftovers = [p.name for p in target.parent.iterdir() if p.name != "entry"]
    assert leftovers == [".entry.lock"]  # no temporary directories left behind


def test_failed_build_leaves_nothing_and_stale_leftovers_are_cleared(tmp_path: Path) -> None:
    target = tmp_path / "entry"

    def broken(out: Path) -> None:
        (out / "half.bin").write_bytes(b"x")
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        build_dir(target, broken, ready=_complete)
    assert not target.exists() and not list(tmp_path.glob(".entry.*.tmp"))
    # a killed builder's temporary directory and an unfinished entry of an older version
    (tmp_path / ".entry.12345.tmp").mkdir()
    target.mkdir()
    (target / "part0.bin").write_bytes(b"old")
    build_dir(target, lambda out: _fake_convert(out, tmp_path / "log"), ready=_complete)
    assert _complete(target) and (target / "part0.bin").read_bytes() == bytes([0]) * 1000
    assert sorted(p.name for p in tmp_path.glob(".entry*")) == [".entry.lock"]
    # ready: returned without building again
    build_dir(target, lambda out: pytest.fail("built twice"), ready=_complete)


def _file_worker(path: str, start: float) -> int:
    while time.time() < start:
        time.sleep(0.005)
    for _ in range(50):
        with atomic_file(Path(path)) as tmp, open(tmp, "wb") as f:
            for i in range(20):
                f.write(bytes([i]) * 500)
                f.flush()
    return os.getpid()


def test_three_processes_write_one_file(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "clip.bin"
    _run_three(_file_worker, str(path))
    assert path.read_bytes() == b"".join(bytes([i]) * 500 for i in range(20))
    assert [p.name for p in path.parent.iterdir()] == ["clip.bin"]


def test_atomic_file_keeps_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]


# -- the real cache paths -----------------------------------------------------------------------------------
def _gguf_worker(cache: str, gguf: str, log: str, start: float) -> str:
    """The real ``_dequantised`` with transformers' GGUF reading replaced by a tiny random model."""
    os.environ["ALIGNSCOPE_CACHE"] = cache
    import transformers

    from alignscope.models import loading
    from alignscope.testing import tiny_llama, tiny_tokenizer

    def model(*args: Any, **kwargs: Any) -> Any:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # a real dequantisation takes seconds: give the others time to arrive
        return tiny_llama(len(tiny_tokenizer()), seed=0)

    transformers.AutoModelForCausalLM.from_pretrained = model  # type: ignore[method-assign]
    transformers.AutoTokenizer.from_pretrained = lambda *a, **k: tiny_tokenizer()  # type: ignore[method-assign]
    while time.time() < start:
        time.sleep(0.005)
    return str(loading._dequantised(Path(gguf), key="tiny"))


def test_gguf_dequantisation_cache_with_three_processes(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF stand-in")  # only its path, size and mtime key the cache
    log = tmp_path / "dequantised.log"
    results = _run_three(_gguf_worker, str(tmp_path / "cache"), str(gguf), str(log))
    assert len(set(results)) == 1 and len(log.read_text().splitlines()) == 1
    out = Path(results[0])
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(str(out)).config.num_hidden_layers == 2
    assert [p.name for p in out.parent.iterdir() if p != out] == [f".{out.name}.lock"]


def _whisper_worker(cache: str, src: str, log: str, start: float) -> str:
    os.environ["ALIGNSCOPE_CACHE"] = cache
    from alignscope.speech.model import whisper

    convert = whisper._convert_to_hf

    def counted(source: Path, out: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        convert(source, out)
        time.sleep(0.5)

    whisper._convert_to_hf = counted  # type: ignore[assignment]
    while time.time() < start:
        time.sleep(0.005)
    return str(whisper._cached_hf_dir(Path(src)))


def test_whisper_conversion_cache_with_three_processes(tmp_path: Path) -> None:
    """Three processes converting one CTranslate2 Whisper on an empty cache (before: SafetensorError)."""
    from alignscope.speech.model.whisper import whisper_encoder
    from test_speech_io import _tiny_ct2_whisper

    src = tmp_path / "ct2"
    _tiny_ct2_whisper(src, seed=0)
    log = tmp_path / "converted.log"
    results = _run_three(_whisper_worker, str(tmp_path / "cache"), str(src), str(log))
    assert len(set(results)) == 1 and len(log.read_text().splitlines()) == 1
    out = Path(results[0])
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert [p.name for p in out.parent.iterdir() if p != out] == [f".{out.name}.lock"]
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    os.environ["ALIGNSCOPE_CACHE"] = str(tmp_path / "cache")
    try:
        encoder = whisper_encoder(src)  # reads the cached conversion
    finally:
        del os.environ["ALIGNSCOPE_CACHE"]
    assert encoder.d_model == 32 and (out / "model.safetensors").stat().st_mtime_ns == stamp


def test_speak_suite_in_three_processes(tmp_path: Path) -> None:
    """Spoken-suite WAVs: three processes speaking one suite into one directory (fake synthesis)."""
    results = _run_three(_speak_worker, str(tmp_path / "spoken"), str(tmp_path / "spoken.log"))
    assert len(set(results)) == 1
    manifest = [json.loads(line) for line in Path(results[0]).read_text().splitlines()]
    assert len(manifest) == 3
    assert len((tmp_path / "spoken.log").read_text().splitlines()) == 3  # each clip synthesised once
    for r in manifest:
        assert (tmp_path / "spoken" / r["audio"]).stat().st_size > 44
    assert sorted(p.name for p in (tmp_path / "spoken").iterdir() if p.suffix != ".wav") == [
        ".clips.lock",
        "manifest.jsonl",
    ]


def _speak_worker(out: str, log: str, start: float) -> str:
    from alignscope.speech.spoken import tts
    from alignscope.speech.spoken.suites import speak_suite

    def synthesize(text: str, *args: Any, **kwargs: Any) -> np.ndarray:
        with open(log, "a") as f:
            f.write(f"{text[:20]}\n")
        time.sleep(0.2)
        return np.full(1600, 0.1, np.float32)

    tts.synthesize = synthesize  # type: ignore[assignment]
    while time.time() < start:
        time.sleep(0.005)
    return str(speak_suite("harmful@3", out, progress=False).manifest)
