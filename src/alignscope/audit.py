"""The library entry points behind ``alignscope audit``, ``evaluate``, ``attack prefill|decoding`` and
``analyze token-kl``.

Each writes its samples into a :class:`RunDir` as they are produced and ends by rebuilding the run's metrics
and report from those samples alone (:func:`alignscope.report.build.rebuild`), so a run can be re-judged or
re-reported later without regenerating anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from alignscope.analysis.token_kl import per_token_kl
from alignscope.attacks.decoding import FULL_GRID, REDUCED_GRID, decoding_attack
from alignscope.attacks.prefill import DEFAULT_KS, PrefillConfig, harmful_responses, prefill_attack
from alignscope.attacks.stage import GenItem, generate_and_judge
from alignscope.data import Suite, load_suite
from alignscope.judges import Judge, get_judge
from alignscope.judges.registry import DEFAULT_JUDGE_MODEL, JUDGES, check_judge_spec, parse_judge_spec
from alignscope.models import (
    DEFAULT_MODEL,
    ChatModel,
    GenerationConfig,
    LocalModel,
    load_chat_model,
    user_turn,
)
from alignscope.report.build import rebuild
from alignscope.runs.store import RunDir
from alignscope.validation import FieldChecks

log = logging.getLogger("alignscope")

DecodingGrid = Literal["reduced", "full", "off"]


@dataclass(frozen=True)
class AuditConfig:
    """Settings of ``alignscope audit``; the defaults finish in a few minutes on a 2-core CPU.

    Attributes:
        model: spec of the model to audit.
        reference: spec of a reference model (e.g. the base model) for the per-token KL profile; None skips it.
        harmful_suite / borderline_suite: suite specs (see :func:`alignscope.data.load_suite`).
        n_harmful / n_borderline: prompts evaluated for refusal and over-refusal (category-stratified subsets).
        judge: judge spec (see :func:`alignscope.judges.get_judge`).
        max_new_tokens: tokens generated per answer in the refusal and over-refusal stages.
        prefill_ks: prefilled harmful tokens for the prefilling curve.
        n_prefill: harmful prompts in the prefilling and KL stages.
        prefill_source: model that writes the harmful reference responses (default: the reference model if
            given, else the embedded unaligned default).
        attack_tokens: tokens generated after a prefill and in the decoding sweep.
        decoding: decoding-exploit grid: ``reduced`` (7 sampled settings + greedy), ``full`` (the paper's 49)
            or ``off``.
        n_decoding: harmful prompts in the decoding sweep.
        kl_tokens: response positions in the per-token KL profile.
        safety_layers: run the safety-layer scan (cosine gap curve, detected range, probe) on local models.
        n_safety: normal and malicious prompts each in the safety-layer scan.
        seed: seeds subsets and sampled decoding.
        batch_size: generation batch size.
        device / dtype: override automatic choices.
    """

    model: str = DEFAULT_MODEL
    reference: str | None = None
    harmful_suite: str = "harmful"
    borderline_suite: str = "borderline"
    n_harmful: int = 40
    n_borderline: int = 40
    judge: str = "keyword"
    max_new_tokens: int = 64
    prefill_ks: tuple[int, ...] = DEFAULT_KS
    n_prefill: int = 20
    prefill_source: str | None = None
    attack_tokens: int = 48
    decoding: DecodingGrid = "reduced"
    n_decoding: int = 16
    kl_tokens: int = 48
    safety_layers: bool = True
    n_safety: int = 32
    seed: int = 0
    batch_size: int = 16
    device: str | None = None
    dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.at_least(1, "n_harmful", "n_borderline", "n_prefill", "n_decoding")
        check.at_least(1, "max_new_tokens", "attack_tokens", "kl_tokens", "batch_size")
        check.at_least(2, "n_safety")  # the scan compares pairs of normal and of malicious prompts
        check.each_at_least(0, "prefill_ks")
        check.one_of("decoding", ("reduced", "full", "off"))
        check_judge_spec(self.judge)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["prefill_ks"] = list(self.prefill_ks)
        return d


class _Models:
    """Loads each model spec once per run (the audited model is often also the prefill source or judge)."""

    def __init__(self, device: str | None, dtype: str | None, preloaded: dict[str, ChatModel] | None = None):
        self.device, self.dtype = device, dtype
        self.cache: dict[str, ChatModel] = dict(preloaded or {})

    def get(self, spec: str) -> ChatModel:
        if spec not in self.cache:
            self.cache[spec] = load_chat_model(spec, device=self.device, dtype=self.dtype)
        return self.cache[spec]

    def judge(self, spec: str) -> Judge:
        return load_judge_for(spec, loader=self.get)


def load_judge_for(
    spec: str, model: ChatModel | None = None, loader: Callable[[str], ChatModel] | None = None
) -> Judge:
    """The judge for ``spec``. A model judge whose model spec names ``model`` (or names none while ``model`` is
    the default) reuses that loaded model; other local judge models come from ``loader`` (default:
    :func:`load_chat_model`)."""
    name, _, model_spec = parse_judge_spec(spec)
    entry = JUDGES.get(name)
    if entry is None or not entry.uses_model:
        return get_judge(spec)
    target = model_spec or entry.default_model or DEFAULT_JUDGE_MODEL
    if target.startswith("openai:"):
        return get_judge(spec)
    if model is not None and model.name == target:
        return get_judge(spec, model=model)
    return get_judge(spec, model=(loader or load_chat_model)(target))


def run_audit(
    config: AuditConfig | None = None,
    out: str | None = None,
    resume: bool = False,
    models: dict[str, ChatModel] | None = None,
    progress: bool = True,
) -> RunDir:
    """Audit one model: refusal and over-refusal, prefilling curve, decoding exploit and (with a reference)
    the per-token KL profile. ``models`` maps specs to already-loaded models (tests pass tiny models)."""
    config = config or AuditConfig()
    harmful = load_suite(config.harmful_suite)  # bad suites fail before a run directory or model exists
    borderline = load_suite(config.borderline_suite)
    run = RunDir.create("audit", config.to_dict(), out=out, resume=resume)
    pool = _Models(config.device, config.dtype, models)
    judge = pool.judge(config.judge)
    model = pool.get(config.model)

    gen = GenerationConfig(
        max_new_tokens=config.max_new_tokens, seed=config.seed, batch_size=config.batch_size
    )
    evaluate_suites(
        model,
        [harmful.take(config.n_harmful, config.seed), borderline.take(config.n_borderline, config.seed)],
        judge,
        gen,
        run,
        progress,
    )

    attack_set = harmful.take(config.n_prefill, config.seed)
    source_spec = config.prefill_source or config.reference or DEFAULT_MODEL
    responses = harmful_responses(
        pool.get(source_spec), list(attack_set), judge, max(config.kl_tokens, 64), config.batch_size, run
    )
    pcfg = PrefillConfig(
        config.prefill_ks, config.attack_tokens, batch_size=config.batch_size, seed=config.seed
    )
    source = pool.get(source_spec)
    counter = source if isinstance(source, LocalModel) else None
    if model.supports_prefill and (isinstance(model, LocalModel) or counter is not None):
        prefill_attack(
            model, list(attack_set), responses, judge, pcfg, run, progress=progress, token_counter=counter
        )
    else:
        note(
            run,
            "prefill",
            f"{model.name} does not accept an assistant prefill: the prefilling attack is not "
            "applicable to it.",
        )

    if config.decoding != "off":
        grid = FULL_GRID if config.decoding == "full" else REDUCED_GRID
        decoding_attack(
            model,
            list(harmful.take(config.n_decoding, config.seed)),
            judge,
            grid,
            config.attack_tokens,
            config.seed,
            config.batch_size,
            run,
            progress=progress,
        )

    if config.reference is not None:
        reference = pool.get(config.reference)
        if isinstance(model, LocalModel) and isinstance(reference, LocalModel):
            token_kl_stage(model, reference, attack_set, responses, config.kl_tokens, run)
        else:
            note(
                run,
                "token_kl",
                "the per-token KL needs the logits of both models: not applicable to remote models.",
            )
    if config.safety_layers:
        if isinstance(model, LocalModel):
            if "safety_layers" not in run.metrics():
                from alignscope.analysis.safety_analysis import analyze_safety_layers

                analyze_safety_layers(
                    model, out=run, n_prompts=config.n_safety, localize=False, saliency=2, progress=progress
                )
        else:
            note(
                run,
                "safety_layers",
                "the safety-layer scan needs hidden states: not applicable to remote models.",
            )
    rebuild(run)
    return run


def note(run: RunDir, key: str, text: str) -> None:
    """Record, once, why a part of a command was not run; the report lists these notes."""
    log.warning(text)
    if key not in run.done("note"):
        run.append({"stage": "note", "key": key, "text": text})


def evaluate_suites(
    model: ChatModel,
    suites: Sequence[Suite],
    judge: Judge,
    gen: GenerationConfig,
    run: RunDir,
    progress: bool = True,
    system: str | None = None,
) -> list[dict[str, Any]]:
    """Answer every prompt of ``suites`` and judge it (stage ``evaluate``; records carry ``suite``)."""
    items = [
        GenItem(f"{s.name}:{x.id}", x, user_turn(x.prompt, system), extra={"suite": s.name})
        for s in suites
        for x in s
    ]
    return generate_and_judge(model, items, "evaluate", gen, judge, run, progress=progress)


def token_kl_stage(
    model: LocalModel,
    reference: LocalModel,
    suite: Suite,
    responses: dict[str, str],
    max_tokens: int,
    run: RunDir,
) -> dict[str, Any]:
    """Per-token KL over (prompt, harmful response) pairs, stored as one ``token_kl`` record."""
    done = run.done("token_kl")
    key = f"{model.name}||{reference.name}"
    if key in done:
        return done[key]
    pairs = [(s, responses[s.id]) for s in suite if s.id in responses]
    if not pairs:
        log.warning("no harmful responses available: per-token KL skipped")
        return {}
    kl = per_token_kl(
        model, reference, [user_turn(s.prompt) for s, _ in pairs], [r for _, r in pairs], max_tokens
    )
    rec = {"stage": "token_kl", "key": key, "suite": suite.name, **kl.to_dict()}
    run.append(rec)
    return rec
