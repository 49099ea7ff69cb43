"""Speech synthesis with espeak-ng, from the ``espeakng-loader`` wheel (which ships the library and its data).

The library is driven directly through ctypes in synchronous mode: each :func:`synthesize` call sets the voice
and prosody, synthesises the text, and collects the samples handed to the callback. espeak-ng keeps global
state, so calls are serialised with a lock (threads may call :func:`synthesize` freely; they simply queue).

espeak-ng's formant voices are robotic but intelligible to Whisper, and they need no model download: spoken
versions of the text suites can be made on any machine, offline. The output is not bit-identical from call to
call: the voice's pitch flutter runs on a phase counter inside the library that carries over between utterances
(and no API resets it), so the same text differs slightly depending on what was spoken before. A fresh process
speaking the same texts in the same order reproduces the same samples; :func:`~alignscope.speech.spoken.suites.speak_suite`
caches its WAVs so a suite is spoken only once.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

from alignscope.speech.errors import SpeechError
from alignscope.speech.model.audio import resample
from alignscope.speech.model.features import SAMPLE_RATE

# English voices of the bundled data, "language[+variant]" ("en" is British), the klatt variants first: Whisper
# tiny.en hears them best on short sentences (word error rates per voice in docs/speech.md).
VOICES: list[str] = ["en-us+klatt4", "en-us+klatt3", "en-us+klatt5", "en+klatt4", "en-us", "en", "en-us+f3"]
DEFAULT_VOICE = "en-us+klatt4"

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_espeakRATE, _espeakVOLUME, _espeakPITCH = 1, 2, 3
_POS_CHARACTER = 1
_espeakCHARS_UTF8 = 1
_EE_OK = 0
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

__all__ = ["DEFAULT_VOICE", "VOICES", "native_sample_rate", "synthesize"]


class _Espeak:
    """The loaded library, its native sample rate and the chunks the current synthesis has produced."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise SpeechError(
                "speech synthesis needs the espeakng-loader wheel (libespeak-ng and its data): "
                "pip install espeakng-loader==0.2.4"
            ) from e
        lib_path = espeakng_loader.get_library_path()
        try:
            data_path = espeakng_loader.get_data_path()
            lib = ctypes.CDLL(lib_path)
        except (OSError, RuntimeError) as e:
            raise SpeechError(
                f"could not load espeak-ng from the espeakng-loader wheel ({lib_path}): {e}"
            ) from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
        if rate <= 0:
            raise SpeechError(f"espeak-ng failed to initialise with data at {data_path} (returned {rate})")
        self.lib: Any = lib
        self.rate = int(rate)
        self.chunks: list[np.ndarray] = []
        # kept as an attribute: ctypes must hold a reference for as long as the library may call it
        self._callback = _CALLBACK(self._collect)
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: Any, n: int, _events: Any) -> int:
        if wav and n > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = continue synthesis

    def synth(self, text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise SpeechError(f"espeak-ng has no voice {voice!r} (try one of {VOICES})")
        self.lib.espeak_SetParameter(_espeakRATE, int(rate), 0)
        self.lib.espeak_SetParameter(_espeakPITCH, int(pitch), 0)
        self.lib.espeak_SetParameter(_espeakVOLUME, 100, 0)
        data = text.encode("utf-8") + b"\0"
        buf = ctypes.create_string_buffer(data)
        self.chunks = []
        err = self.lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _espeakCHARS_UTF8, None, None)
        if err != _EE_OK:
            raise SpeechError(f"espeak-ng could not synthesise {text[:60]!r} (error {err})")
        self.lib.espeak_Synchronize()
        chunks, self.chunks = self.chunks, []
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks)


_lock = threading.Lock()
_engine: _Espeak | None = None


def _get_engine() -> _Espeak:
    global _engine
    if _engine is None:
        _engine = _Espeak()
    return _engine


def native_sample_rate() -> int:
    """espeak-ng's output rate before resampling (22050 Hz for the bundled voices)."""
    with _lock:
        return _get_engine().rate


def synthesize(
    text: str,
    voice: str = DEFAULT_VOICE,
    rate: int = 175,
    pitch: int = 50,
    lead_silence: float = 0.3,
    tail_silence: float = 0.2,
) -> np.ndarray:
    """Speak ``text`` with espeak-ng.

    Args:
        text: what to say (UTF-8; punctuation shapes the prosody).
        voice: an espeak-ng voice name, ``language[+variant]`` (see :data:`VOICES`).
        rate: speaking rate in words per minute (espeak-ng accepts 80..450); Whisper tiny.en recognises 150
            clearly better than 175.
        pitch: base pitch, 0..100.
        lead_silence: seconds of silence before the speech; Whisper tiny.en tends to drop the first word of a
            clip that starts abruptly.
        tail_silence: seconds of silence after it.

    Returns:
        float32 mono samples in [-1, 1] at 16 kHz.

    Raises:
        SpeechError: the library cannot be loaded, the voice is unknown or synthesis fails.
    """
    if not text.strip():
        raise SpeechError("synthesize needs non-empty text")
    with _lock:
        engine = _get_engine()
        pcm = engine.synth(text, voice, rate, pitch)
        native = engine.rate
    speech = resample(pcm.astype(np.float32) / 32768.0, native, SAMPLE_RATE)
    lead = np.zeros(round(lead_silence * SAMPLE_RATE), dtype=np.float32)
    tail = np.zeros(round(tail_silence * SAMPLE_RATE), dtype=np.float32)
    return np.concatenate([lead, speech, tail]).astype(np.float32)
