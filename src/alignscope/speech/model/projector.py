"""The Ultravox audio projector: encoder frames in, LLM input embeddings out.

Ultravox (Fixie.ai) stacks ``stack`` consecutive Whisper encoder frames (zero-padding the tail), then applies
RMSNorm, Linear, SwiGLU, Linear into the LLM width, and a final RMSNorm so the audio embeddings start at a
scale close to the LLM's token embeddings. A projector is small (about 3.4 M parameters from tiny.en into
SmolLM2-135M), and is saved as ``projector.safetensors`` plus ``projector.json`` (config and provenance).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignscope.speech.errors import SpeechError

WEIGHTS_FILE = "projector.safetensors"
CONFIG_FILE = "projector.json"


@dataclass(frozen=True)
class ProjectorConfig:
    """Shape of a :class:`Projector`.

    Attributes:
        encoder_dim: width of the encoder frames (384 for Whisper tiny.en).
        llm_dim: hidden size of the LLM (576 for SmolLM2-135M).
        stack: consecutive encoder frames stacked into one audio embedding (Ultravox: 8; one embedding then
            covers 8 x 20 ms = 160 ms of audio).
        hidden_dim: output width of the first Linear; SwiGLU halves it (gate and value).
        post_norm: RMSNorm on the output, as Ultravox does (keeps the audio embeddings at a fixed scale).
        norm_init: initial RMSNorm gains (Ultravox: 0.4).
        eps: RMSNorm epsilon.
    """

    encoder_dim: int = 384
    llm_dim: int = 576
    stack: int = 8
    hidden_dim: int = 1024
    post_norm: bool = True
    norm_init: float = 0.4
    eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("encoder_dim", "llm_dim", "stack", "hidden_dim"):
            if getattr(self, name) < 1:
                raise SpeechError(f"ProjectorConfig.{name} must be at least 1")
        if self.hidden_dim % 2:
            raise SpeechError("ProjectorConfig.hidden_dim must be even (SwiGLU splits it in two)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> ProjectorConfig:
        known = {f.name for f in fields(ProjectorConfig)}
        unknown = set(d) - known
        if unknown:
            raise SpeechError(f"unknown projector config fields: {sorted(unknown)}")
        return ProjectorConfig(**d)


class SwiGLU(nn.Module):
    """``silu(gate) * value`` with ``value, gate = x.chunk(2, -1)`` (Ultravox's order)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = x.chunk(2, dim=-1)
        return nn.functional.silu(gate) * value


class Projector(nn.Module):
    """Stack frames, RMSNorm, Linear, SwiGLU, Linear (, RMSNorm): ``(batch, frames, encoder_dim)`` ->
    ``(batch, ceil(frames / stack), llm_dim)``."""

    def __init__(self, config: ProjectorConfig | None = None):
        super().__init__()
        self.config = config = config or ProjectorConfig()
        self.metadata: dict[str, Any] = {}  # provenance read back by load()
        stacked = config.encoder_dim * config.stack
        self.ln_pre = nn.RMSNorm(stacked, eps=config.eps)
        self.linear_1 = nn.Linear(stacked, config.hidden_dim, bias=False)
        self.act = SwiGLU()
        self.linear_2 = nn.Linear(config.hidden_dim // 2, config.llm_dim, bias=False)
        self.ln_post = nn.RMSNorm(config.llm_dim, eps=config.eps) if config.post_norm else nn.Identity()
        with torch.no_grad():
            self.ln_pre.weight.fill_(config.norm_init)
            if isinstance(self.ln_post, nn.RMSNorm):
                self.ln_post.weight.fill_(config.norm_init)

    def n_tokens(self, frames: int) -> int:
        """Audio embeddings made from ``frames`` encoder frames."""
        return math.ceil(frames / self.config.stack)

    def stack_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``(batch, frames, dim)`` -> ``(batch, ceil(frames / stack), stack * dim)``, zero-padding the tail."""
        b, t, d = frames.shape
        if d != self.config.encoder_dim:
            raise SpeechError(f"projector expects {self.config.encoder_dim}-dim encoder frames, got {d}")
        k = self.config.stack
        pad = -t % k
        if pad:
            frames = nn.functional.pad(frames, (0, 0, 0, pad))
        return frames.reshape(b, (t + pad) // k, k * d)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = self.stack_frames(frames.to(self.linear_1.weight.dtype))
        x = self.linear_2(self.act(self.linear_1(self.ln_pre(x))))
        return self.ln_post(x)

    def save(
        self, directory: str | Path, dtype: torch.dtype | None = None, metadata: dict[str, Any] | None = None
    ) -> Path:
        """Write ``projector.safetensors`` (in ``dtype``, default: as held) and ``projector.json`` (the config
        and ``metadata``, e.g. the command, seed and metrics that produced the weights) to ``directory``."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            k: v.detach().to("cpu", dtype or v.dtype).contiguous() for k, v in self.state_dict().items()
        }
        save_file(tensors, str(out / WEIGHTS_FILE))
        info = {"config": self.config.to_dict(), "metadata": metadata or {}}
        (out / CONFIG_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        return out

    @classmethod
    def load(
        cls, directory: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
    ) -> Projector:
        """A projector saved by :meth:`save`, on ``device`` in ``dtype`` (default float32)."""
        from safetensors.torch import load_file

        path = Path(directory)
        cfg_path, weights = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not cfg_path.is_file() or not weights.is_file():
            raise SpeechError(f"{path} is not a saved projector (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        try:
            info = json.loads(cfg_path.read_text())
            config = ProjectorConfig.from_dict(info["config"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise SpeechError(f"{cfg_path}: not a projector config ({e})") from e
        proj = cls(config)
        state = load_file(str(weights))
        try:
            proj.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as e:
            raise SpeechError(f"{weights} does not match the config in {cfg_path}: {e}") from e
        proj.metadata = info.get("metadata", {})
        return proj.to(device=device, dtype=dtype or torch.float32)
