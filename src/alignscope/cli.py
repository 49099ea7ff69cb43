"""The ``alignscope`` command line: a thin shell that parses options and calls the library."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from alignscope.models.base import ModelError
from alignscope.validation import OptionError, at_least, positive

app = typer.Typer(
    help="Measure, attack and deepen the safety alignment of language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
attack_app = typer.Typer(
    help="Attacks: prefilling, decoding-parameter exploit, GCG, fine-tuning, audio PGD and transfer.",
    no_args_is_help=True,
)
analyze_app = typer.Typer(help="White-box analyses: per-token KL, safety layers.", no_args_is_help=True)
app.add_typer(attack_app, name="attack")
app.add_typer(analyze_app, name="analyze")
console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Model spec: smollm2, a HF directory, a .gguf file, a PEFT adapter directory, or a hub id.",
    ),
]
JudgeOpt = Annotated[
    str, typer.Option(help="Judge spec: keyword, keyword:list=gcg, llm-rubric[:MODEL], strongreject[:MODEL].")
]
OutOpt = Annotated[Path | None, typer.Option(help="Run directory (default: runs/<command>-<time>).")]
ResumeOpt = Annotated[bool, typer.Option(help="Continue the run in --out, skipping finished samples.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for subsets and sampled decoding.")]
DeviceOpt = Annotated[str | None, typer.Option(help="cuda, mps or cpu (default: the best available).")]
DtypeOpt = Annotated[str | None, typer.Option(help="float32, bfloat16 or float16 (default: by device).")]
BatchOpt = Annotated[int, typer.Option(help="Generation batch size.")]


_OPTION_OF_FIELD = {
    "prefill_ks": "ks",
    "num_steps": "steps",
    "n_prompts": "n",
    "budgets": "budget",
    "defenses": "defense",
}
"""Config fields whose CLI option has another name."""


def _command_options(fn: Callable[..., Any]) -> dict[str, str]:
    """Parameter name -> long option of a command function (``n_safety`` -> ``--n-safety``, ``sets`` ->
    ``--set``), read from its ``typer.Option`` declarations as Typer does."""
    hints = typing.get_type_hints(fn, include_extras=True)
    options: dict[str, str] = {}
    for name in inspect.signature(fn).parameters:
        flag = "--" + name.replace("_", "-")
        for meta in getattr(hints.get(name), "__metadata__", ()):
            if isinstance(meta, typer.models.OptionInfo):
                decls = [d for d in (meta.default, *(meta.param_decls or ())) if isinstance(d, str)]
                flag = max((d for d in decls if d.startswith("--")), key=len, default=flag)
        options[name] = flag
    return options


def _as_option(e: OptionError, options: dict[str, str]) -> OptionError:
    """The error naming the command's option for a config field (``--n-safety`` for ``AuditConfig.n_safety``;
    ``--set FIELD`` for a field only ``--set`` reaches)."""
    if e.option.startswith("-"):
        return e
    name = e.field if e.field in options else _OPTION_OF_FIELD.get(e.field)
    if name is not None and name in options:
        return e.renamed(options[name])
    if "sets" in options:
        return e.renamed(f"--set {e.field}")
    return e


def _handle_errors(fn: F) -> F:
    """Print expected errors (bad specs, files, judges, runs, options out of range) as one clear line and exit
    non-zero. Options are checked (by the configs the command builds, or directly) before a model loads or a
    run directory is made."""

    options = _command_options(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from alignscope.data.types import SuiteError
        from alignscope.judges.base import JudgeError
        from alignscope.runs.store import RunError

        try:
            return fn(*args, **kwargs)
        except (ModelError, SuiteError, JudgeError, RunError, ValueError, FileNotFoundError) as e:
            message = _as_option(e, options) if isinstance(e, OptionError) else e
            console.print(f"[bold red]error:[/] {escape(str(message))}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print(
                "[yellow]interrupted: finished samples are saved; rerun with --resume --out <run>[/]"
            )
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"--ks must be comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 0:
        raise typer.BadParameter("--ks needs at least one non-negative integer")
    return ks


def _done(run: Any) -> None:
    console.print(f"[green]run directory:[/] {run.path}")
    console.print(f"[green]report:[/] {run.report_path}")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


@app.command()
@_handle_errors
def audit(
    model: ModelOpt = "smollm2",
    reference: Annotated[
        str | None, typer.Option(help="Reference model for the per-token KL profile.")
    ] = None,
    harmful_suite: Annotated[str, typer.Option(help="Harmful suite spec.")] = "harmful",
    borderline_suite: Annotated[
        str, typer.Option(help="Borderline-safe suite spec (over-refusal).")
    ] = "borderline",
    n_harmful: Annotated[int, typer.Option(help="Harmful prompts for the refusal rate.")] = 40,
    n_borderline: Annotated[int, typer.Option(help="Borderline prompts for over-refusal.")] = 40,
    judge: JudgeOpt = "keyword",
    ks: Annotated[str, typer.Option(help="Prefilled token counts, comma-separated.")] = "0,3,5,10,20,40",
    n_prefill: Annotated[int, typer.Option(help="Harmful prompts in the prefilling attack and KL.")] = 20,
    prefill_source: Annotated[
        str | None,
        typer.Option(
            help="Model writing the harmful reference responses (default: --reference, else smollm2)."
        ),
    ] = None,
    decoding: Annotated[str, typer.Option(help="Decoding exploit grid: reduced, full or off.")] = "reduced",
    safety_layers: Annotated[bool, typer.Option(help="Safety-layer scan (gap curve, range, probe).")] = True,
    n_safety: Annotated[int, typer.Option(help="Normal and malicious prompts each in the scan.")] = 32,
    n_decoding: Annotated[int, typer.Option(help="Harmful prompts in the decoding exploit.")] = 16,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer (refusal stages).")] = 64,
    attack_tokens: Annotated[int, typer.Option(help="Tokens per answer (prefill and decoding stages).")] = 48,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Audit a model: refusal, over-refusal, prefilling curve, decoding exploit, per-token KL; one HTML report."""
    from alignscope.audit import AuditConfig, run_audit

    cfg = AuditConfig(  # checks every option before run_audit makes the run directory or loads a model
        model=model,
        reference=reference,
        harmful_suite=harmful_suite,
        borderline_suite=borderline_suite,
        n_harmful=n_harmful,
        n_borderline=n_borderline,
        judge=judge,
        max_new_tokens=max_new_tokens,
        prefill_ks=_ks(ks),
        n_prefill=n_prefill,
        prefill_source=prefill_source,
        attack_tokens=attack_tokens,
        decoding=decoding,  # type: ignore[arg-type]
        n_decoding=n_decoding,
        safety_layers=safety_layers,
        n_safety=n_safety,
        seed=seed,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
    )
    _done(run_audit(cfg, out=str(out) if out else None, resume=resume))


