"""Speech language models (SpeechGuard, Peri et al. 2024): Whisper features and encoder (read from CTranslate2
weights), espeak-ng synthesis, spoken suites, the integrated speech LLM (encoder -> projector -> LLM), its
build, white-box and transfer audio attacks, and the TDNF defence."""

from alignscope.speech.attacks import (
    AudioPGDConfig,
    AudioPGDResult,
    audio_pgd,
    transfer_attack,
    universal_audio_pgd,
)
from alignscope.speech.build import BuildResult, SpeechBuildConfig, build_slm, load_slm
from alignscope.speech.defense import TDNF, parse_defense, tdnf
from alignscope.speech.errors import SpeechError
from alignscope.speech.evaluation import evaluate_slm
from alignscope.speech.features import SAMPLE_RATE, log_mel
from alignscope.speech.loading import load_speech_model
from alignscope.speech.projector import Projector, ProjectorConfig
from alignscope.speech.slm import AUDIO_MARKER, SpeechLM, SpokenChatModel
from alignscope.speech.suites import SpokenSuite, load_spoken_suite, speak_suite
from alignscope.speech.tts import synthesize
from alignscope.speech.whisper import WhisperEncoder, load_whisper, whisper_encoder

__all__ = [
    "AUDIO_MARKER",
    "SAMPLE_RATE",
    "TDNF",
    "AudioPGDConfig",
    "AudioPGDResult",
    "BuildResult",
    "Projector",
    "ProjectorConfig",
    "SpeechBuildConfig",
    "SpeechError",
    "SpeechLM",
    "SpokenChatModel",
    "SpokenSuite",
    "WhisperEncoder",
    "audio_pgd",
    "build_slm",
    "evaluate_slm",
    "load_slm",
    "load_speech_model",
    "load_spoken_suite",
    "load_whisper",
    "log_mel",
    "parse_defense",
    "speak_suite",
    "synthesize",
    "tdnf",
    "transfer_attack",
    "universal_audio_pgd",
    "whisper_encoder",
]
