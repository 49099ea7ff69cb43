"""The speech commands of the ``alignscope`` CLI: ``speech build|speak|misheard-data|evaluate|adversarial-train``,
``attack audio-pgd|audio-transfer`` and ``reproduce speechguard``.

Parsing and printing only: the library does the work (:mod:`alignscope.speech`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from alignscope.cli.apps import attack_app, reproduce_app, speech_app
from alignscope.cli.common import ConfigFileOpt, DeviceOpt, OutOpt, console, done, fields, handle_errors
from alignscope.validation import at_least, each_at_least, non_empty

SlmOpt = Annotated[
    str,
    typer.Option(
        "--slm",
        help="Speech LLM: default (the embedded build), build:KEY=VALUE,... (another build), a projector or "
        "build directory, or random[:LLM] (untrained projector, smoke tests only).",
    ),
]
VoicesOpt = Annotated[
    str | None, typer.Option(help="espeak-ng voices, comma-separated (default: the build recipe's).")
]
RatesOpt = Annotated[
    str | None, typer.Option(help="Speaking rates in wpm, comma-separated (default: the build recipe's).")
]
ResumeOpt = Annotated[bool, typer.Option(help="Continue the run in --out, skipping finished clips.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help='Config field as KEY=VALUE (JSON values: 30, true, ["a", "b"]); repeatable.'),
]


def _csv(text: str | None, cast: Callable[[str], Any] = str, what: str = "value") -> tuple[Any, ...] | None:
    if text is None:
        return None
    try:
        return tuple(cast(x.strip()) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated {what}s, got {text!r}") from None


def _speech_options(voices: tuple[str, ...] | None, rates: tuple[int, ...] | None) -> None:
    """``--voices`` and ``--rates`` as given: at least one voice, rates (words per minute) >= 1."""
    non_empty("--voices", voices)
    each_at_least("--rates", rates, 1)


def _budgets(values: list[str] | None) -> tuple[str, ...] | None:
    from alignscope.speech.attacks.config import parse_budget

    if not values:
        return None
    out = tuple(b.strip() for v in values for b in v.split(",") if b.strip())
    for b in out:
        parse_budget(b)
    return out


def _defense_snrs(values: list[str] | None) -> tuple[float, ...] | None:
    from alignscope.speech.attacks.defense import parse_defense

    if not values:
        return None
    snrs = []
    for v in values:
        d = parse_defense(v)
        if d is not None:
            snrs.append(d.snr_db)
    return tuple(snrs)


@speech_app.command("build")
@handle_errors
def speech_build(
    llm: Annotated[str | None, typer.Option(help="LLM spec (default: the build recipe's).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Build directory (default: in the cache, by config).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the projector, voices and data order.")] = None,
    voices: VoicesOpt = None,
    rates: RatesOpt = None,
    asr_steps: Annotated[int | None, typer.Option(help="Steps of the ASR stage (0 skips it).")] = None,
    distill_steps: Annotated[int | None, typer.Option(help="Steps of distillation (0 skips it).")] = None,
    llm_lora_rank: Annotated[
        int | None, typer.Option(help="Rank of LoRA layers trained on the LLM in distillation (0: none).")
    ] = None,
    evaluate: Annotated[bool | None, typer.Option(help="Held-out evaluation at the end.")] = None,
    sets: SetOpt = None,
    config_file: ConfigFileOpt = None,
) -> None:
    """Build (train) the projector of a speech LLM: CTC stage (an ASR stage optional), then KL distillation
    (optionally with LoRA layers on the LLM); cached and resumable. Every SpeechBuildConfig field via --set."""
    from alignscope.speech.build.builder import build_slm
    from alignscope.speech.build.config import SpeechBuildConfig

    values = fields(
        config_file, sets, llm=llm, out=str(out) if out else None, seed=seed, voices=_csv(voices),
        rates=_csv(rates, int, "integer"), asr_steps=asr_steps, distill_steps=distill_steps,
        llm_lora_rank=llm_lora_rank, evaluate=evaluate,
    )  # fmt: skip
    cfg = SpeechBuildConfig.from_dict({**SpeechBuildConfig().to_dict(), **values})
    result = build_slm(cfg)
    console.print(f"[green]speech build {'found cached' if result.cached else 'done'}:[/] {result.out}")
    console.print(f"projector: {result.projector_dir}")
    ev = result.metrics.get("evaluation")
    if ev:
        console.print(
            f"held-out: harmful refused {ev['harmful_refusal']['rate']:.3f}, benign answered "
            f"{ev['benign_answered']['rate']:.3f}, top-1 agreement {ev['top1_agreement']:.3f}"
        )
    console.print(f"attack it: alignscope attack audio-pgd --slm {result.out}")


@speech_app.command("speak")
@handle_errors
def speech_speak(
    suite: Annotated[
        str, typer.Option(help="Text suite spec to read aloud (harmful, benign, advbench:PATH...).")
    ],
    out: Annotated[Path, typer.Option(help="Directory for the WAVs and manifest.jsonl.")],
    n: Annotated[int | None, typer.Option(help="Questions (category-stratified subset).")] = None,
    split: Annotated[str, typer.Option(help="all, train or test (the builds' held-out half).")] = "all",
    voices: Annotated[str, typer.Option(help="espeak-ng voices, comma-separated.")] = "en-us+klatt4",
    rates: Annotated[str, typer.Option(help="Speaking rates (wpm), comma-separated.")] = "175",
    lead_silence: Annotated[float, typer.Option(help="Seconds of silence before speech.")] = 0.4,
    seed: Annotated[int, typer.Option(help="Seed of the voice and rate draws.")] = 0,
) -> None:
    """Speak a text suite with espeak-ng: cached 16 kHz WAVs plus manifest.jsonl (re-running reuses clips)."""
    from alignscope.data import load_suite
    from alignscope.speech.spoken.suites import speak_suite

    if split not in ("all", "train", "test"):
        raise typer.BadParameter(f"--split must be all, train or test, got {split!r}")
    at_least("--n", n, 1)
    at_least("--lead-silence", lead_silence, 0)
    _speech_options(_csv(voices), _csv(rates, int, "integer"))
    text = load_suite(suite)
    if split != "all":
        text = text.split(0.5, 0)[1 if split == "test" else 0]
    spoken = speak_suite(
        text.take(n, seed), out, _csv(voices), _csv(rates, int, "integer") or (175,), seed=seed,
        lead_silence=lead_silence,
    )  # fmt: skip
    console.print(f"[green]{len(spoken)} clips:[/] {spoken.manifest}")


@speech_app.command("misheard-data")
@handle_errors
def speech_misheard_data(
    out: Annotated[Path, typer.Option(help="Chat JSONL file to write.")],
    slm: SlmOpt = "default",
    suites: Annotated[str, typer.Option(help="Suites whose train splits are spoken, comma-separated.")] = (
        "harmful,benign,borderline"
    ),
    refuse: Annotated[
        str, typer.Option(help="Suites whose prompts get a refusal where the LLM answers them.")
    ] = "harmful",
    voices: VoicesOpt = None,
    rates: RatesOpt = None,
    variants: Annotated[int, typer.Option(help="Misheard copies per prompt.")] = 2,
    clean: Annotated[bool, typer.Option(help="Keep a clean copy of every prompt.")] = True,
    max_new_tokens: Annotated[int, typer.Option(help="Length of the LLM's answers used as labels.")] = 128,
    seed: Annotated[int, typer.Option(help="Seed of the voice draws and refusal texts.")] = 0,
    limit: Annotated[int | None, typer.Option(help="First prompts of each suite only.")] = None,
    sampled: Annotated[
        int, typer.Option(help="Request-like sentences the LLM writes, added as answered prompts.")
    ] = 0,
    only_changed: Annotated[
        bool, typer.Option(help="Keep only misheard copies the LLM decides otherwise than the label.")
    ] = False,
    drop_refused: Annotated[
        bool,
        typer.Option(help="Leave out prompts outside --refuse that the LLM refuses when written."),
    ] = False,
) -> None:
    """Training data that makes an LLM decide on misheard prompts as on the written ones: the train-split
    prompts, spoken and read out through the speech LLM's projector, labelled with the clean prompt's refusal
    or the LLM's own answer. Train on it with: alignscope train safety-sft --data OUT."""
    import json

    from alignscope.speech.build.config import SpeechBuildConfig
    from alignscope.speech.build.misheard import misheard_records
    from alignscope.speech.model import loading
    from alignscope.training.chat_data import write_chat_jsonl

    _speech_options(_csv(voices), _csv(rates, int, "integer"))
    at_least("--variants", variants, 0)
    at_least("--max-new-tokens", max_new_tokens, 1)
    at_least("--limit", limit, 1)
    at_least("--sampled", sampled, 0)
    non_empty("--suites", _csv(suites))
    defaults = SpeechBuildConfig()
    model = loading.load_speech_model(slm)
    data = misheard_records(
        model, _csv(suites) or (), _csv(refuse) or (), _csv(voices) or defaults.voices,
        _csv(rates, int, "integer") or defaults.rates, defaults.pitches, variants, clean, max_new_tokens,
        lead_silence=defaults.lead_silence, seed=seed, limit=limit, sampled=sampled,
        only_changed=only_changed, drop_refused=drop_refused,
    )  # fmt: skip
    write_chat_jsonl(out, data.records)
    summary = out.with_name(out.name + ".json")
    summary.write_text(json.dumps(data.summary(), indent=2))
    console.print(
        f"[green]{len(data.records)} records[/] from {data.prompts} prompts ({data.refused_labels} labelled "
        f"with refusals); misheard copies' word error rate {data.heard_wer:.3f}: {out} (summary {summary})"
    )


