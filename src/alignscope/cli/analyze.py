"""``alignscope analyze safety-layers``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from alignscope.cli.apps import analyze_app
from alignscope.cli.common import DeviceOpt, ModelOpt, OutOpt, ResumeOpt, SeedOpt, done, handle_errors
from alignscope.validation import at_least, positive


@analyze_app.command("safety-layers")
@handle_errors
def analyze_safety_layers_cmd(
    model: ModelOpt = "smollm2",
    control: Annotated[
        str | None,
        typer.Option(
            help="Model with no safety training, scanned on the same prompts and pairs (the paper's control)."
        ),
    ] = None,
    localize: Annotated[bool, typer.Option(help="Pin the range down by over-rejection (slow).")] = False,
    initial_range: Annotated[
        str | None,
        typer.Option(
            help="START-END (inclusive): start the localisation here instead of the detected range."
        ),
    ] = None,
    n: Annotated[int, typer.Option(help="Normal and malicious prompts each.")] = 100,
    draws: Annotated[int, typer.Option(help="Random pairs per pair type (the paper: 500).")] = 500,
    alpha: Annotated[float | None, typer.Option(help="Over-rejection weight scale (default 1.15).")] = None,
    template: Annotated[str, typer.Option(help="chat (the model's template) or plain.")] = "chat",
    normal: Annotated[str, typer.Option(help="Normal prompts suite.")] = "benign",
    malicious: Annotated[str, typer.Option(help="Malicious prompts suite.")] = "harmful",
    overrejection: Annotated[str, typer.Option(help="Over-rejection suite.")] = "borderline",
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Safety layers (Li et al. 2024): cosine gap curve, detected range, over-rejection, probe guard."""
    from alignscope.analysis.safety_analysis import analyze_safety_layers
    from alignscope.analysis.safety_layers import SafetyLayerScanConfig
    from alignscope.data import load_suite
    from alignscope.report.build import rebuild
    from alignscope.runs import RunDir

    at_least("--n", n, 2)  # the scan compares pairs of normal and of malicious prompts
    positive("--alpha", alpha)
    scan_config = SafetyLayerScanConfig(draws=draws, seed=seed, template=template)  # type: ignore[arg-type]
    start_range: tuple[int, int] | None = None
    if initial_range is not None:
        first, sep, last = initial_range.partition("-")
        if not (sep and first.strip().isdigit() and last.strip().isdigit()) or int(first) > int(last):
            raise typer.BadParameter(f"--initial-range expects START-END, e.g. 6-20; got {initial_range!r}")
        start_range = (int(first), int(last))
    for spec in (normal, malicious, overrejection):
        load_suite(spec)  # a bad suite fails here, before the run directory and the model
    config = {
        "model": model,
        "control": control,
        "localize": localize,
        "initial_range": initial_range,
        "n": n,
        "draws": draws,
        "alpha": alpha,
        "template": template,
        "normal": normal,
        "malicious": malicious,
        "overrejection": overrejection,
        "seed": seed,
    }
    run = RunDir.create("analyze safety-layers", config, out=out, resume=resume)
    extra: dict[str, Any] = {"alpha": alpha} if alpha is not None else {}
    analyze_safety_layers(
        model,
        control=control,
        localize=localize,
        initial_range=start_range,
        out=run,
        normal=normal,
        malicious=malicious,
        overrejection=overrejection,
        n_prompts=n,
        config=scan_config,
        device=device,
        progress=True,
        **extra,
    )
    rebuild(run)
    done(run)
