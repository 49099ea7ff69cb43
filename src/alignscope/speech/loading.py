"""Speech LLMs by spec string (the CLI's ``--slm`` and ``--surrogate``): the embedded build, another build,
a directory, or the embedded architecture with an untrained projector."""

from __future__ import annotations

import json
from typing import Any

import torch

from alignscope.speech.errors import SpeechError
from alignscope.speech.slm import SpeechLM

__all__ = ["load_speech_model", "random_speech_model"]


def load_speech_model(spec: str, device: str | None = None) -> SpeechLM:
    """A speech LLM from a spec:

    * ``default``: the embedded speech LLM, the build of the default
      :class:`~alignscope.speech.build.SpeechBuildConfig` (on
      :data:`~alignscope.speech.build.DEFAULT_SPEECH_LLM`): the shipped projector of that config, else the
      finished build in the cache;
    * ``build:KEY=VALUE,...``: the build of the default config with those fields changed (JSON values), e.g.
      ``build:seed=1`` for the surrogate of ``reproduce speechguard``; shipped or in the cache, as above;
    * ``random`` / ``random:LLM_SPEC``: Whisper tiny.en and a *randomly initialised* projector on the LLM
      (default :data:`~alignscope.speech.build.DEFAULT_SPEECH_LLM`), for smoke tests and speed measurements
      only; its name says so;
    * anything else: a projector or build directory, or a shipped projector name
      (:func:`~alignscope.speech.build.load_slm`).
    """
    from alignscope.speech.build import (
        DEFAULT_SPEECH_LLM,
        SpeechBuildConfig,
        default_build_dir,
        load_slm,
        shipped_projector,
    )

    spec = spec.strip()
    if spec == "random" or spec.startswith("random:"):
        return random_speech_model(spec.partition(":")[2] or DEFAULT_SPEECH_LLM, device=device)
    if spec in ("default", "embedded") or spec.startswith("build:"):
        overrides = _kv(spec.partition(":")[2]) if spec.startswith("build:") else {}
        cfg = SpeechBuildConfig.from_dict({**SpeechBuildConfig().to_dict(), **overrides})
        shipped = shipped_projector(cfg)
        if shipped is not None:
            return load_slm(shipped, device=device)
        out = default_build_dir(cfg)
        if not (out / "projector").is_dir():
            sets = " ".join(f"--set {k}={json.dumps(v)}" for k, v in overrides.items())
            raise SpeechError(
                f"no finished speech build for {spec!r} (looked in {out}); build it first: "
                f"alignscope speech build {sets}".rstrip()
            )
        return load_slm(out, device=device)
    return load_slm(spec, device=device)


def _kv(text: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, raw = part.partition("=")
        if not eq or not key.strip():
            raise SpeechError(f"bad build override {part!r}: expected KEY=VALUE")
        try:
            values[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            values[key.strip()] = raw.strip()
    return values


def random_speech_model(
    llm_spec: str | None = None, seed: int = 0, device: str | None = None, crop: bool = True
) -> SpeechLM:
    """Whisper tiny.en + a randomly initialised projector + ``llm_spec``: the embedded architecture without a
    trained projector (for speed measurements and smoke tests; it does not understand speech)."""
    from alignscope.models.loading import load_model
    from alignscope.speech.build import DEFAULT_SPEECH_LLM
    from alignscope.speech.projector import Projector, ProjectorConfig
    from alignscope.speech.whisper import whisper_encoder

    llm_spec = llm_spec or DEFAULT_SPEECH_LLM
    llm = load_model(llm_spec, device=device)
    enc = whisper_encoder(device=llm.device)
    torch.manual_seed(seed)
    proj = Projector(ProjectorConfig(encoder_dim=int(enc.d_model), llm_dim=int(llm.model.config.hidden_size)))
    return SpeechLM(enc, proj, llm, crop=crop, name=f"{llm_spec}+audio (random projector, seed {seed})")