@speech_app.command("evaluate")
@handle_errors
def speech_evaluate(
    slm: SlmOpt = "default",
    harmful_suite: Annotated[
        str, typer.Option(help="Harmful suite spec (any suite, e.g. advbench:PATH); its test half is spoken.")
    ] = "harmful",
    benign_suite: Annotated[
        str, typer.Option(help="Benign suite spec (e.g. jsonl:PATH#instruction); its test half is spoken.")
    ] = "benign",
    voices: VoicesOpt = None,
    rates: RatesOpt = None,
    limit: Annotated[int | None, typer.Option(help="First test questions of each suite only.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Length of the greedy answers.")] = 64,
    judge: Annotated[
        str, typer.Option(help="Judge spec: keyword, llm-rubric[:MODEL], strongreject[:MODEL].")
    ] = "keyword",
    seed: Annotated[int, typer.Option(help="Seed of the voice and rate draw per question.")] = 1,
    out: Annotated[
        Path | None, typer.Option(help="JSON file for the metrics and every clip's answers.")
    ] = None,
    device: DeviceOpt = None,
) -> None:
    """Held-out spoken evaluation of a speech LLM, as its build measures it: harmful questions refused, benign
    ones answered, agreement with its LLM reading the written question, and the heard transcripts."""
    import json

    from alignscope.speech.evaluation.held_out import SpeechEvalConfig, run_speech_eval

    config = SpeechEvalConfig(
        slm=slm, harmful_suite=harmful_suite, benign_suite=benign_suite, voices=_csv(voices),
        rates=_csv(rates, int, "integer"), limit=limit, max_new_tokens=max_new_tokens, judge=judge, seed=seed,
        device=device,
    )  # fmt: skip
    result = run_speech_eval(config)
    console.print(result.summary())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result.to_dict(), indent=2))
        console.print(f"[green]metrics and answers:[/] {out}")


