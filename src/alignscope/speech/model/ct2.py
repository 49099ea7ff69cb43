"""A reader for CTranslate2 ``model.bin`` files (e.g. faster-whisper's Whisper weights), in plain Python.

Layout (little-endian; a *string* is a uint16 length counting the trailing NUL, the bytes, then the NUL)::

    uint32 binary version (6)
    string spec name ("WhisperSpec"), uint32 spec revision
    uint32 n_variables, then per variable:
        string name, uint8 rank, rank x uint32 dims, uint8 dtype, uint32 n_bytes, n_bytes of row-major data
    uint32 n_aliases, then (string alias, string target) pairs

dtype codes: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. A quantised weight ``<name>`` comes
with a float32 ``<name>_scale`` (one per output row for int8, a scalar for int16): ``w = q / scale``.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from alignscope.speech.errors import SpeechError

SUPPORTED_VERSIONS = (6,)
DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),  # raw bits, widened to float32 below
}
SCALE_SUFFIX = "_scale"

__all__ = ["CT2Model", "read_ctranslate2", "read_ctranslate2_model"]


class CT2Model:
    """The content of a ``model.bin``: spec name and revision, and the variables (quantised weights already
    dequantised to float32, aliases resolved to the same tensor)."""

    def __init__(self, spec: str, revision: int, variables: dict[str, torch.Tensor]) -> None:
        self.spec = spec
        self.revision = revision
        self.variables = variables

    def scalar(self, name: str, default: int) -> int:
        """An integer scalar variable (e.g. ``encoder/num_heads``), or ``default`` when absent."""
        t = self.variables.get(name)
        return default if t is None else int(t.reshape(-1)[0].item())


class _Cursor:
    """Bounds-checked little-endian reads over the file's bytes; running off the end names the file."""

    def __init__(self, data: bytes | memoryview, path: Path) -> None:
        self.data = data
        self.path = path
        self.pos = 0

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if end > len(self.data):
            raise SpeechError(
                f"{self.path}: truncated CTranslate2 file (reading {what} at byte {self.pos} needs {n} bytes, "
                f"the file has {len(self.data)})"
            )
        view = memoryview(self.data)[self.pos : end]
        self.pos = end
        return view

    def unpack(self, fmt: str, what: str) -> tuple[int, ...]:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def u8(self, what: str) -> int:
        return self.unpack("B", what)[0]

    def u32(self, what: str) -> int:
        return self.unpack("I", what)[0]

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", what + " length")
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise SpeechError(
                f"{self.path}: corrupt CTranslate2 file ({what} at byte {self.pos - n} is not NUL-terminated)"
            )
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise SpeechError(f"{self.path}: corrupt CTranslate2 file ({what} is not UTF-8: {e})") from e


def read_ctranslate2_model(path: str | Path) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` (or a directory holding one) into a :class:`CT2Model`.

    Raises:
        SpeechError: naming the file, when it is missing, of an unsupported version, has an unknown dtype or
            a size that disagrees with its shape, or is truncated.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise SpeechError(f"CTranslate2 model file not found: {path}")
    cur = _Cursor(path.read_bytes(), path)
    version = cur.u32("binary version")
    if version not in SUPPORTED_VERSIONS:
        raise SpeechError(
            f"{path}: not a supported CTranslate2 model (binary version {version}, expected one of "
            f"{list(SUPPORTED_VERSIONS)}; is this really a CTranslate2 model.bin?)"
        )
    spec = cur.string("spec name")
    revision = cur.u32("spec revision")
    n_vars = cur.u32("variable count")
    raw: dict[str, tuple[int, np.ndarray]] = {}
    for i in range(n_vars):
        name = cur.string(f"name of variable {i}")
        rank = cur.u8(f"rank of {name}")
        dims = cur.unpack("I" * rank, f"shape of {name}") if rank else ()
        code = cur.u8(f"dtype of {name}")
        if code not in DTYPES:
            raise SpeechError(
                f"{path}: variable {name!r} has unknown dtype code {code} (known: {sorted(DTYPES)})"
            )
        dtype_name, np_dtype = DTYPES[code]
        n_bytes = cur.u32(f"byte count of {name}")
        expected = int(np.prod(dims, dtype=np.int64)) * np_dtype.itemsize
        if n_bytes != expected:
            raise SpeechError(
                f"{path}: variable {name!r} holds {n_bytes} bytes but shape {list(dims)} of {dtype_name} needs "
                f"{expected}"
            )
        data = np.frombuffer(cur.take(n_bytes, f"data of {name}"), dtype=np_dtype).reshape(dims)
        raw[name] = (code, data)
    n_aliases = cur.u32("alias count")
    aliases: dict[str, str] = {}
    for i in range(n_aliases):
        alias = cur.string(f"alias {i}")
        aliases[alias] = cur.string(f"target of alias {alias!r}")
    variables: dict[str, torch.Tensor] = {}
    for name, (code, data) in raw.items():
        if name.endswith(SCALE_SUFFIX) and name[: -len(SCALE_SUFFIX)] in raw:
            continue
        variables[name] = _to_tensor(code, data, raw.get(name + SCALE_SUFFIX), name, path)
    for alias, target in aliases.items():
        if target not in variables:
            raise SpeechError(f"{path}: alias {alias!r} points to missing variable {target!r}")
        variables[alias] = variables[target]
    return CT2Model(spec, revision, variables)


def read_ctranslate2(path: str | Path) -> dict[str, torch.Tensor]:
    """The variables of a CTranslate2 ``model.bin`` by name: float weights as float32 (int8/int16 weights
    dequantised with their ``_scale``, float16/bfloat16 widened), integer scalars as integer tensors, and each
    alias mapped to its target's tensor. See :func:`read_ctranslate2_model` for the errors."""
    return read_ctranslate2_model(path).variables


def _to_tensor(
    code: int, data: np.ndarray, scale: tuple[int, np.ndarray] | None, name: str, path: Path
) -> torch.Tensor:
    if code == 5:
        bits = data.astype(np.uint32) << 16
        return torch.from_numpy(bits.view(np.float32).copy())
    if code in (0, 4):
        return torch.from_numpy(data.astype(np.float32))
    if scale is None:  # a plain integer variable (flags, head counts)
        return torch.from_numpy(data.astype(data.dtype.newbyteorder("=")))
    s = scale[1].astype(np.float32)
    if s.size not in (1, data.shape[0] if data.ndim else 1):
        raise SpeechError(
            f"{path}: scale of {name!r} has {s.size} values; expected 1 or one per output row ({data.shape[0]})"
        )
    s = s.reshape((-1,) + (1,) * (data.ndim - 1)) if s.size > 1 else s.reshape(())
    return torch.from_numpy(data.astype(np.float32) / s)
