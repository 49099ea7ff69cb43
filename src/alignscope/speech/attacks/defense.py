"""Time-Domain Noise Flooding (TDNF; Peri et al., "SpeechGuard", arXiv 2405.08317): white Gaussian noise at a
chosen SNR added to every incoming clip before the speech model, a fresh draw per query.

The noise is scaled to its *realised* power, per clip, so every defended clip has exactly the requested SNR
(not just in expectation). The result is not clipped to [-1, 1]: the model takes float samples, and clipping
would lower the noise actually added. ``tdnf`` is differentiable w.r.t. the clip, so an adaptive attacker
can optimise through it (expectation over noise draws; see :mod:`alignscope.speech.attacks.pgd`).

Spec strings (the CLI's ``--defense``): ``none``, ``tdnf:snr=<dB>`` and optionally ``,seed=<int>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from alignscope.speech.errors import SpeechError


def tdnf(waveform: torch.Tensor, snr_db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``waveform`` plus white Gaussian noise at exactly ``snr_db`` dB, per clip.

    Args:
        waveform: ``(n,)`` or ``(batch, n)``; each row gets its own draw.
        snr_db: signal-to-noise ratio ``10 log10(||x||^2 / ||noise||^2)`` of every clip.
        generator: a torch generator (on CPU or the waveform's device) for reproducible draws; each call
            advances it, so repeated calls draw fresh noise.

    A silent clip (zero power) is returned unchanged: no finite noise has the requested SNR against it.
    """
    gen_device = generator.device if generator is not None else waveform.device
    noise = torch.randn(waveform.shape, generator=generator, device=gen_device, dtype=torch.float32)
    noise = noise.to(device=waveform.device, dtype=waveform.dtype)
    signal_power = waveform.pow(2).sum(-1, keepdim=True)
    noise_power = noise.pow(2).sum(-1, keepdim=True)
    scale = torch.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return waveform + noise * scale


def snr_db_of(clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """SNR in dB of ``perturbed - clean`` against ``clean``, per clip (``(batch,)`` or a scalar for ``(n,)``);
    ``inf`` when nothing changed."""
    diff = (perturbed - clean).double()
    signal = clean.double().pow(2).sum(-1)
    noise = diff.pow(2).sum(-1)
    return (10.0 * torch.log10(signal / noise)).float()


@dataclass
class TDNF:
    """The TDNF defence as a callable on clips: ``TDNF(20.0)(waveform)``.

    Attributes:
        snr_db: SNR of the added noise, dB (lower is stronger).
        seed: seeds the noise stream (None: seeded from the clock); each call draws fresh noise.
    """

    snr_db: float
    seed: int | None = None
    _generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._generator = torch.Generator()
        if self.seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(self.seed)

    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        return tdnf(waveform, self.snr_db, self._generator)

    @property
    def spec(self) -> str:
        """The spec string that rebuilds this defence (without its seed)."""
        return f"tdnf:snr={self.snr_db:g}"

    def describe(self) -> str:
        return f"TDNF (white noise at {self.snr_db:g} dB SNR, fresh per query)"


def parse_defense(spec: str | None, seed: int | None = None) -> TDNF | None:
    """The defence a spec names (``tdnf:snr=20``, ``tdnf:snr=20,seed=3``), or None for ``none``/empty.

    ``seed`` applies when the spec sets none. Raises :class:`SpeechError` naming the bad part."""
    if spec is None or spec.strip().lower() in {"", "none"}:
        return None
    kind, _, opts = spec.strip().partition(":")
    if kind.lower() != "tdnf":
        raise SpeechError(f"unknown defence {kind!r} in {spec!r} (use 'tdnf:snr=<dB>' or 'none')")
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in opts.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in {"snr", "seed"}:
            raise SpeechError(
                f"bad option {part!r} in {spec!r} (TDNF takes snr=<dB> and optionally seed=<int>)"
            )
        values[key.strip()] = value.strip()
    if "snr" not in values:
        raise SpeechError(f"{spec!r}: TDNF needs its SNR, e.g. 'tdnf:snr=20'")
    try:
        snr = float(values["snr"])
        seed = int(values["seed"]) if "seed" in values else seed
    except ValueError as e:
        raise SpeechError(f"{spec!r}: snr must be a number of dB and seed an integer") from e
    if snr != snr or snr in (float("inf"), float("-inf")):
        raise SpeechError(f"{spec!r}: snr must be finite")
    return TDNF(snr, seed)