@app.command()
@_handle_errors
def evaluate(
    model: ModelOpt = "smollm2",
    suite: Annotated[list[str] | None, typer.Option(help="Suite spec(s); repeat for several.")] = None,
    n: Annotated[int | None, typer.Option(help="Prompts per suite (stratified subset).")] = None,
    judge: JudgeOpt = "keyword",
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 64,
    temperature: Annotated[
        float | None, typer.Option(help="Sample at this temperature (default and 0: greedy).")
    ] = None,
    top_p: Annotated[float, typer.Option(help="Top-p when sampling, in (0, 1].")] = 1.0,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Answer the prompts of one or more suites and judge the answers (refusal, non-refusal and, with a harm judge, harmful rates; over-refusal)."""
    from alignscope.audit import evaluate_suites, load_judge_for
    from alignscope.data import load_suite
    from alignscope.judges.registry import check_judge_spec
    from alignscope.models import GenerationConfig, load_chat_model
    from alignscope.report.build import rebuild
    from alignscope.runs import RunDir

    at_least("--n", n, 1)
    check_judge_spec(judge)
    gen = GenerationConfig(
        max_new_tokens=max_new_tokens,
        seed=seed,
        batch_size=batch_size,
        do_sample=bool(temperature),  # None and 0 are greedy
        temperature=1.0 if temperature is None else temperature,
        top_p=top_p,
    )
    suites = suite or ["harmful", "borderline"]
    config = {
        "model": model,
        "suites": suites,
        "n": n,
        "judge": judge,
        "system": system,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
    }
    loaded = [load_suite(s).take(n, seed) for s in suites]
    run = RunDir.create("evaluate", config, out=out, resume=resume)
    m = load_chat_model(model, device=device, dtype=dtype)
    evaluate_suites(m, loaded, load_judge_for(judge, m), gen, run, system=system)
    rebuild(run)
    _done(run)


@attack_app.command("prefill")
@_handle_errors
def attack_prefill(
    model: ModelOpt = "smollm2",
    suite: Annotated[str, typer.Option(help="Harmful suite spec, e.g. advbench:PATH.")] = "harmful",
    n: Annotated[int | None, typer.Option(help="Prompts (stratified subset).")] = 20,
    ks: Annotated[str, typer.Option(help="Prefilled token counts, comma-separated.")] = "0,3,5,10,20,40",
    source: Annotated[
        str | None,
        typer.Option(
            help="Model writing the harmful responses when the suite has "
            "none (default: smollm2, the unaligned embedded model)."
        ),
    ] = None,
    judge: JudgeOpt = "keyword",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated after the prefill.")] = 48,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Prefilling attack: force the first k tokens of a harmful response and let the model continue."""
    from alignscope.attacks import PrefillConfig, harmful_responses, prefill_attack
    from alignscope.audit import load_judge_for
    from alignscope.data import load_suite
    from alignscope.judges.registry import check_judge_spec
    from alignscope.models import DEFAULT_MODEL, LocalModel, load_chat_model
    from alignscope.report.build import rebuild
    from alignscope.runs import RunDir

    at_least("--n", n, 1)
    check_judge_spec(judge)
    pcfg = PrefillConfig(_ks(ks), max_new_tokens, batch_size=batch_size, seed=seed)
    config = {
        "model": model,
        "suite": suite,
        "n": n,
        "ks": list(_ks(ks)),
        "source": source,
        "judge": judge,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    samples = list(load_suite(suite).take(n, seed))
    run = RunDir.create("attack prefill", config, out=out, resume=resume)
    m = load_chat_model(model, device=device, dtype=dtype)
    j = load_judge_for(judge, m)
    src_spec = source or DEFAULT_MODEL
    src = m if src_spec == model else load_chat_model(src_spec, device=device, dtype=dtype)
    responses = harmful_responses(src, samples, j, pcfg.response_tokens, batch_size, run)
    counter = src if isinstance(src, LocalModel) else None
    prefill_attack(m, samples, responses, j, pcfg, run, token_counter=counter)
    rebuild(run)
    _done(run)


@attack_app.command("decoding")
@_handle_errors
def attack_decoding(
    model: ModelOpt = "smollm2",
    suite: Annotated[str, typer.Option(help="Harmful suite spec.")] = "harmful",
    n: Annotated[int | None, typer.Option(help="Prompts (stratified subset).")] = 16,
    full_grid: Annotated[
        bool, typer.Option(help="The paper's full 49-setting grid instead of the reduced 7.")
    ] = False,
    judge: JudgeOpt = "keyword",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per answer.")] = 48,
    seed: SeedOpt = 0,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Decoding-parameter exploit: sweep temperature, top-p and top-k; report the worst case per prompt."""
    from alignscope.attacks import FULL_GRID, REDUCED_GRID, decoding_attack
    from alignscope.audit import load_judge_for
    from alignscope.data import load_suite
    from alignscope.judges.registry import check_judge_spec
    from alignscope.models import GenerationConfig, load_chat_model
    from alignscope.report.build import rebuild
    from alignscope.runs import RunDir

    at_least("--n", n, 1)
    check_judge_spec(judge)
    GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size)  # checks both
    config = {
        "model": model,
        "suite": suite,
        "n": n,
        "full_grid": full_grid,
        "judge": judge,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    samples = list(load_suite(suite).take(n, seed))
    run = RunDir.create("attack decoding", config, out=out, resume=resume)
    m = load_chat_model(model, device=device, dtype=dtype)
    decoding_attack(
        m,
        samples,
        load_judge_for(judge, m),
        FULL_GRID if full_grid else REDUCED_GRID,
        max_new_tokens,
        seed,
        batch_size,
        run,
    )
    rebuild(run)
    _done(run)


@attack_app.command("gcg")
@_handle_errors
def attack_gcg(
    model: ModelOpt = "smollm2",
    suite: Annotated[str, typer.Option(help="Behaviours with targets, e.g. advbench:PATH.")] = "harmful",
    n: Annotated[int | None, typer.Option(help="Behaviours (stratified subset).")] = 5,
    judge: JudgeOpt = "keyword",
    steps: Annotated[int, typer.Option(help="Optimisation steps.")] = 250,
    search_width: Annotated[int, typer.Option(help="Candidates per step.")] = 512,
    topk: Annotated[int, typer.Option(help="Top-k tokens per suffix position from the gradient.")] = 256,
    n_replace: Annotated[int, typer.Option(help="Tokens replaced per candidate.")] = 1,
    init: Annotated[str | None, typer.Option(help="Initial suffix (default: 20 'x').")] = None,
    allow_non_ascii: Annotated[bool, typer.Option(help="Allow non-ASCII suffix tokens.")] = False,
    early_stop: Annotated[bool, typer.Option(help="Stop when greedy decoding produces the target.")] = False,
    screen: Annotated[
        bool, typer.Option(help="Screen candidates in bfloat16, re-score the best exactly.")
    ] = True,
    universal: Annotated[bool, typer.Option(help="One suffix over all behaviours.")] = False,
    held_out: Annotated[
        int, typer.Option(help="With --universal: extra behaviours to test the suffix on.")
    ] = 0,
    transfer: Annotated[
        list[str] | None, typer.Option(help="Other model(s) answering the attacked prompts.")
    ] = None,
    template: Annotated[
        str, typer.Option(help="User turn with {prompt} and {optim_str}.")
    ] = "{prompt} {optim_str}",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens generated with the found suffix.")] = 64,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """GCG adversarial suffixes (Zou et al. 2023), then generation with them and judging."""
    from dataclasses import asdict

    from alignscope.attacks.gcg import GCGConfig
    from alignscope.attacks.gcg_eval import gcg_attack
    from alignscope.audit import load_judge_for
    from alignscope.data import load_suite
    from alignscope.judges.registry import check_judge_spec
    from alignscope.models import GenerationConfig, load_chat_model, load_model
    from alignscope.report.build import rebuild
    from alignscope.runs import RunDir

    at_least("--n", n, 1)
    at_least("--held-out", held_out, 0)
    check_judge_spec(judge)
    generation = GenerationConfig(max_new_tokens=max_new_tokens)
    kwargs: dict[str, Any] = {"optim_str_init": init} if init else {}
    cfg = GCGConfig(
        num_steps=steps,
        search_width=search_width,
        topk=topk,
        n_replace=n_replace,
        allow_non_ascii=allow_non_ascii,
        early_stop=early_stop,
        seed=seed,
        screen_dtype="auto" if screen else None,
        **kwargs,
    )
    full = load_suite(suite)
    samples = list(full.take(n, seed))
    chosen = {s.id for s in samples}
    extra = [s for s in full if s.id not in chosen][:held_out] if held_out else []
    config = {
        "model": model,
        "suite": suite,
        "n": n,
        "judge": judge,
        "gcg": asdict(cfg),
        "universal": universal,
        "held_out": held_out,
        "transfer": transfer or [],
        "template": template,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
    }
    run = RunDir.create("attack gcg", config, out=out, resume=resume)
    m = load_model(model, device=device, dtype=dtype)
    others = [load_chat_model(t, device=device, dtype=dtype) for t in transfer or []]
    gcg_attack(
        m,
        samples,
        load_judge_for(judge, m),
        cfg,
        run,
        generation,
        universal=universal,
        held_out=extra,
        transfer=others,
        template=template,
    )
    rebuild(run)
    _done(run)


@analyze_app.command("token-kl")
@_handle_errors
def analyze_token_kl(
    model: ModelOpt = "smollm2",
    reference: Annotated[str, typer.Option(help="Reference model spec (same tokenizer).")] = "smollm2",
    suite: Annotated[str, typer.Option(help="Harmful suite spec.")] = "harmful",
    n: Annotated[int | None, typer.Option(help="Pairs (stratified subset).")] = 32,
    source: Annotated[
        str | None,
        typer.Option(help="Model writing the responses when the suite has none (default: --reference)."),
    ] = None,
    judge: JudgeOpt = "keyword",
    max_tokens: Annotated[int, typer.Option(help="Response positions.")] = 48,
    seed: SeedOpt = 0,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Per-token KL between a model and a reference over harmful (prompt, response) pairs."""
    from alignscope.attacks import harmful_responses
    from alignscope.audit import load_judge_for, token_kl_stage
    from alignscope.data import load_suite
    from alignscope.judges.registry import check_judge_spec
    from alignscope.models import load_model
    from alignscope.report.build import rebuild
    from alignscope.runs import RunDir

    at_least("--n", n, 1)
    at_least("--max-tokens", max_tokens, 1)
    check_judge_spec(judge)
    config = {
        "model": model,
        "reference": reference,
        "suite": suite,
        "n": n,
        "source": source,
        "judge": judge,
        "max_tokens": max_tokens,
        "seed": seed,
    }
    samples = load_suite(suite).take(n, seed)
    run = RunDir.create("analyze token-kl", config, out=out, resume=resume)
    m = load_model(model, device=device, dtype=dtype)
    ref = m if reference == model else load_model(reference, device=device, dtype=dtype)
    src_spec = source or reference
    src = {model: m, reference: ref}.get(src_spec) or load_model(src_spec, device=device, dtype=dtype)
    responses = harmful_responses(src, list(samples), load_judge_for(judge, m), max(64, max_tokens), 16, run)
    token_kl_stage(m, ref, samples, responses, max_tokens, run)
    rebuild(run)
    _done(run)


@analyze_app.command("safety-layers")
@_handle_errors
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
    _done(run)


train_app = typer.Typer(
    help="Training recipes: safety-sft, deep-align, safety-dpo, adversarial-sft, constrained-sft, sppft.",
    no_args_is_help=True,
)
reproduce_app = typer.Typer(
    help="Reproduce the papers' experiments on the embedded default.", no_args_is_help=True
)
app.add_typer(train_app, name="train")
app.add_typer(reproduce_app, name="reproduce")

SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Config field as KEY=VALUE (JSON values: 2e-5, true, [10, 14]); repeatable. "
        "Fields: see the recipe's config dataclass.",
    ),
]
ConfigFileOpt = Annotated[Path | None, typer.Option("--config", help="JSON file of config fields.")]


def _fields(config_file: Path | None, sets: list[str] | None, **given: Any) -> dict[str, Any]:
    """Config fields from a JSON file, then --set KEY=VALUE pairs, then explicit options (None = not given)."""
    import json

    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            values.update(json.loads(config_file.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--config {config_file}: {e}") from e
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw
    values.update({k: v for k, v in given.items() if v is not None})
    return values


def _train_recipe(recipe: str) -> Callable[..., None]:
    @_handle_errors
    def command(
        model: Annotated[str | None, typer.Option("--model", "-m", help="Starting model spec.")] = None,
        out: Annotated[Path | None, typer.Option(help="Output run directory.")] = None,
        data: Annotated[
            Path | None,
            typer.Option(
                help="Training data JSONL (chat messages); default: built from alignscope's suites."
            ),
        ] = None,
        full_finetune: Annotated[bool, typer.Option(help="Full fine-tuning instead of LoRA.")] = False,
        sets: SetOpt = None,
        config_file: ConfigFileOpt = None,
        num_processes: Annotated[
            int, typer.Option(help="Processes under accelerate launch (1: in-process).")
        ] = 1,
        accelerate_config: Annotated[
            Path | None, typer.Option(help="accelerate / DeepSpeed config file.")
        ] = None,
    ) -> None:
        from alignscope.training import RECIPES, config_from_dict, launch, train

        values = _fields(
            config_file,
            sets,
            model=model,
            out=str(out) if out else None,
            data=str(data) if data else None,
            full_finetune=full_finetune or None,
        )
        cfg = config_from_dict(RECIPES[recipe].config_class, values)
        if num_processes > 1 or accelerate_config is not None:
            proc = launch(recipe, cfg, num_processes=num_processes, accelerate_config=accelerate_config)
            console.print(proc.stdout[-2000:])
            return
        result = train(recipe, cfg)
        console.print(f"[green]trained {result.recipe}:[/] {result.steps} steps; output {result.output}")
        console.print(f"evaluate it: alignscope audit --model {result.output}")

    command.__doc__ = (
        f"Train with the {recipe} recipe (see alignscope.training; every config field via --set)."
    )
    return command


for _name in ("safety-sft", "deep-align", "safety-dpo", "adversarial-sft", "constrained-sft", "sppft"):
    train_app.command(_name)(_train_recipe(_name))


@attack_app.command("finetune")
@_handle_errors
def attack_finetune(
    model: ModelOpt = "smollm2-aligned",
    kind: Annotated[str, typer.Option(help="harmful, identity or backdoor.")] = "harmful",
    defense: Annotated[str | None, typer.Option(help="None (standard SFT), constrained or sppft.")] = None,
    out: Annotated[Path | None, typer.Option(help="Output run directory.")] = None,
    sets: SetOpt = None,
    config_file: ConfigFileOpt = None,
) -> None:
    """Fine-tuning attacks (harmful examples, identity shifting, backdoor), optionally defended."""
    from alignscope.training import FinetuneAttackConfig, config_from_dict, finetune_attack

    values = _fields(
        config_file, sets, model=model, kind=kind, defense=defense, out=str(out) if out else None
    )
    cfg = config_from_dict(FinetuneAttackConfig, values)
    assert isinstance(cfg, FinetuneAttackConfig)
    result = finetune_attack(cfg.kind, cfg.defense, cfg)
    console.print(f"[green]attack fine-tune done:[/] {result.steps} steps; output {result.output}")
    console.print(f"measure it: alignscope audit --model {result.output}")


@reproduce_app.command("shallow-vs-deep")
@_handle_errors
def reproduce_shallow_vs_deep_cmd(
    out: OutOpt = None,
    resume: ResumeOpt = False,
    sets: SetOpt = None,
    config_file: ConfigFileOpt = None,
) -> None:
    """Qi et al. 2024 on the embedded default: build aligned and deep models, measure refusal, prefilling,
    per-token KL and the fine-tuning attack; one report. Stages are cached, so --resume continues."""
    from dataclasses import fields

    from alignscope.runs import RunDir
    from alignscope.training.reproduce import ShallowDeepConfig, reproduce_shallow_vs_deep

    values = _fields(config_file, sets)
    known = {f.name for f in fields(ShallowDeepConfig)}
    if set(values) - known:
        raise ValueError(f"unknown ShallowDeepConfig field(s): {', '.join(sorted(set(values) - known))}")
    cfg = ShallowDeepConfig(**values)
    run = RunDir.create("reproduce shallow-vs-deep", cfg.to_dict(), out=out, resume=resume)
    reproduce_shallow_vs_deep(run, cfg)
    _done(run)


@app.command("judge")
@_handle_errors
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
    _done(run)


@app.command("judge-eval")
@_handle_errors
def judge_eval_cmd(
    judge: JudgeOpt = "keyword",
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Labelled JSONL (prompt, optional prefill, response, label); default: the shipped set."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split of the shipped set: dev or test.")] = "test",
    batch_size: BatchOpt = 32,
    device: DeviceOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Score a judge against hand-labelled outputs: refusal and harm precision/recall, kappa, confusion."""
    from alignscope.judges.validation import JudgeEvalConfig, run_judge_eval
    from alignscope.runs import RunDir

    cfg = JudgeEvalConfig(judge, str(labels) if labels else None, split, batch_size, device)
    config = {k: v for k, v in cfg.to_dict().items() if k not in ("batch_size", "device")}
    run = RunDir.create("judge-eval", config, out=out, resume=resume)
    result = run_judge_eval(cfg, run)
    typer.echo(result.summary())
    _done(run)


@app.command("report")
@_handle_errors
def report(run_dir: Annotated[Path, typer.Argument(help="An existing run directory.")]) -> None:
    """Rebuild metrics.json and report.html of a run from its samples."""
    from alignscope.report.build import rebuild
    from alignscope.runs import RunDir

    run = RunDir.open(run_dir)
    rebuild(run)
    _done(run)


@app.command()
@_handle_errors
def serve(
    model: ModelOpt = "smollm2",
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    guard: Annotated[
        list[str] | None,
        typer.Option(
            help="Guard spec KIND[:block|flag|allow][=ARG], repeatable: probe=guard.json, "
            "judge:block=HARM_JUDGE (wildguard:MODEL, llama-guard:MODEL, llm-rubric:MODEL), "
            "request-complied=guard.json, keyword=bomb|sarin."
        ),
    ] = None,
    audit_log: Annotated[Path | None, typer.Option(help="Append-only JSONL log of guard decisions.")] = None,
    served_name: Annotated[
        str | None, typer.Option(help="Model name clients use (default: the spec).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="torch intra-op threads.")] = None,
    max_input_chars: Annotated[int | None, typer.Option(help="Reject longer inputs (400).")] = None,
    max_tokens_limit: Annotated[
        int | None, typer.Option(help="Largest max_tokens a request may ask.")
    ] = None,
    max_queue: Annotated[int | None, typer.Option(help="Requests waiting before 429.")] = None,
    max_batch_size: Annotated[
        int | None,
        typer.Option(min=1, help="Sequences generated together (default 32; 1: one request at a time)."),
    ] = None,
    batch_wait_ms: Annotated[
        float | None,
        typer.Option(min=0, help="A batch closes once no request has joined it for this long (default 5)."),
    ] = None,
    max_batch_wait_ms: Annotated[
        float | None,
        typer.Option(min=0, help="...or this long after its first request (default 100)."),
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Env var holding the API key clients must send.")
    ] = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
) -> None:
    """Serve a model over the OpenAI-compatible chat API, with optional guards and an audit log.

    The operator switch (POST /admin/models/NAME/disable|enable) needs $ALIGNSCOPE_ADMIN_TOKEN."""
    import os

    from alignscope.server import serve as run_server

    settings: dict[str, Any] = {
        k: v
        for k, v in {
            "max_input_chars": max_input_chars,
            "max_tokens_limit": max_tokens_limit,
            "max_queue": max_queue,
            "max_batch_size": max_batch_size,
            "batch_wait_ms": batch_wait_ms,
            "max_batch_wait_ms": max_batch_wait_ms,
        }.items()
        if v is not None
    }
    if api_key_env:
        if api_key_env not in os.environ:
            raise ValueError(f"--api-key-env names {api_key_env}, which is not set")
        settings["api_key"] = os.environ[api_key_env]
    run_server(
        model,
        host,
        port,
        guard or (),
        audit_log=audit_log,
        served_name=served_name,
        device=device,
        dtype=dtype,
        threads=threads,
        **settings,
    )


from alignscope.speech.cli import register as _register_speech  # noqa: E402  (needs the apps above)

_register_speech(app, attack_app, reproduce_app)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
