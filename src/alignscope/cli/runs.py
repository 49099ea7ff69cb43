"""``alignscope judge RUN_DIR`` (re-judge) and ``alignscope report RUN_DIR`` (rebuild)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from alignscope.cli.apps import app
from alignscope.cli.common import DeviceOpt, JudgeOpt, console, done, handle_errors


@app.command("judge")
@handle_errors
def judge_run(
    run_dir: Annotated[Path, typer.Argument(help="An existing run directory.")],
    judge: JudgeOpt = "keyword",
    device: DeviceOpt = None,
) -> None:
    """Re-judge every sample of a run with another judge, without regenerating; rebuilds metrics and report."""
    from alignscope.runs import RunDir
    from alignscope.runs.rejudge import rejudge_run

    run = RunDir.open(run_dir)
    n = rejudge_run(run, judge, device=device)
    console.print(f"re-judged {n} samples with {judge}")
    done(run)


@app.command("report")
@handle_errors
def report(run_dir: Annotated[Path, typer.Argument(help="An existing run directory.")]) -> None:
    """Rebuild metrics.json and report.html of a run from its samples."""
    from alignscope.report.build import rebuild
    from alignscope.runs import RunDir

    run = RunDir.open(run_dir)
    rebuild(run)
    done(run)
