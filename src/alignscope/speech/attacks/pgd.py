"""Adversarial audio against speech language models (Peri et al., "SpeechGuard", arXiv 2405.08317).

White-box PGD on the raw waveform through the whole :class:`~alignscope.speech.model.slm.SpeechLM` (log-mel in torch,
frozen encoder, projector, LLM): minimise the cross-entropy of a target response start ("Sure, here is ...")
with the perturbation bounded in L-inf (``eps``) or by an SNR (L2 radius ``||x|| / sqrt(10^(snr / 10))``).
One config (:class:`AudioPGDConfig`), entry points :func:`audio_pgd` (one clip), :func:`universal_audio_pgd`
(one perturbation over several clips) and :func:`transfer_attack` (craft on a surrogate, play to a target)::

    res = audio_pgd(slm, waveform, None, "Sure, here is", AudioPGDConfig(budget="snr", snr_db=30))
    res.success, res.snr_db, res.steps

Against TDNF (``defense="tdnf:snr=20"``) the attacker is adaptive: each step's loss is the mean over
``eot_samples`` fresh noise draws (expectation over transformation), and success is checked through the
defence with a fresh draw, as a real query would see it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from alignscope.models.base import GenerationConfig
from alignscope.speech.attacks.defense import TDNF, parse_defense, snr_db_of
from alignscope.speech.errors import SpeechError, SpeechOptionError
from alignscope.speech.model.slm import Clips, SpeechLM, as_clips
from alignscope.validation import FieldChecks

log = logging.getLogger("alignscope.speech.attacks.pgd")

BUDGETS = ("linf", "snr")

StepCallback = Callable[[int, torch.Tensor, float], None]
"""Called after every step with (step number from 1 over all restarts, the perturbation after the step's
update and projection, the step's loss)."""


@dataclass(frozen=True)
class AudioPGDConfig:
    """Settings of audio PGD.

    Attributes:
        budget: ``"linf"`` (every sample moves at most ``eps``) or ``"snr"`` (the perturbation's L2 norm is at
            most ``||x|| / sqrt(10^(snr_db / 10))``, so its SNR against the clean clip is at least ``snr_db``).
        eps: L-inf radius in sample units (waveforms are in [-1, 1]; 0.002 is about -54 dBFS).
        snr_db: SNR budget in dB (higher is quieter).
        step_size: step length as a fraction of the budget radius: L-inf steps move every sample by
            ``step_size * eps`` along the gradient sign; SNR steps move ``step_size * radius`` along the
            normalised gradient.
        steps: PGD steps per restart.
        restarts: independent runs; the first that succeeds ends the attack, else the lowest-loss perturbation
            over all runs is returned.
        random_start: start the first run at a random point of the budget (later runs always do); False
            starts it from the clean clip.
        early_stop: stop once greedy decoding of the attacked clip starts with the target.
        check_every: steps between two early-stop checks (a short greedy generation each).
        defense: a defence the attack goes through (``"tdnf:snr=20"``; None: none). The attacker is then
            adaptive (expectation over ``eot_samples`` draws per step).
        eot_samples: noise draws averaged per step when attacking through ``defense`` (ignored without one).
        seed: seeds the random starts and the defence's noise.
        progress: show a progress bar.
    """

    budget: str = "linf"
    eps: float = 0.002
    snr_db: float = 30.0
    step_size: float = 0.1
    steps: int = 200
    restarts: int = 1
    random_start: bool = False
    early_stop: bool = True
    check_every: int = 10
    defense: str | None = None
    eot_samples: int = 1
    seed: int = 0
    progress: bool = False

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise SpeechError(f"AudioPGDConfig.budget must be one of {BUDGETS}, got {self.budget!r}")
        check = FieldChecks(self, SpeechOptionError)
        check.positive("eps", "step_size")
        check.finite("snr_db")
        check.at_least(1, "steps", "restarts", "check_every", "eot_samples")
        parse_defense(self.defense)  # fail early on a bad spec

    def describe(self) -> str:
        budget = f"L-inf eps={self.eps:g}" if self.budget == "linf" else f"SNR >= {self.snr_db:g} dB"
        adaptive = f", through {self.defense} (EOT over {self.eot_samples})" if self.defense else ""
        return f"PGD {budget}, {self.steps} steps x {self.restarts} restarts{adaptive}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _json_fields(result: Any, nested: str) -> dict[str, Any]:
    """A result's fields for JSON: tensors left out (waveforms are saved as audio files), and the field
    ``nested`` (a settings or result object) as its own ``to_dict()``, last."""
    d = {k: v for k, v in result.__dict__.items() if not isinstance(v, torch.Tensor) and k != nested}
    d[nested] = getattr(result, nested).to_dict()
    return d


@dataclass
class AudioPGDResult:
    """What :func:`audio_pgd` found.

    Attributes:
        adversarial: the attacked clip ``(n,)``, float32 on CPU, in [-1, 1].
        clean: the clean clip ``(n,)``.
        success: greedy decoding of ``adversarial`` (through the defence, if any) starts with the target.
        response: that greedy response (a few tokens longer than the target).
        final_loss: target loss of ``adversarial`` (mean over fresh draws through a defence).
        losses: every step's loss (before its update), all restarts in order.
        restart_steps: steps each restart ran.
        steps: steps run in all.
        snr_db: SNR of the perturbation against the clean clip.
        linf: largest sample change.
        wall_time: seconds for the whole attack.
        early_stopped: stopped because the target was produced.
        target: the target text.
        prompt_text: the text in the user turn besides the audio (None: audio alone).
        config: the settings.
    """

    adversarial: torch.Tensor
    clean: torch.Tensor
    success: bool
    response: str
    final_loss: float
    losses: list[float]
    restart_steps: list[int]
    steps: int
    snr_db: float
    linf: float
    wall_time: float
    early_stopped: bool
    target: str
    prompt_text: str | None
    config: AudioPGDConfig

    @property
    def perturbation(self) -> torch.Tensor:
        return self.adversarial - self.clean

    def to_dict(self) -> dict[str, Any]:
        """Everything but the waveforms (save those as audio files)."""
        return _json_fields(self, "config")


@dataclass
class UniversalPGDResult:
    """What :func:`universal_audio_pgd` found: one perturbation for several clips.

    Attributes:
        perturbation: ``(max_len,)`` float32 on CPU; :func:`apply_perturbation` adds it to any clip.
        successes: per clip, greedy success (through the defence, if any).
        responses: per clip, the greedy response.
        snr_db: per clip, SNR of the perturbation actually added (cropped, after clipping to [-1, 1]).
        final_loss: mean target loss over the clips.
        losses, restart_steps, steps, wall_time, early_stopped: as in :class:`AudioPGDResult`.
        targets: per clip, the target text.
        config: the settings.
    """

    perturbation: torch.Tensor
    successes: list[bool]
    responses: list[str]
    snr_db: list[float]
    final_loss: float
    losses: list[float]
    restart_steps: list[int]
    steps: int
    wall_time: float
    early_stopped: bool
    targets: list[str]
    config: AudioPGDConfig

    @property
    def success_rate(self) -> float:
        return sum(self.successes) / len(self.successes)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the perturbation (save it as an audio file)."""
        return _json_fields(self, "config")


@dataclass
class TransferResult:
    """A perturbation crafted on a surrogate SLM and played to a target SLM.

    Attributes:
        crafted: the white-box run on the surrogate.
        surrogate_success: the target text came out of the surrogate.
        target_success: the target SLM's greedy response starts with the target text.
        target_response: that response (``max_new_tokens`` long, for judges).
        target_clean_response: the target's response to the clean clip (the reference for preference judges).
        snr_db: SNR of the perturbation.
        defense: the defence in front of the target (None: none).
    """

    crafted: AudioPGDResult
    surrogate_success: bool
    target_success: bool
    target_response: str
    target_clean_response: str
    snr_db: float
    defense: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_fields(self, "crafted")


def starts_with_target(response: str, target: str) -> bool:
    """The response begins with the target text (surrounding whitespace ignored)."""
    return response.strip().startswith(target.strip())


def apply_perturbation(waveform: torch.Tensor, perturbation: torch.Tensor) -> torch.Tensor:
    """``waveform + perturbation`` (cropped or zero-padded to the clip's length), clipped to [-1, 1]."""
    n = waveform.shape[-1]
    delta = perturbation.to(waveform.device, waveform.dtype)
    delta = delta[:n] if delta.shape[-1] >= n else torch.nn.functional.pad(delta, (0, n - delta.shape[-1]))
    return (waveform + delta).clamp(-1.0, 1.0)


def snr_radius(clean: torch.Tensor, snr_db: float) -> float:
    """L2 radius of a perturbation with SNR ``snr_db`` against ``clean``: ``||x|| / sqrt(10^(snr/10))``."""
    return float(clean.double().norm() / (10.0 ** (snr_db / 10.0)) ** 0.5)


def audio_pgd(
    slm: SpeechLM,
    waveform: torch.Tensor,
    prompt_text: str | None,
    target: str,
    config: AudioPGDConfig | None = None,
    callback: StepCallback | None = None,
) -> AudioPGDResult:
    """PGD on one clip so that ``slm`` starts its answer with ``target``.

    Args:
        slm: a white-box speech LM.
        waveform: the clean spoken prompt ``(n,)`` at 16 kHz in [-1, 1].
        prompt_text: text in the user turn besides the audio (None: the audio alone).
        target: the response start to elicit.
        config: settings (defaults: :class:`AudioPGDConfig`).
        callback: see :data:`StepCallback` (e.g. to log or plot the run).
    """
    config = config or AudioPGDConfig()
    clean = as_clips(waveform)[0].detach()
    res = _optimise(slm, [clean], [prompt_text], [target], config, True, callback)
    adv = apply_perturbation(clean, res.delta).cpu()
    clean_cpu = clean.cpu()
    return AudioPGDResult(
        adversarial=adv,
        clean=clean_cpu,
        success=res.successes[0],
        response=res.responses[0],
        snr_db=float(snr_db_of(clean_cpu, adv)),
        linf=float((adv - clean_cpu).abs().max()),
        target=target,
        prompt_text=prompt_text,
        config=config,
        **res.history(),
    )


def universal_audio_pgd(
    slm: SpeechLM,
    waveforms: Clips,
    targets: Sequence[str],
    config: AudioPGDConfig | None = None,
    prompt_texts: Sequence[str | None] | None = None,
    callback: StepCallback | None = None,
) -> UniversalPGDResult:
    """One additive perturbation (as long as the longest clip; cropped to each clip) that makes ``slm`` start
    every answer with its target; the loss is the mean over clips. The SNR budget is set by the quietest
    clip, so every clip's perturbation keeps at least ``snr_db``; early stop needs every clip to succeed."""
    config = config or AudioPGDConfig()
    clips = [c.detach() for c in as_clips(waveforms)]
    if len(targets) != len(clips):
        raise SpeechError(f"give one target per clip ({len(clips)}), got {len(targets)}")
    prompts: list[str | None] = list(prompt_texts) if prompt_texts is not None else [None] * len(clips)
    if len(prompts) != len(clips):
        raise SpeechError(f"give one prompt_text per clip ({len(clips)}), got {len(prompts)}")
    res = _optimise(slm, clips, prompts, list(targets), config, False, callback)
    delta = res.delta.cpu()
    snrs = [float(snr_db_of(c.cpu(), apply_perturbation(c.cpu(), delta))) for c in clips]
    return UniversalPGDResult(
        perturbation=delta,
        successes=res.successes,
        responses=res.responses,
        snr_db=snrs,
        targets=list(targets),
        config=config,
        **res.history(),
    )


def transfer_attack(
    surrogate: SpeechLM,
    target: SpeechLM,
    waveform: torch.Tensor,
    prompt_text: str | None,
    target_text: str,
    config: AudioPGDConfig | None = None,
    defense: str | None = None,
    crafted: AudioPGDResult | None = None,
    max_new_tokens: int = 64,
) -> TransferResult:
    """Black-box transfer: craft on ``surrogate`` (or reuse ``crafted``), play the adversarial clip to
    ``target`` (behind ``defense``, a fresh draw) and report success on both. Greedy decoding throughout."""
    if crafted is None:
        crafted = audio_pgd(surrogate, waveform, prompt_text, target_text, config)
    seed = crafted.config.seed
    guard = parse_defense(defense, seed=seed)
    adv, clean = crafted.adversarial, crafted.clean
    if guard is not None:
        adv, clean = guard(adv), guard(clean)
    gen = GenerationConfig(max_new_tokens=max_new_tokens)
    attacked, reference = target.generate([adv, clean], gen, prompt_text=prompt_text)
    return TransferResult(
        crafted=crafted,
        surrogate_success=crafted.success,
        target_success=starts_with_target(attacked, target_text),
        target_response=attacked,
        target_clean_response=reference,
        snr_db=crafted.snr_db,
        defense=guard.spec if guard is not None else None,
    )


# -- the optimisation loop ------------------------------------------------------------------------------------
@dataclass
class _Run:
    delta: torch.Tensor
    successes: list[bool]
    responses: list[str]
    final_loss: float
    losses: list[float]
    restart_steps: list[int]
    wall_time: float
    early_stopped: bool

    def history(self) -> dict[str, Any]:
        """The fields every PGD result copies from its run: the loss curve, the steps of each restart and
        their total, the time, and whether it stopped early."""
        return {
            "final_loss": self.final_loss,
            "losses": self.losses,
            "restart_steps": self.restart_steps,
            "steps": sum(self.restart_steps),
            "wall_time": self.wall_time,
            "early_stopped": self.early_stopped,
        }


class _Budget:
    """Projection onto the budget and the step rule of one budget kind."""

    def __init__(self, config: AudioPGDConfig, clips: list[torch.Tensor]):
        self.kind = config.budget
        if self.kind == "linf":
            self.radius = config.eps
        else:
            self.radius = min(snr_radius(c, config.snr_db) for c in clips)
            if self.radius == 0.0:
                raise SpeechError("a clip is silent: an SNR budget around it is empty")
        self.step = config.step_size * self.radius

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        if self.kind == "linf":
            return delta.clamp(-self.radius, self.radius)
        norm = float(delta.norm())
        return delta * (self.radius / norm) if norm > self.radius else delta

    def descend(self, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        if self.kind == "linf":
            return delta - self.step * grad.sign()
        return delta - self.step * grad / grad.norm().clamp_min(1e-20)

    def random(self, n: int, gen: torch.Generator) -> torch.Tensor:
        if self.kind == "linf":
            return (torch.rand(n, generator=gen) * 2 - 1) * self.radius
        direction = torch.randn(n, generator=gen)
        return direction / direction.norm() * self.radius * float(torch.rand(1, generator=gen))


def _fit(delta: torch.Tensor, n: int) -> torch.Tensor:
    return delta[:n] if delta.shape[0] >= n else torch.nn.functional.pad(delta, (0, n - delta.shape[0]))


def attack_loss(
    slm: SpeechLM,
    advs: Sequence[torch.Tensor],
    prompts: Sequence[str | None],
    targets: Sequence[str],
    defense: Any = None,
    eot_samples: int = 1,
) -> torch.Tensor:
    """Mean target loss over clips and, through ``defense``, over ``eot_samples`` fresh draws per clip (one
    batched forward pass); a scalar, differentiable w.r.t. ``advs``."""
    reps = eot_samples if defense is not None else 1
    waves = [defense(a) if defense is not None else a for a in advs for _ in range(reps)]
    rep_prompts = [p for p in prompts for _ in range(reps)]
    rep_targets = [t for t in targets for _ in range(reps)]
    return slm.target_loss(waves, rep_targets, rep_prompts, reduction="mean")


def _greedy_check(
    slm: SpeechLM,
    advs: list[torch.Tensor],
    prompts: list[str | None],
    targets: list[str],
    defense: TDNF | None,
) -> tuple[list[bool], list[str]]:
    waves = [defense(a) if defense is not None else a for a in advs]
    n_tokens = max(len(slm.llm.response_ids(t)) for t in targets)
    gen = GenerationConfig(max_new_tokens=n_tokens + 2, batch_size=max(len(waves), 1))
    responses = slm.generate(waves, gen, prompt_text=prompts)
    return [starts_with_target(r, t) for r, t in zip(responses, targets, strict=True)], responses


def _optimise(
    slm: SpeechLM,
    clips: list[torch.Tensor],
    prompts: list[str | None],
    targets: list[str],
    config: AudioPGDConfig,
    per_clip_clip: bool,
    callback: StepCallback | None = None,
) -> _Run:
    """PGD over one perturbation shared by ``clips`` (one clip for :func:`audio_pgd`). ``per_clip_clip`` keeps
    ``x + delta`` inside [-1, 1] by projecting ``delta`` (one clip); else each clip is clipped when played."""
    t0 = time.perf_counter()
    dev = slm.device
    clips = [c.to(dev) for c in clips]
    length = max(c.numel() for c in clips)
    budget = _Budget(config, clips)
    defense = parse_defense(config.defense, seed=config.seed)
    gen = torch.Generator().manual_seed(config.seed)

    def project(delta: torch.Tensor) -> torch.Tensor:
        delta = budget.project(delta)
        if per_clip_clip:  # clipping towards x only shrinks |delta|: it stays inside the budget
            delta = (clips[0] + delta).clamp(-1.0, 1.0) - clips[0]
        return delta

    def advs_of(delta: torch.Tensor) -> list[torch.Tensor]:
        return [(c + _fit(delta, c.numel())).clamp(-1.0, 1.0) for c in clips]

    losses: list[float] = []
    restart_steps: list[int] = []
    best: tuple[float, torch.Tensor] = (float("inf"), torch.zeros(length, device=dev))
    found: torch.Tensor | None = None
    checked: tuple[list[bool], list[str]] | None = None
    total = config.steps * config.restarts
    bar = tqdm(total=total, desc="audio-pgd", disable=not config.progress, leave=False)
    with torch.enable_grad():
        for restart in range(config.restarts):
            start = config.random_start or restart > 0
            delta = budget.random(length, gen).to(dev) if start else torch.zeros(length, device=dev)
            delta = project(delta)
            steps = 0
            for step in range(config.steps):
                delta.requires_grad_(True)
                loss = attack_loss(slm, advs_of(delta), prompts, targets, defense, config.eot_samples)
                (grad,) = torch.autograd.grad(loss, delta)
                value = float(loss.detach())
                losses.append(value)
                if value < best[0]:
                    best = (value, delta.detach().clone())
                with torch.no_grad():
                    delta = project(budget.descend(delta.detach(), torch.nan_to_num(grad)))
                steps += 1
                if callback is not None:
                    callback(len(losses), delta, value)
                bar.update(1)
                bar.set_postfix(loss=f"{value:.3f}")
                log.debug("restart %d step %d loss %.4f", restart, step + 1, value)
                if config.early_stop and ((step + 1) % config.check_every == 0 or step + 1 == config.steps):
                    hits, responses = _greedy_check(slm, advs_of(delta), prompts, targets, defense)
                    if all(hits):
                        found, checked = delta.detach().clone(), (hits, responses)
                        break
            restart_steps.append(steps)
            if found is not None:
                break
    bar.close()
    final = found if found is not None else best[1]
    with torch.no_grad():
        final_advs = advs_of(final)
        if checked is None:
            checked = _greedy_check(slm, final_advs, prompts, targets, defense)
        final_loss = float(attack_loss(slm, final_advs, prompts, targets, defense, config.eot_samples))
    return _Run(
        delta=final.detach(),
        successes=checked[0],
        responses=checked[1],
        final_loss=final_loss,
        losses=losses,
        restart_steps=restart_steps,
        wall_time=time.perf_counter() - t0,
        early_stopped=found is not None,
    )
