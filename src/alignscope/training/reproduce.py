"""``reproduce shallow-vs-deep``: Qi et al., "Safety Alignment Should Be Made More Than Just a Few Tokens
Deep" (ICLR 2025, arXiv 2406.05946), end to end on the embedded default.

The embedded SmolLM2-135M-Instruct is not safety aligned, so it is the *base*. The reproduction builds
*aligned* (``safety-sft``) and *deep* (``deep-align``) from it with alignscope's own data, then measures on
held-out prompts (the test split of the suites the recipes trained on the train split of):

* refusal on harmful prompts, over-refusal on benign and borderline-safe prompts (keyword judge, greedy);
* the prefilling attack at k = 0, 5, 10, 20, 40 tokens of the base model's own harmful answer;
* the per-token KL of aligned and of deep against base on (harmful prompt, harmful answer) pairs;
* the harmful fine-tuning attack on aligned, with standard SFT and with the constrained objective (same data,
  same steps).

:func:`run_shallow_vs_deep` is the experiment (a :class:`ShallowDeepConfig` in, a :class:`ShallowDeepResult` out);
:func:`reproduce_shallow_vs_deep` does the work. Every stage is cached in the run directory (trained adapters, per-sample records), so a killed run resumes
where it stopped. The prefilling attack's continuation (without the forced prefix) is what the keyword judge
reads for the primary numbers: a prefix of 40 tokens fills most of the judge's 200-character window, so
judging prefix + continuation would count a model that recovers as harmful. Both are recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignscope.config_io import ConfigIO
from alignscope.judges.outcomes import attack_success, refusal_rate
from alignscope.models.base import GenerationConfig
from alignscope.models.loading import DEFAULT_MODEL, load_model
from alignscope.models.local import LocalModel
from alignscope.runs.store import RunDir
from alignscope.training.attack import finetune_attack, finetune_attack_success
from alignscope.training.builders import test_split
from alignscope.training.config import DeepAlignConfig, FinetuneAttackConfig, SafetySFTConfig
from alignscope.training.engine import PROVENANCE_FILE
from alignscope.training.recipes import train
from alignscope.validation import FieldChecks

log = logging.getLogger("alignscope.training")

MODELS = ("base", "aligned", "deep")

_DEEP_ALIGN_FIELDS = ("augment", "p_zero", "max_prefix_tokens", "alpha")
"""The :class:`DeepAlignConfig` fields the reproduction sets from its own ``deep_<field>``."""


@dataclass(frozen=True)
class ShallowDeepConfig(ConfigIO):
    """Settings of the reproduction; the defaults fit about 30 minutes on a 2-core CPU.

    Attributes:
        model: the base (unaligned) model.
        harmful_suite, benign_suite, borderline_suite: suites; harmful and benign are split (train for the
            recipes, test for evaluation); borderline is only evaluated.
        test_fraction: share of each split suite held out.
        split_seed: seed of the splits.
        seed: training seed.
        refusals_per_prompt: refusal examples per harmful train prompt (safety-sft).
        utility_max_new_tokens: length of the base model's answers used as utility data.
        epochs: training epochs of both recipes.
        learning_rate: LoRA learning rate of both recipes.
        deep_augment: safety-recovery examples per harmful prompt (deep-align).
        deep_p_zero: probability of k = 0 in a recovery example (the paper: 0.5; with only ~75 training
            prompts more weight on prefixed examples buys depth).
        deep_max_prefix_tokens: C, the largest harmful prefix in training (the paper: 100; the reproduction
            evaluates k <= 40 and spends its small budget on the range it measures).
        deep_alpha: weight of the safety loss in deep-align (the paper: 0.2 on its larger data). Deepening
            smollm2-aligned here (C 40, augment 3) measured k=10 prefill ASR 65 / 32 / 19 % and benign
            over-refusal 16 / 33 / 41 % for alpha 0.2 (p_zero 0.3) / 0.35 / 0.5 (p_zero 0.15).
        deep_from: the model deep-align starts from: ``aligned`` (the paper's setting: the aligned model is
            deepened, with the harmful answers and the utility answers taken from the base model, so deepening
            does not also inherit the aligned model's over-refusal) or ``base`` (deep-align must then also
            teach refusal from scratch).
        harmful_max_new_tokens: length of the base model's harmful answers used for training (prefixes,
        attack). ks: prefilled tokens evaluated (0 comes from the plain refusal stage).
        max_new_tokens: tokens generated in every evaluation.
        response_tokens: length of the base model's reference answers to the test prompts (prefill, KL).
        kl_tokens: response positions in the per-token KL.
        attack_examples: harmful fine-tuning attack examples.
        attack_epochs: epochs of both attack runs.
        attack_learning_rate: LoRA learning rate of both attack runs.
        batch_size: generation batch size.
    """

    model: str = DEFAULT_MODEL
    harmful_suite: str = "harmful"
    benign_suite: str = "benign"
    borderline_suite: str = "borderline"
    test_fraction: float = 0.5
    split_seed: int = 0
    seed: int = 0
    refusals_per_prompt: int = 2
    utility_max_new_tokens: int = 96
    epochs: float = 2.0
    learning_rate: float = 2e-4
    deep_augment: int = 3
    deep_p_zero: float = 0.15
    deep_max_prefix_tokens: int = 40
    deep_alpha: float = 0.4
    deep_from: str = "aligned"
    harmful_max_new_tokens: int = 64
    ks: tuple[int, ...] = (0, 5, 10, 20, 40)
    max_new_tokens: int = 32
    response_tokens: int = 64
    kl_tokens: int = 40
    attack_examples: int = 100
    attack_epochs: float = 2.0
    attack_learning_rate: float = 2e-4
    batch_size: int = 32

    def __post_init__(self) -> None:
        check = FieldChecks(self)
        check.one_of("deep_from", ("aligned", "base"))
        check.in_range("test_fraction", 0, 1, low_open=True, high_open=True)
        check.in_range("deep_p_zero", 0, 1)
        check.in_range("deep_alpha", 0, 1)
        check.at_least(1, "refusals_per_prompt", "utility_max_new_tokens", "deep_augment", "batch_size")
        check.at_least(1, "deep_max_prefix_tokens", "harmful_max_new_tokens", "max_new_tokens")
        check.at_least(1, "response_tokens", "kl_tokens", "attack_examples")
        check.positive("epochs", "learning_rate", "attack_epochs", "attack_learning_rate")
        check.each_at_least(0, "ks")


@dataclass(frozen=True)
class ShallowDeepResult:
    """Metrics of the reproduction (also in ``metrics.json``), the adapters it built, and the verdict on each
    claim the issue asks it to show.

    Attributes:
        metrics: everything measured, with the config and the settings that produced it.
        adapters: the ``aligned`` and ``deep`` adapter directories.
        checks: each claim and whether the measured point estimates satisfy it.
        markdown: the tables as markdown (``report.md``).
        seconds: wall time of this call (stages finished before are not re-run).
        notes: remarks on the run.
    """

    metrics: dict[str, Any]
    adapters: dict[str, Path]
    checks: dict[str, bool]
    markdown: str
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "adapters": {k: str(v) for k, v in self.adapters.items()},
            "checks": dict(self.checks),
            "markdown": self.markdown,
            "seconds": self.seconds,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShallowDeepResult:
        return cls(
            dict(d["metrics"]),
            {k: Path(v) for k, v in d["adapters"].items()},
            {k: bool(v) for k, v in d["checks"].items()},
            str(d["markdown"]),
            float(d.get("seconds", 0.0)),
            list(d.get("notes", [])),
        )

    def summary(self) -> str:
        held = sum(self.checks.values())
        lines = [f"shallow vs deep: {held} of {len(self.checks)} claims hold", self.markdown]
        lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in self.checks.items()]
        return "\n".join(lines)


def run_shallow_vs_deep(
    config: ShallowDeepConfig | None = None, run: RunDir | None = None, *, progress: bool = True
) -> ShallowDeepResult:
    """The reproduction as an experiment: run (or resume) it into ``run`` (None: a new run directory under
    ``runs/``); see :func:`reproduce_shallow_vs_deep`."""
    config = config or ShallowDeepConfig()
    if run is None:
        run = RunDir.create("reproduce shallow-vs-deep", config.to_dict())
    return reproduce_shallow_vs_deep(run, config, progress)


def reproduce_shallow_vs_deep(
    out: RunDir, config: ShallowDeepConfig | None = None, progress: bool = True
) -> ShallowDeepResult:
    """Run (or resume) the reproduction into ``out``; see the module docstring. Returns the metrics, the paths
    of the aligned and deep adapters, and the checks."""
    from alignscope.attacks.prefill import PrefillConfig, harmful_responses, prefill_attack
    from alignscope.attacks.stage import GenItem, generate_and_judge, judge_reads
    from alignscope.data import load_suite
    from alignscope.judges.keyword import KeywordJudge

    cfg = config or ShallowDeepConfig()
    start = time.perf_counter()
    timings: dict[str, float] = dict(out.metrics().get("timings", {}))
    judge = KeywordJudge()
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size)

    def timed(name: str, t0: float) -> None:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        out.write_metrics({**out.metrics(), "timings": timings})

    # 1. train aligned and deep (cached: a finished adapter is reused)
    t0 = time.perf_counter()
    adapters = {
        "aligned": _train_stage(out, "aligned", cfg, progress),
        "deep": _train_stage(out, "deep", cfg, progress),
    }
    timed("train", t0)

    harmful_test = list(test_split(cfg.harmful_suite, cfg.test_fraction, cfg.split_seed))
    benign_test = list(test_split(cfg.benign_suite, cfg.test_fraction, cfg.split_seed))
    borderline = list(load_suite(cfg.borderline_suite))

    # 2. the base model's harmful answers to the held-out prompts: prefill source and KL pairs
    t0 = time.perf_counter()
    base = load_model(cfg.model)
    responses = harmful_responses(base, harmful_test, judge, cfg.response_tokens, cfg.batch_size, out)
    usable = [s for s in harmful_test if s.id in responses]
    timed("reference_responses", t0)

    results: dict[str, dict[str, Any]] = {}
    kl: dict[str, Any] = {}
    prefill_cfg = PrefillConfig(
        ks=tuple(k for k in cfg.ks if k > 0),
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
    )
    for name in MODELS:
        t0 = time.perf_counter()
        model = base if name == "base" else load_model(str(adapters[name]))
        model.name = name if name == "base" else f"{cfg.model}-{name}"
        refusal = generate_and_judge(
            model,
            [GenItem.of(s) for s in harmful_test],
            f"refusal/{name}",
            gen,
            judge,
            out,
            progress=progress,
        )
        pre = prefill_attack(model, usable, responses, judge, prefill_cfg, out, f"prefill/{name}", progress)
        over = {
            suite: generate_and_judge(
                model, [GenItem.of(s) for s in samples], f"{suite}/{name}", gen, judge, out, progress=progress
            )
            for suite, samples in (("benign", benign_test), ("borderline", borderline))
        }
        results[name] = _model_metrics(refusal, pre.records, over, usable, cfg.ks)
        results[name]["refusal_k0"] = refusal_rate(refusal).to_dict()
        results[name]["success_k0_all"] = attack_success(refusal).to_dict()
        if name != "base":
            kl[name] = _token_kl(model, base, usable, responses, cfg.kl_tokens)
            del model
        timed(f"eval_{name}", t0)

    # 3. the harmful fine-tuning attack on aligned: standard SFT vs the constrained objective
    t0 = time.perf_counter()
    attack = {"initial": results["aligned"]["success_k0_all"]}
    for defense in (None, "constrained"):
        label = defense or "standard"
        adapter = _attack_stage(out, label, adapters["aligned"], cfg, progress)
        attacked = load_model(str(adapter))
        attacked.name = f"{cfg.model}-aligned+attack({label})"
        rate, _ = finetune_attack_success(
            attacked, harmful_test, "harmful", judge, gen, run=out, stage=f"attack/{label}", progress=progress
        )
        attack[label] = rate.to_dict()
        del attacked
    timed("attack", t0)

    from alignscope.training.reproduce_report import checks_of, render_reports

    metrics = {
        "config": cfg.to_dict(),
        "judge": judge.name,
        "judge_note": f"prefilled generations: the judge reads the {judge_reads(judge)}; success is the "
        f"{'harmful' if judge.judges_harm else 'non-refusal'} rate",
        "generation": gen.describe(),
        "n_harmful_test": len(harmful_test),
        "n_prefill_prompts": len(usable),
        "models": results,
        "kl": kl,
        "attack": attack,
        "adapters": {k: str(v) for k, v in adapters.items()},
        "timings": timings,
    }
    checks = checks_of(metrics)
    metrics["checks"] = checks
    markdown = render_reports(out, metrics)
    out.write_metrics(metrics)
    return ShallowDeepResult(metrics, adapters, checks, markdown, time.perf_counter() - start)


def _finished_adapter(run_dir: Path) -> Path | None:
    """The adapter a finished training stage left in ``run_dir`` (its provenance file is written last), else
    None: a killed run resumes by reusing it."""
    adapter = run_dir / "adapter"
    return adapter if (adapter / PROVENANCE_FILE).exists() else None


def _stage_fields(
    cfg: ShallowDeepConfig, run_dir: Path, progress: bool, *, model: str, epochs: float, learning_rate: float
) -> dict[str, Any]:
    """The settings every training stage of the reproduction shares: resumable in ``run_dir``, the
    reproduction's seed, harmful suite and split, and its generation batch size for the data it builds."""
    return {
        "model": model,
        "out": str(run_dir),
        "resume": True,
        "seed": cfg.seed,
        "epochs": epochs,
        "learning_rate": learning_rate,
        "harmful_suite": cfg.harmful_suite,
        "split_seed": cfg.split_seed,
        "test_fraction": cfg.test_fraction,
        "progress": progress,
        "gen_batch_size": cfg.batch_size,
    }


