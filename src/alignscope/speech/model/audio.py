"""Audio files and levels: read and write WAV/FLAC at 16 kHz mono, resample, and the SNR of a perturbation."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from alignscope.cachefs import atomic_file
from alignscope.speech.errors import SpeechError
from alignscope.speech.model.features import SAMPLE_RATE

__all__ = ["load_audio", "resample", "save_audio", "snr_db"]


def resample(samples: np.ndarray, orig_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``) of a mono float signal; float32 out."""
    if orig_rate <= 0 or target_rate <= 0:
        raise SpeechError(f"sample rates must be positive, got {orig_rate} -> {target_rate}")
    samples = np.asarray(samples, dtype=np.float32)
    if orig_rate == target_rate:
        return samples
    from scipy.signal import resample_poly

    ratio = Fraction(target_rate, orig_rate)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, resample: bool = True) -> np.ndarray:
    """Read a WAV or FLAC file as float32 mono samples in [-1, 1] at ``sample_rate``.

    Stereo (or more channels) is averaged to mono. A file at another rate is resampled, or with
    ``resample=False`` refused.

    Raises:
        SpeechError: naming the file when it is missing or unreadable, or (``resample=False``) naming both rates.
    """
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise SpeechError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:
        raise SpeechError(f"could not read audio file {path}: {e}") from e
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != sample_rate:
        if not resample:
            raise SpeechError(
                f"{path} is sampled at {rate} Hz, expected {sample_rate} Hz (pass resample=True)"
            )
        return _resample(mono, rate, sample_rate)
    return np.ascontiguousarray(mono, dtype=np.float32)


_resample = resample  # load_audio's ``resample`` flag shadows the function inside it


def save_audio(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono samples in [-1, 1] as 16-bit PCM (``.wav``) or FLAC (``.flac``); returns the path.

    Parent directories are created; the file is written to a private temporary name first and renamed
    (:func:`alignscope.cachefs.atomic_file`), so a killed run never leaves a half-written file behind and
    processes writing the same clip at once do not collide.
    """
    import soundfile as sf

    path = Path(path)
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise SpeechError(f"save_audio writes mono audio, got shape {samples.shape} for {path}")
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(path.suffix.lower())
    if fmt is None:
        raise SpeechError(f"{path}: unsupported audio format (use .wav or .flac)")
    with atomic_file(path) as tmp:
        sf.write(str(tmp), np.clip(samples, -1.0, 1.0), sample_rate, subtype="PCM_16", format=fmt)
    return path


def snr_db(clean: np.ndarray, perturbed: np.ndarray) -> float:
    """Signal-to-noise ratio of a perturbation in dB: ``10 log10(||clean||² / ||perturbed - clean||²)``.

    ``inf`` when the two are identical. Accepts numpy arrays or anything convertible (e.g. CPU tensors).
    """
    clean = np.asarray(clean, dtype=np.float64)
    perturbed = np.asarray(perturbed, dtype=np.float64)
    if clean.shape != perturbed.shape:
        raise SpeechError(f"snr_db needs equal shapes, got {clean.shape} and {perturbed.shape}")
    noise = float(np.sum((perturbed - clean) ** 2))
    signal = float(np.sum(clean**2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
