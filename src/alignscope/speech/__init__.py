"""Speech language models (SpeechGuard, Peri et al. 2024): Whisper features and encoder (read from CTranslate2
weights), espeak-ng synthesis, spoken suites, the integrated speech LLM (encoder -> projector -> LLM), its
build, white-box and transfer audio attacks, the TDNF defence, and the speech experiments.

Subpackages by concern: :mod:`.model` (the speech LLM and its loading), :mod:`.spoken` (synthesis and spoken
suites), :mod:`.build` (building the projector, adversarial training), :mod:`.attacks` (PGD, TDNF, the spoken
attack evaluation) and :mod:`.evaluation` (held-out evaluation, the SpeechGuard reproduction). The public names
are re-exported here.
"""

from alignscope.speech.attacks.config import SpokenAttackConfig
from alignscope.speech.attacks.defense import TDNF, parse_defense, tdnf
from alignscope.speech.attacks.evaluation import run_spoken_attacks
from alignscope.speech.attacks.experiments import (
    AudioPGDAttackConfig,
    AudioTransferConfig,
    SpokenAttackResult,
    run_audio_pgd,
    run_audio_transfer,
)
from alignscope.speech.attacks.pgd import (
    AudioPGDConfig,
    AudioPGDResult,
    audio_pgd,
    transfer_attack,
    universal_audio_pgd,
)
from alignscope.speech.build.adversarial import AdversarialTrainingConfig, adversarial_train
from alignscope.speech.build.builder import build_slm
from alignscope.speech.build.config import BuildResult, SpeechBuildConfig
from alignscope.speech.errors import SpeechError
from alignscope.speech.evaluation.held_out import (
    SpeechEvalConfig,
    SpeechEvalResult,
    evaluate_slm,
    run_speech_eval,
)
from alignscope.speech.evaluation.speechguard import SpeechGuardConfig, SpeechGuardResult, run_speechguard
from alignscope.speech.model.features import SAMPLE_RATE, log_mel
from alignscope.speech.model.loading import load_slm, load_speech_model, shipped_projector
from alignscope.speech.model.projector import Projector, ProjectorConfig
from alignscope.speech.model.slm import AUDIO_MARKER, SpeechLM, SpokenChatModel
from alignscope.speech.model.whisper import WhisperEncoder, load_whisper, whisper_encoder
from alignscope.speech.spoken.suites import SpokenSuite, load_spoken_suite, speak_suite
from alignscope.speech.spoken.tts import synthesize

__all__ = [
    "AUDIO_MARKER",
    "SAMPLE_RATE",
    "TDNF",
    "AdversarialTrainingConfig",
    "AudioPGDAttackConfig",
    "AudioPGDConfig",
    "AudioPGDResult",
    "AudioTransferConfig",
    "BuildResult",
    "Projector",
    "ProjectorConfig",
    "SpeechBuildConfig",
    "SpeechError",
    "SpeechEvalConfig",
    "SpeechEvalResult",
    "SpeechGuardConfig",
    "SpeechGuardResult",
    "SpeechLM",
    "SpokenAttackConfig",
    "SpokenAttackResult",
    "SpokenChatModel",
    "SpokenSuite",
    "WhisperEncoder",
    "adversarial_train",
    "audio_pgd",
    "build_slm",
    "evaluate_slm",
    "load_slm",
    "load_speech_model",
    "load_spoken_suite",
    "load_whisper",
    "log_mel",
    "parse_defense",
    "run_audio_pgd",
    "run_audio_transfer",
    "run_speech_eval",
    "run_speechguard",
    "run_spoken_attacks",
    "shipped_projector",
    "speak_suite",
    "synthesize",
    "tdnf",
    "transfer_attack",
    "universal_audio_pgd",
    "whisper_encoder",
]
