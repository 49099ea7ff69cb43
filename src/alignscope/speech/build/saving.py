"""Saving a speech build and finding a finished one: the projector with its provenance, the LLM adapter beside
it, and ``build.json`` (written last, so its presence marks the build finished)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from alignscope.speech.build.config import LLM_ADAPTER_DIR, PROJECTOR_DIR, BuildResult, SpeechBuildConfig
from alignscope.speech.model.projector import CONFIG_FILE, Projector

__all__ = [
    "BUILD_FILE",
    "MAX_SHIPPED_BYTES",
    "build_result",
    "copy_llm_adapter",
    "finished_build",
    "save_build",
]

BUILD_FILE = "build.json"
MAX_SHIPPED_BYTES = 10 * 1024**2
"""Projectors are saved as float16 when that keeps them under this size (the shipped ones are package data)."""


def finished_build(out: Path, config: SpeechBuildConfig) -> dict[str, Any] | None:
    """The recorded build of ``out`` if it finished with ``config``'s identity, else None."""
    build_file, proj_cfg = out / BUILD_FILE, out / PROJECTOR_DIR / CONFIG_FILE
    if not build_file.is_file() or not proj_cfg.is_file():
        return None
    record = json.loads(build_file.read_text())
    if record.get("identity") != config.identity():
        return None
    return dict(record)


def save_build(
    out: Path,
    cfg: SpeechBuildConfig,
    projector: Projector,
    command: str,
    encoder_fingerprint: str,
    metrics: dict[str, Any],
    times: dict[str, float],
    adapter: Path | None,
) -> BuildResult:
    """Write the finished build into ``out``: the projector (float16 when that keeps it under
    :data:`MAX_SHIPPED_BYTES`) with its provenance (command, seed, config, metrics, times), the LLM adapter next
    to it, and ``build.json``, whose presence marks the build finished."""
    import alignscope

    n_params = sum(p.numel() for p in projector.parameters())
    dtype = torch.float16 if 2 * n_params <= MAX_SHIPPED_BYTES else None
    provenance = {
        "built_by": "alignscope.speech.build.builder.build_slm",
        "command": command,
        "library_call": f"build_slm(SpeechBuildConfig.from_dict({cfg.identity()!r}))",
        "alignscope_version": alignscope.__version__,
        "seed": cfg.seed,
        "llm": cfg.llm,
        "encoder": cfg.encoder,
        "encoder_fingerprint": encoder_fingerprint,
        "crop": cfg.crop,
        "config": cfg.to_dict(),
        "metrics": {k: _without_log(v) for k, v in metrics.items()},
        "times": times,
        "dtype": str(dtype or projector.linear_1.weight.dtype).replace("torch.", ""),
    }
    if adapter is not None:
        provenance["llm_adapter"] = LLM_ADAPTER_DIR
    directory = projector.save(out / PROJECTOR_DIR, dtype=dtype, metadata=provenance)
    copy_llm_adapter(adapter, directory)
    record = {"identity": cfg.identity(), "config": cfg.to_dict(), "metrics": metrics, "times": times}
    (out / BUILD_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return build_result(out, cfg, record, cached=False)


def _without_log(v: Any) -> Any:
    """A stage's metrics without the per-step log (the provenance keeps the summary; ``build.json`` all)."""
    return {k: x for k, x in v.items() if k != "log"} if isinstance(v, dict) else v


def build_result(out: Path, cfg: SpeechBuildConfig, record: dict[str, Any], cached: bool) -> BuildResult:
    """The :class:`BuildResult` of the build recorded in ``out`` (``record``: its ``build.json``)."""
    return BuildResult(
        out, out / PROJECTOR_DIR, cfg, dict(record.get("metrics", {})), dict(record.get("times", {})), cached
    )


def copy_llm_adapter(adapter: Path | None, directory: Path) -> None:
    """Put the LLM adapter ``adapter`` (None: none) next to the projector saved in ``directory``."""
    if adapter is None:
        return
    target = directory / LLM_ADAPTER_DIR
    if adapter.resolve() != target.resolve():
        shutil.copytree(adapter, target, dirs_exist_ok=True)
