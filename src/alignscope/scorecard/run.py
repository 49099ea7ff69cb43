"""``run_scorecard``: every family against every model, into one run directory and one report.

Layout of a scorecard run::

    <run>/config.json, samples.jsonl    the scorecard's config; stage ``scorecard`` (one record per model and
                                        family, written when the family finishes), plus the stages shared by
                                        every model (the source's ``harmful_responses``, the base model's
                                        ``base_answers``)
    <run>/models/<model>/               one sub-run per model: every family's per-sample records in the
                                        experiments' usual stages, the guard's decisions, its own report.html
    <run>/report.html                   the scorecard: worst family, over-refusal, models x families, leaderboard

A family with a ``scorecard`` record is not run again on ``--resume``; one killed part-way resumes from its
per-sample records.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections.abc import Mapping
from typing import Any

from alignscope.models.base import ChatModel
from alignscope.models.pool import ModelPool, pool_of
from alignscope.runs.store import RunDir
from alignscope.scorecard.config import FAMILIES, ScorecardConfig
from alignscope.scorecard.families import RUNNERS, FamilyContext, scratch_dir
from alignscope.scorecard.guard import ModelGuards
from alignscope.scorecard.result import FamilyScore, ScorecardResult

log = logging.getLogger("alignscope.scorecard")

STAGE = "scorecard"
SUBRUN_COMMAND = "scorecard model"


def model_slug(spec: str) -> str:
    """A directory name for a model spec: readable, and unique by a short hash of the whole spec."""
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "_", spec.rstrip("/").rsplit("/", 1)[-1]).strip("_")[:40] or "model"
    return f"{tail}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def model_run(run: RunDir, spec: str, config: ScorecardConfig) -> RunDir:
    """The sub-run of ``spec`` inside the scorecard's ``run`` (made, or reopened on resume)."""
    sub_config = {**config.to_dict(), "model": spec, "scorecard": str(run.path)}
    sub_config.pop("models")
    return RunDir.create(SUBRUN_COMMAND, sub_config, out=run.path / "models" / model_slug(spec), resume=True)


def run_scorecard(
    config: ScorecardConfig | None = None,
    run: RunDir | None = None,
    *,
    models: ModelPool | Mapping[str, ChatModel] | None = None,
    speech_models: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> ScorecardResult:
    """Score every model of ``config`` against every selected family.

    Args:
        config: the settings (default :class:`ScorecardConfig`).
        run: the run directory (report, resume); None runs in memory (a temporary directory holds what the
            fine-tuning and audio families must write) and returns the scores only.
        models: already-loaded models by spec (tests pass tiny models), or a pool to share.
        speech_models: speech LLMs by model spec, instead of loading each model's speech build.
        progress: progress bars.
    """
    config = config or ScorecardConfig()
    config.preflight()
    pool = pool_of(models, config.device, config.dtype)
    finished = run.done(STAGE) if run is not None else {}
    scratch = scratch_dir()
    scores: dict[str, dict[str, FamilyScore]] = {}
    try:
        for spec in config.models:
            sub = model_run(run, spec, config) if run is not None else None
            ctx: FamilyContext | None = None
            mine: dict[str, FamilyScore] = {}
            for family in FAMILIES:
                key = f"{spec}|{family}"
                if family not in config.families:
                    mine[family] = FamilyScore(family, "not_selected")
                elif key in finished:
                    mine[family] = FamilyScore.from_dict(finished[key]["score"])
                else:
                    if ctx is None:
                        ctx = _context(config, spec, pool, sub, run, scratch, speech_models, progress)
                    log.info("scorecard: %s against %s", family, spec)
                    score = RUNNERS[family](ctx)
                    if run is not None:
                        run.append({"stage": STAGE, "key": key, "model": spec, "family": family,
                                    "score": score.to_dict()})  # fmt: skip
                    mine[family] = score
            scores[spec] = mine
            if sub is not None and ctx is not None:
                from alignscope.report.build import rebuild

                rebuild(sub)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = ScorecardResult(
        scores, config.judge, config.guard, {"profile": config.profile, **config.sizes()}
    )
    if run is not None:
        from alignscope.report.build import rebuild

        rebuild(run)
    return result


def _context(
    config: ScorecardConfig,
    spec: str,
    pool: ModelPool,
    sub: RunDir | None,
    top: RunDir | None,
    scratch: Any,
    speech_models: Mapping[str, Any] | None,
    progress: bool,
) -> FamilyContext:
    model = pool.get(spec)
    guards = ModelGuards.build(config.guard, model, sub)
    return FamilyContext(
        config, spec, model, pool, pool.judge(config.judge), sub, top, guards, scratch,
        dict(speech_models or {}), progress,
    )  # fmt: skip
