"""A run directory on disk.

Layout::

    <run>/config.json     the resolved configuration (command, model specs, suites, judge, decoding, seed)
    <run>/samples.jsonl   one JSON object per sample, appended and flushed as it is produced
    <run>/metrics.json    aggregate metrics with confidence intervals
    <run>/plots/          PNG and SVG figures
    <run>/report.html     the human-readable report

Every sample record carries a ``stage`` (e.g. ``"refusal"``, ``"prefill"``) and a ``key`` unique within its
stage, so ``--resume`` can skip what a killed run already finished.

A run killed mid-write (or a full disk) can leave a torn last record: a partial line with no newline, or a last
line that is not valid JSON. Readers skip it, and the next :meth:`RunDir.append` first cuts it off (logging what
it dropped), so the record appended after it starts on a line of its own and everything before it is kept. A
last record that is complete JSON and only lacks its newline is kept (the newline is added).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from alignscope.jsonl import JSONLError, parse_line, read_jsonl

log = logging.getLogger("alignscope.runs")

SAMPLES = "samples.jsonl"
CONFIG = "config.json"
METRICS = "metrics.json"

RESUME_COMPATIBLE: frozenset[str] = frozenset({"batch_size", "gen_batch_size", "device", "progress"})
"""Config keys (at any depth: ``batch_size`` also matches ``gcg.batch_size``) a resumed run may change: they
decide how samples are computed (prompts per forward pass, the device, progress bars), not which samples a run
holds or what they are, so finished samples stay valid. Any other difference refuses the resume. ``dtype`` is
not among them: another precision changes the numbers the remaining samples would be computed with."""

_NOT_SETTINGS = frozenset({"resume", "command", "resumed_with"})


class RunError(RuntimeError):
    """A run directory is missing, clashes with an existing run, or holds a malformed file."""


class RunDir:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    # -- creation -------------------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        command: str,
        config: dict[str, Any],
        out: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] = "runs",
        resume: bool = False,
    ) -> RunDir:
        """Make (or, with ``resume``, reopen) the run directory for ``command``.

        Without ``out`` a fresh ``<root>/<command>-<timestamp>`` is made. An existing non-empty ``out`` is only
        reused with ``resume=True``, and then its recorded config must match ``config`` apart from the keys in
        :data:`RESUME_COMPATIBLE` (and the ``resume`` flag itself), so a resumed run cannot silently mix
        settings. Accepted differences are logged and recorded under ``resumed_with`` in ``config.json``.
        """
        if out is None:
            stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            path = Path(root) / f"{command.replace(' ', '-')}-{stamp}"
            n = 1
            while path.exists():
                n += 1
                path = Path(root) / f"{command.replace(' ', '-')}-{stamp}-{n}"
        else:
            path = Path(out)
        run = cls(path)
        cfg_file = path / CONFIG
        if cfg_file.exists():
            if not resume:
                raise RunError(
                    f"run directory {path} already holds a run; pass --resume to continue it or choose another --out"
                )
            old = run.config()
            new = json.loads(json.dumps(config, default=_json_default))  # tuples as lists, as recorded
            diff = _differences(old, new)
            refused = [k for k in diff if k.rsplit(".", 1)[-1] not in RESUME_COMPATIBLE]
            if refused:
                raise RunError(
                    f"cannot resume {path}: its config differs in {', '.join(refused)} (a resumed run may "
                    f"change only {', '.join(sorted(RESUME_COMPATIBLE))})"
                )
            if diff:
                changes = {k: [_lookup(old, k), _lookup(new, k)] for k in diff}
                log.warning(
                    "resuming %s with changed %s: accepted, as these do not change finished samples",
                    path,
                    ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in changes.items()),
                )
                run._write_json(CONFIG, {**old, "resumed_with": [*old.get("resumed_with", []), changes]})
            return run
        path.mkdir(parents=True, exist_ok=True)
        (path / "plots").mkdir(exist_ok=True)
        run._write_json(CONFIG, {**config, "command": command})
        return run

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        run = cls(path)
        if not (run.path / CONFIG).exists():
            raise RunError(f"{path} is not an alignscope run directory (no {CONFIG})")
        return run

    # -- files ------------------------------------------------------------------------------------------------
    @property
    def plots_dir(self) -> Path:
        d = self.path / "plots"
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def report_path(self) -> Path:
        return self.path / "report.html"

    def config(self) -> dict[str, Any]:
        data = self._read_json(CONFIG)
        if not isinstance(data, dict):
            raise RunError(f"{self.path / CONFIG} does not hold a JSON object")
        return data

    def append(self, record: dict[str, Any]) -> None:
        """Append one sample record and flush (and fsync) it to disk at once, so a crash loses at most the
        record being written. A torn last record left by an earlier crash is cut off first (see the module
        docstring)."""
        if "stage" not in record or "key" not in record:
            raise ValueError("a sample record needs 'stage' and 'key'")
        line = json.dumps(record, ensure_ascii=False, default=_json_default) + "\n"
        file = self.path / SAMPLES
        with open(file, "a+b") as f:
            _repair_tail(f, file)
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.append(r)

    def records(self, stage: str | None = None) -> list[dict[str, Any]]:
        return list(self.iter_records(stage))

    def iter_records(self, stage: str | None = None) -> Iterator[dict[str, Any]]:
        """Sample records in the order written. A torn last record (a run killed mid-write, at any byte) is
        skipped; a malformed line elsewhere is an error naming the line."""
        for rec in iter_jsonl_records(self.path / SAMPLES):
            if stage is None or rec.get("stage") == stage:
                yield rec

    def done(self, stage: str) -> dict[str, dict[str, Any]]:
        """Finished records of ``stage`` keyed by their ``key`` (the last one wins)."""
        return {r["key"]: r for r in self.iter_records(stage)}

    def rewrite_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace samples.jsonl atomically (used by re-judging); the old file is kept as samples.jsonl.bak."""
        file = self.path / SAMPLES
        tmp = file.with_suffix(".jsonl.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if file.exists():
            os.replace(file, file.with_suffix(".jsonl.bak"))
        os.replace(tmp, file)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self._write_json(METRICS, metrics)

    def metrics(self) -> dict[str, Any]:
        if not (self.path / METRICS).exists():
            return {}
        data = self._read_json(METRICS)
        return data if isinstance(data, dict) else {}

    def write_config(self, config: dict[str, Any]) -> None:
        """Replace the recorded config (used when a run is re-judged)."""
        self._write_json(CONFIG, config)

    def _write_json(self, name: str, data: Any) -> None:
        tmp = self.path / (name + ".tmp")
        tmp.write_text(
            json.dumps(data, indent=2, ensure_ascii=False, default=_json_default), encoding="utf-8"
        )
        os.replace(tmp, self.path / name)

    def _read_json(self, name: str) -> Any:
        file = self.path / name
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise RunError(f"{file} is missing") from e
        except json.JSONDecodeError as e:
            raise RunError(f"{file}: malformed JSON at line {e.lineno} ({e.msg})") from e

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def iter_jsonl_records(file: Path) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSONL records file (``samples.jsonl``), in order; nothing if it does not exist.

    The last non-blank line is skipped when it is torn (not valid UTF-8 JSON: a write cut short, at any byte);
    a malformed line before it raises :class:`RunError` naming the file and line.
    """
    if not file.exists():
        return
    try:
        for _, rec in read_jsonl(file, torn_tail=True):
            yield rec
    except JSONLError as e:
        raise RunError(str(e)) from None


def _repair_tail(f: IO[bytes], file: Path, block: int = 1 << 16) -> None:
    """Make the records file ``f`` (opened ``a+b``) end in a complete line before a record is appended.

    The last non-blank line, when it is not a JSON object (a torn write), is cut off and logged; a complete
    object that only lacks its newline gets one. Reads backwards from the end, so the cost does not grow with
    the file.
    """
    size = f.seek(0, os.SEEK_END)
    end = size  # end of the last non-blank line
    while end > 0:
        chunk = _read_at(f, max(0, end - block), end - max(0, end - block))
        stripped = chunk.rstrip(b" \t\r\n")
        end -= len(chunk) - len(stripped)
        if stripped:
            break
    if end == 0:
        if size:
            f.truncate(0)  # whitespace only
        return
    start, line = end, b""  # the last non-blank line is line == bytes [start, end)
    while start > 0:
        lo = max(0, start - block)
        line = _read_at(f, lo, start - lo) + line
        start = lo
        nl = line.rfind(b"\n")
        if nl >= 0:
            start += nl + 1
            line = line[nl + 1 :]
            break
    _, why = parse_line(line)
    if why is not None:
        f.truncate(start)
        log.warning(
            "%s: dropped a torn last record left by an interrupted write (%d bytes, %s: %s); "
            "the %d bytes before it are kept",
            file,
            size - start,
            why,
            _preview(line),
            start,
        )
    elif b"\n" not in _read_at(f, end, size - end):
        f.write(b"\n")
        log.info("%s: the last record lacked its newline; added it", file)


def _preview(raw: bytes, width: int = 60) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    return repr(text if len(text) <= width else text[:width] + "...")


def _read_at(f: IO[bytes], pos: int, n: int) -> bytes:
    if n <= 0:
        return b""
    f.seek(pos)
    return f.read(n)


_ABSENT = object()


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs (nested dicts compared key by key)."""
    out: list[str] = []
    for k in sorted(set(old) | set(new)):
        if not prefix and k in _NOT_SETTINGS:
            continue
        a, b = old.get(k, _ABSENT), new.get(k, _ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def _lookup(cfg: dict[str, Any], dotted: str) -> Any:
    value: Any = cfg
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