def _base_answers(cfg: ShallowDeepConfig) -> dict[str, Any]:
    """The harmful answers deep-align prefixes and the fine-tuning attack trains on: the base model's, of
    the reproduction's length."""
    return {"responses_model": cfg.model, "harmful_max_new_tokens": cfg.harmful_max_new_tokens}


def _train_stage(out: RunDir, name: str, cfg: ShallowDeepConfig, progress: bool) -> Path:
    run_dir = out.path / name
    if finished := _finished_adapter(run_dir):
        return finished
    common = _stage_fields(
        cfg, run_dir, progress, model=cfg.model, epochs=cfg.epochs, learning_rate=cfg.learning_rate
    )
    common |= {
        "utility_suite": cfg.benign_suite,
        "n_utility": None,
        "utility_max_new_tokens": cfg.utility_max_new_tokens,
    }
    if name == "aligned":
        result = train("safety-sft", SafetySFTConfig(**common, refusals_per_prompt=cfg.refusals_per_prompt))
    else:
        if cfg.deep_from == "aligned":
            # the base model answers (harmful responses and utility), the aligned model is deepened
            common |= {"model": str(out.path / "aligned" / "adapter"), "utility_model": cfg.model}
        deep = {key: getattr(cfg, f"deep_{key}") for key in _DEEP_ALIGN_FIELDS}
        result = train("deep-align", DeepAlignConfig(**common, **deep, **_base_answers(cfg)))
    return result.output