@speech_app.command("adversarial-train")
@handle_errors
def speech_adversarial_train(
    slm: SlmOpt = "default",
    out: Annotated[Path | None, typer.Option(help="Output directory (default: in the cache).")] = None,
    budget: Annotated[
        str | None, typer.Option(help="PGD budget of the training attacks, snr:30 or linf:0.002.")
    ] = None,
    rounds: Annotated[int | None, typer.Option(help="Attack-then-train rounds.")] = None,
    eval_n: Annotated[
        int | None, typer.Option(help="Held-out questions for the before/after measurement.")
    ] = None,
    sets: SetOpt = None,
    config_file: ConfigFileOpt = None,
) -> None:
    """Adversarial training of the projector: PGD clips of harmful questions with refusal targets (the LLM
    reading the transcript) mixed into distillation. Every AdversarialTrainingConfig field via --set."""
    from alignscope.speech.build.adversarial import AdversarialTrainingConfig, adversarial_train
    from alignscope.speech.model import loading

    values = fields(config_file, sets, slm=slm, out=str(out) if out else None, budget=budget, rounds=rounds,
                     eval_n=eval_n)  # fmt: skip
    cfg = AdversarialTrainingConfig.from_dict(values)
    result = adversarial_train(cfg, slm=loading.load_speech_model(cfg.slm))
    for r in result.rounds:
        console.print(
            f"round {r['round']}: PGD success on the training clips {r['attack_success']}, kept {r['kept']}, "
            f"{r['steps']} steps, loss {r['train_loss']:.4f}"
        )
    if result.evaluation:
        for name in ("before", "after"):
            e = result.evaluation[name]
            console.print(
                f"{name}: white-box PGD non-refusal rate (keyword judge) "
                f"{e.get('non_refusal', e.get('jailbreak_success', {})).get('rate', float('nan')):.3f}, "
                "benign answered "
                f"{e['benign_answered']['rate']:.3f}"
            )
    console.print(f"[green]hardened projector:[/] {result.projector_dir}")


