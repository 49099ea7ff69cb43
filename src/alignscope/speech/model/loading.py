"""Loading speech LLMs: by spec string (the CLI's ``--slm`` and ``--surrogate``: the embedded build, another
build, a directory, or the embedded architecture with an untrained projector), from a build or projector
directory (:func:`load_slm`), and the projectors shipped as package data (:func:`shipped_projector`)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import torch

from alignscope.config_io import read_assignment
from alignscope.models.loading import load_model
from alignscope.models.local import LocalModel
from alignscope.speech.build.config import (
    DEFAULT_SPEECH_LLM,
    EMBEDDED_ENCODER,
    LLM_ADAPTER_DIR,
    PROJECTOR_DIR,
    SpeechBuildConfig,
    default_build_dir,
)
from alignscope.speech.errors import SpeechError
from alignscope.speech.model.projector import CONFIG_FILE, Projector
from alignscope.speech.model.slm import SpeechLM

__all__ = [
    "SHIPPED_DIR",
    "adapted_llm",
    "load_encoder",
    "load_slm",
    "load_speech_model",
    "random_speech_model",
    "shipped_projector",
]

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "projectors"
"""Projectors shipped as package data (``alignscope/speech/projectors/``), named after their LLM and loadable by
name (``load_slm("smollm2-balanced")``)."""
_BEFORE_SETTING = {"distill_ctc_weight": 0.0}
"""Settings added after earlier projectors shipped, with the value the builds made before them had (a provenance
without the setting was built with it off, whatever today's default)."""


def load_speech_model(spec: str, device: str | None = None) -> SpeechLM:
    """A speech LLM from a spec:

    * ``default``: the embedded speech LLM, the build of the default
      :class:`~alignscope.speech.build.config.SpeechBuildConfig` (on
      :data:`~alignscope.speech.build.config.DEFAULT_SPEECH_LLM`): the shipped projector of that config, else the
      finished build in the cache;
    * ``build:KEY=VALUE,...``: the build of the default config with those fields changed (JSON values), e.g.
      ``build:seed=1`` for the surrogate of ``reproduce speechguard``; shipped or in the cache, as above;
    * ``random`` / ``random:LLM_SPEC``: Whisper tiny.en and a *randomly initialised* projector on the LLM
      (default :data:`~alignscope.speech.build.config.DEFAULT_SPEECH_LLM`), for smoke tests and speed measurements
      only; its name says so;
    * anything else: a projector or build directory, or a shipped projector name
      (:func:`load_slm`).
    """
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
        pair = read_assignment(part, strip_text=True)
        if pair is None:
            raise SpeechError(f"bad build override {part!r}: expected KEY=VALUE")
        values[pair[0]] = pair[1]
    return values


def random_speech_model(
    llm_spec: str | None = None, seed: int = 0, device: str | None = None, crop: bool = True
) -> SpeechLM:
    """Whisper tiny.en + a randomly initialised projector + ``llm_spec``: the embedded architecture without a
    trained projector (for speed measurements and smoke tests; it does not understand speech)."""
    from alignscope.models.loading import load_model
    from alignscope.speech.model.projector import ProjectorConfig
    from alignscope.speech.model.whisper import whisper_encoder

    llm_spec = llm_spec or DEFAULT_SPEECH_LLM
    llm = load_model(llm_spec, device=device)
    enc = whisper_encoder(device=llm.device)
    torch.manual_seed(seed)
    proj = Projector(ProjectorConfig(encoder_dim=int(enc.d_model), llm_dim=int(llm.model.config.hidden_size)))
    return SpeechLM(enc, proj, llm, crop=crop, name=f"{llm_spec}+audio (random projector, seed {seed})")


def load_encoder(spec: str, device: torch.device | None = None) -> Any:
    """The Whisper encoder of a build: ``"tiny.en"`` (the embedded one) or a CTranslate2 Whisper directory."""
    from alignscope.speech.model.whisper import whisper_encoder

    return whisper_encoder(None if spec == EMBEDDED_ENCODER else spec, device)


def adapted_llm(llm: LocalModel, adapter: Path) -> LocalModel:
    """A copy of ``llm`` with the LoRA adapter saved in ``adapter`` merged into its weights."""
    from peft import PeftModel

    if not (adapter / "adapter_config.json").is_file():
        raise SpeechError(f"{adapter}: no LoRA adapter (adapter_config.json) here")
    merged = PeftModel.from_pretrained(copy.deepcopy(llm.model), str(adapter)).merge_and_unload()
    return LocalModel(merged, llm.tokenizer, f"{llm.name}+speech-lora", template=llm.template)


def shipped_projector(config: SpeechBuildConfig) -> Path | None:
    """The shipped projector that ``build_slm(config)`` made (same :meth:`~SpeechBuildConfig.identity` in its
    provenance), or None: users get the build without rebuilding it."""
    if not SHIPPED_DIR.is_dir():
        return None
    want = config.identity()
    for d in sorted(SHIPPED_DIR.iterdir()):
        if not (d / CONFIG_FILE).is_file():
            continue
        meta = json.loads((d / CONFIG_FILE).read_text()).get("metadata", {})
        if meta.get("reused_from"):  # shipped for another LLM than the one its build config names
            continue
        try:
            shipped = SpeechBuildConfig.from_dict({**_BEFORE_SETTING, **meta.get("config", {})})
        except (SpeechError, TypeError):  # a projector of another alignscope version's settings
            continue
        if shipped.identity() == want:
            return d
    return None


def _projector_dir(path_or_name: str | Path) -> Path:
    p = Path(path_or_name).expanduser()
    for cand in (p, p / PROJECTOR_DIR):
        if (cand / CONFIG_FILE).is_file():
            return cand
    shipped = SHIPPED_DIR / str(path_or_name)
    if re.fullmatch(r"[\w.+-]+", str(path_or_name)) and (shipped / CONFIG_FILE).is_file():
        return shipped
    raise SpeechError(
        f"{path_or_name}: not a projector directory, a speech build directory or a shipped projector "
        f"(shipped: {sorted(d.name for d in SHIPPED_DIR.iterdir()) if SHIPPED_DIR.is_dir() else []})"
    )


def load_slm(
    path_or_name: str | Path,
    llm: LocalModel | None = None,
    encoder: Any = None,
    device: str | None = None,
    crop: bool | None = None,
) -> SpeechLM:
    """The :class:`SpeechLM` of a build: a projector directory, a build directory or a shipped projector name.

    The LLM and encoder are the ones the provenance names (``llm`` / ``encoder`` replace them, e.g. an already
    loaded model); ``crop`` defaults to the build's."""
    directory = _projector_dir(path_or_name)
    model = llm if llm is not None else None
    meta: dict[str, Any] = json.loads((directory / CONFIG_FILE).read_text()).get("metadata", {})
    if model is None:
        spec = meta.get("llm")
        if not spec:
            raise SpeechError(f"{directory}: the provenance names no LLM; pass llm=")
        model = load_model(str(spec), device=device)
    if encoder is None:
        encoder = load_encoder(str(meta.get("encoder", EMBEDDED_ENCODER)), model.device)
    projector = Projector.load(directory, model.device)
    adapter: Path | None = directory / LLM_ADAPTER_DIR
    if adapter is not None and not adapter.is_dir():
        adapter = None
    return SpeechLM(
        encoder,
        projector,
        adapted_llm(model, adapter) if adapter is not None else model,
        crop=bool(meta.get("crop", True)) if crop is None else crop,
        name=f"{meta.get('llm', model.name)}+audio",
        text_llm=model,
        llm_adapter=adapter,
    )
