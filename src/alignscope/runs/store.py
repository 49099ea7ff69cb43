"""A run directory on disk.

Layout::

    <run>/config.json     the resolved configuration (command, model specs, suites, judge, decoding, seed)
    <run>/samples.jsonl   one JSON object per sample, appended and flushed as it is produced
    <run>/metrics.json    aggregate metrics with confidence intervals
    <run>/plots/          PNG and SVG figures
    <run>/report.html     the human-readable report

Every sample record carries a ``stage`` (e.g. ``"refusal"``, ``"prefill"``) and a ``key`` unique within its
stage, so ``--resume`` can skip what a killed run already finished.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

SAMPLES = "samples.jsonl"
CONFIG = "config.json"
METRICS = "metrics.json"


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
        reused with ``resume=True``, and then its recorded config must match ``config`` (apart from the
        ``resume`` flag itself), so a resumed run cannot silently mix settings.
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
            if _comparable(old) != _comparable(config):
                diff = sorted(
                    k for k in set(old) | set(config) if old.get(k) != config.get(k) and k != "resume"
                )
                raise RunError(f"cannot resume {path}: its config differs in {', '.join(diff)}")
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
        """Append one sample record and flush it to disk at once."""
        if "stage" not in record or "key" not in record:
            raise ValueError("a sample record needs 'stage' and 'key'")
        line = json.dumps(record, ensure_ascii=False, default=_json_default)
        with open(self.path / SAMPLES, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def extend(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self.append(r)

    def records(self, stage: str | None = None) -> list[dict[str, Any]]:
        return list(self.iter_records(stage))

    def iter_records(self, stage: str | None = None) -> Iterator[dict[str, Any]]:
        """Sample records in the order written. A truncated last line (a run killed mid-write) is skipped;
        a malformed line elsewhere is an error naming the line."""
        file = self.path / SAMPLES
        if not file.exists():
            return
        lines = file.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                if i == len(lines):
                    continue
                raise RunError(f"{file}:{i}: malformed JSON ({e.msg})") from e
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


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in {"resume", "command"}}


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