# -- attack audio-pgd / audio-transfer ------------------------------------------------------------------------
def _attack(config: Any, out: Path | None, resume: bool) -> None:
    """Make the run directory of an audio attack config, run it, print its summary."""
    from alignscope.runs import RunDir
    from alignscope.speech.attacks.experiments import AudioPGDAttackConfig, run_audio_pgd, run_audio_transfer

    command = "attack audio-pgd" if isinstance(config, AudioPGDAttackConfig) else "attack audio-transfer"
    run = RunDir.create(command, config.record(), out=out, resume=resume)
    result = (
        run_audio_pgd(config, run)
        if isinstance(config, AudioPGDAttackConfig)
        else run_audio_transfer(config, run)
    )
    console.print(result.summary())
    done(run)


def _spoken_attack(values: dict[str, Any]) -> Any:
    from alignscope.speech.attacks.config import SpokenAttackConfig

    return SpokenAttackConfig.from_dict({k: v for k, v in values.items() if v is not None})


_SuiteOpt = Annotated[
    str | None, typer.Option(help="Harmful text suite spoken with espeak-ng (default harmful).")
]
_ManifestOpt = Annotated[
    Path | None, typer.Option(help="Your own clips: manifest.jsonl (audio, text, optional label/target).")
]
_SplitOpt = Annotated[str | None, typer.Option(help="test (held out of builds), train or all.")]
_ClipsOpt = Annotated[int | None, typer.Option(help="Harmful clips.")]
_RestartsOpt = Annotated[int | None, typer.Option(help="Random restarts.")]
_TokensOpt = Annotated[int | None, typer.Option(help="Tokens per judged answer.")]
_PgdSeedOpt = Annotated[int | None, typer.Option(help="Seed of PGD starts and TDNF draws.")]
_BudgetOpt = Annotated[
    list[str] | None,
    typer.Option("--budget", help="linf:<eps> or snr:<dB>; repeat or comma-separate to sweep."),
]
_DefenseOpt = Annotated[
    list[str] | None,
    typer.Option("--defense", help="tdnf:snr=<dB> in front of the model (non-adaptive); repeatable."),
]


