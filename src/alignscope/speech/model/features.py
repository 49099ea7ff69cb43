"""Whisper's log-mel spectrogram in torch, differentiable with respect to the waveform samples.

The numbers match ``transformers.WhisperFeatureExtractor`` (and OpenAI's ``log_mel_spectrogram``): a 400-point
STFT with a Hann window every 160 samples, power spectrum, Slaney mel filter bank over 0..8000 Hz, ``log10``
clamped at 1e-10, floored at the maximum minus 8, then ``(x + 4) / 4``. Because every step is a torch op, a
loss on the encoder output back-propagates to the samples (the white-box audio attacks need this).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from alignscope.speech.errors import SpeechError

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_SAMPLES_30S = 480000
N_FRAMES_30S = N_SAMPLES_30S // HOP_LENGTH

__all__ = ["HOP_LENGTH", "N_FFT", "N_FRAMES_30S", "N_SAMPLES_30S", "SAMPLE_RATE", "log_mel", "mel_filters"]


@lru_cache(maxsize=8)
def _mel_filters_np(n_mels: int) -> np.ndarray:
    from transformers.audio_utils import mel_filter_bank

    return mel_filter_bank(
        num_frequency_bins=1 + N_FFT // 2,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SAMPLE_RATE,
        norm="slaney",
        mel_scale="slaney",
    ).astype(np.float32)


def mel_filters(n_mels: int = 80, device: torch.device | str | None = None) -> torch.Tensor:
    """Whisper's mel filter bank, shape ``(1 + N_FFT // 2, n_mels)`` = ``(201, n_mels)``."""
    return torch.from_numpy(_mel_filters_np(n_mels)).to(device)


def log_mel(waveform: torch.Tensor, n_mels: int = 80, pad_to_30s: bool = False) -> torch.Tensor:
    """Whisper's log-mel spectrogram of 16 kHz audio.

    Args:
        waveform: samples in [-1, 1], shape ``(n,)`` or ``(batch, n)``, at :data:`SAMPLE_RATE`. Gradients flow
            back to it.
        n_mels: mel bins (80 for Whisper up to large-v2, 128 for large-v3).
        pad_to_30s: zero-pad or crop the samples to 30 s, giving 3000 frames (what Whisper was trained on and
            what Hugging Face's encoder requires). Otherwise the frame count follows the clip,
            ``n // HOP_LENGTH`` rounded down to even (the encoder's second convolution has stride 2).

    Returns:
        ``(batch, n_mels, frames)`` float tensor on the waveform's device.
    """
    if waveform.dim() == 1:
        waveform = waveform.unsqueeze(0)
    if waveform.dim() != 2:
        raise SpeechError(
            f"log_mel expects a waveform of shape (n,) or (batch, n), got {tuple(waveform.shape)}"
        )
    if not waveform.is_floating_point():
        waveform = waveform.float()
    n = waveform.shape[-1]
    if pad_to_30s:
        if n < N_SAMPLES_30S:
            waveform = torch.nn.functional.pad(waveform, (0, N_SAMPLES_30S - n))
        else:
            waveform = waveform[:, :N_SAMPLES_30S]
        n_frames = N_FRAMES_30S
    else:
        n_frames = (n // HOP_LENGTH) // 2 * 2
        if n_frames == 0:
            raise SpeechError(
                f"audio too short for Whisper features: {n} samples (need at least {2 * HOP_LENGTH}, "
                f"{2 * HOP_LENGTH / SAMPLE_RATE * 1000:.0f} ms)"
            )
    window = torch.hann_window(N_FFT, device=waveform.device, dtype=waveform.dtype)
    stft = torch.stft(waveform, N_FFT, HOP_LENGTH, window=window, center=True, return_complex=True)
    # |z|^2 as re^2 + im^2: smooth everywhere, where |z| has an undefined gradient at zero (silence)
    power = torch.view_as_real(stft[..., :n_frames]).pow(2).sum(-1)
    filters = mel_filters(n_mels, waveform.device).to(waveform.dtype)
    mel = torch.einsum("fm,bft->bmt", filters, power)
    log_spec = mel.clamp(min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0