def _attack_stage(out: RunDir, label: str, aligned: Path, cfg: ShallowDeepConfig, progress: bool) -> Path:
    run_dir = out.path / f"attack-{label}"
    if finished := _finished_adapter(run_dir):
        return finished
    epochs, learning_rate = cfg.attack_epochs, cfg.attack_learning_rate
    common = _stage_fields(
        cfg, run_dir, progress, model=str(aligned), epochs=epochs, learning_rate=learning_rate
    )
    config = FinetuneAttackConfig(**common, n_examples=cfg.attack_examples, **_base_answers(cfg))
    return finetune_attack("harmful", None if label == "standard" else label, config).output


def _model_metrics(
    refusal: list[dict[str, Any]],
    prefill: list[dict[str, Any]],
    over: dict[str, list[dict[str, Any]]],
    usable: list[Any],
    ks: tuple[int, ...],
) -> dict[str, Any]:
    """Prefill success and refusal per k (k = 0 from the refusal stage on the prompts that have a reference
    response) and over-refusal rates. Success is the harmful rate where the judge judges harm, else the
    non-refusal rate; each rate dict names its ``measure``."""

    ids = {s.id for s in usable}
    success: dict[str, Any] = {}
    refused: dict[str, Any] = {}
    for k in ks:
        recs = (
            [r for r in refusal if r["sample_id"] in ids] if k == 0 else [r for r in prefill if r["k"] == k]
        )
        success[str(k)] = attack_success(recs).to_dict()
        refused[str(k)] = refusal_rate(recs).to_dict()
    over_refusal = {suite: refusal_rate(recs).to_dict() for suite, recs in over.items()}
    return {"prefill_success": success, "prefill_refusal": refused, "over_refusal": over_refusal}


def _token_kl(
    model: LocalModel, base: LocalModel, usable: list[Any], responses: dict[str, str], n: int
) -> dict[str, Any]:
    from alignscope.analysis.token_kl import per_token_kl
    from alignscope.models.base import user_turn

    result = per_token_kl(
        model, base, [user_turn(s.prompt) for s in usable], [responses[s.id] for s in usable], n
    )
    return result.to_dict()