@attack_app.command("audio-pgd")
@handle_errors
def attack_audio_pgd(
    slm: SlmOpt = "default",
    suite: _SuiteOpt = None,
    manifest: _ManifestOpt = None,
    split: _SplitOpt = None,
    n: _ClipsOpt = None,
    budget: _BudgetOpt = None,
    steps: Annotated[int | None, typer.Option(help="PGD steps per restart.")] = None,
    restarts: _RestartsOpt = None,
    step_size: Annotated[float | None, typer.Option(help="Step as a fraction of the budget radius.")] = None,
    universal: Annotated[bool, typer.Option(help="One perturbation over all clips.")] = False,
    defense: _DefenseOpt = None,
    adaptive: Annotated[
        int | None, typer.Option(help="Adaptive attacker: noise draws per step through each --defense.")
    ] = None,
    benign_suite: Annotated[
        str | None, typer.Option(help="Benign suite for helpfulness (none: skip).")
    ] = None,
    n_benign: Annotated[int | None, typer.Option(help="Benign clips for helpfulness.")] = None,
    judge: Annotated[str, typer.Option(help="Judge spec: keyword, llm-rubric[:MODEL]...")] = "keyword",
    preference_judge: Annotated[
        str | None, typer.Option(help="Pairwise judge against the clean answer, e.g. preference:smollm2.")
    ] = None,
    max_new_tokens: _TokensOpt = None,
    resample: Annotated[bool, typer.Option(help="Resample user clips to 16 kHz (else refuse them).")] = True,
    seed: _PgdSeedOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    sets: SetOpt = None,
    config_file: ConfigFileOpt = None,
) -> None:
    """White-box audio PGD on spoken harmful questions (SpeechGuard): success, SNR, steps; with --defense the
    clips are also played through TDNF, and --adaptive N optimises through it. WAVs and report in the run."""
    values = fields(
        config_file, sets, suite=suite, manifest=str(manifest) if manifest else None, split=split, n=n,
        budgets=_budgets(budget), steps=steps, restarts=restarts, step_size=step_size,
        universal=universal or None, defenses=_defense_snrs(defense), adaptive=adaptive,
        benign_suite=None if benign_suite in ("none", "") else benign_suite, judge=judge,
        n_benign=0 if benign_suite in ("none", "") else n_benign, preference_judge=preference_judge,
        max_new_tokens=max_new_tokens, resample=None if resample else False, seed=seed,
    )  # fmt: skip
    from alignscope.speech.attacks.experiments import AudioPGDAttackConfig

    _attack(AudioPGDAttackConfig(slm=slm, attack=_spoken_attack(values), device=device), out, resume)


@attack_app.command("audio-transfer")
@handle_errors
def attack_audio_transfer(
    surrogate: Annotated[
        str, typer.Option(help="Speech LLM the perturbations are crafted on (same spec forms as --slm).")
    ],
    slm: SlmOpt = "default",
    suite: _SuiteOpt = None,
    manifest: _ManifestOpt = None,
    split: _SplitOpt = None,
    n: _ClipsOpt = None,
    budget: _BudgetOpt = None,
    steps: Annotated[int | None, typer.Option(help="PGD steps on the surrogate.")] = None,
    restarts: _RestartsOpt = None,
    defense: _DefenseOpt = None,
    n_benign: Annotated[int | None, typer.Option(help="Benign clips for helpfulness (0: skip).")] = None,
    judge: Annotated[str, typer.Option(help="Judge spec.")] = "keyword",
    preference_judge: Annotated[
        str | None, typer.Option(help="Pairwise judge against the clean answer.")
    ] = None,
    max_new_tokens: _TokensOpt = None,
    seed: _PgdSeedOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    sets: SetOpt = None,
    config_file: ConfigFileOpt = None,
) -> None:
    """Black-box transfer: PGD on a surrogate speech LLM, the adversarial clips played to the target (and
    through each --defense)."""
    values = fields(
        config_file, sets, suite=suite, manifest=str(manifest) if manifest else None, split=split, n=n,
        budgets=_budgets(budget), steps=steps, restarts=restarts, defenses=_defense_snrs(defense),
        n_benign=n_benign, judge=judge, preference_judge=preference_judge, max_new_tokens=max_new_tokens,
        seed=seed, white_box=False, transfer=True, adaptive=0,
    )  # fmt: skip
    from alignscope.speech.attacks.experiments import AudioTransferConfig

    config = AudioTransferConfig(slm=slm, surrogate=surrogate, attack=_spoken_attack(values), device=device)
    _attack(config, out, resume)


# -- reproduce speechguard ------------------------------------------------------------------------------------
@reproduce_app.command("speechguard")
@handle_errors
def reproduce_speechguard_cmd(
    out: OutOpt = None, resume: ResumeOpt = False, sets: SetOpt = None, config_file: ConfigFileOpt = None
) -> None:
    """SpeechGuard (Peri et al. 2024) on the embedded default: white-box, TDNF at several SNRs, the adaptive
    attacker and transfer from a second build, with SNRs, in one table and report. Builds are cached and
    every clip is resumable (--resume)."""
    from alignscope.runs import RunDir
    from alignscope.speech.evaluation.speechguard import SpeechGuardConfig, run_speechguard

    cfg = SpeechGuardConfig.from_dict(fields(config_file, sets))
    run = RunDir.create("reproduce speechguard", cfg.record(), out=out, resume=resume)
    result = run_speechguard(cfg, run)
    console.print(result.summary())
    done(run)
