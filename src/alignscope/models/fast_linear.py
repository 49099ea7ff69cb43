"""Float32 linear layers through oneDNN on CPUs where torch's default BLAS is slow.

torch runs a CPU float32 ``nn.Linear`` through MKL's sgemm. On AMD CPUs MKL takes a generic AVX2 path, while
oneDNN (bundled with torch as ``torch.ops.mkldnn``) uses AVX-512: on the 2-core AMD EPYC (Zen, AVX-512)
alignscope is developed on, a (2048 x 576) @ (576 x 1536) product ran at ~105 GFLOP/s through MKL and ~250
through oneDNN, single-threaded; GCG's float32 candidate scoring took 3.2 CPU-s instead of 6.0. On CPUs where
MKL is fast (Intel) the two are alike, so ``"auto"`` measures both once per process and thread count and only
switches when oneDNN is clearly faster.

The results are float32 either way; only the summation order differs (outputs agree to ~1e-6 relative, GCG
losses to ~1e-6), so code that must reproduce torch's own numbers bit for bit keeps ``"torch"``::

    with fp32_linears(model.model):       # "auto"
        logits = model.model(ids).logits

Only inference is switched: a call that needs a gradient (grad mode on and an input or weight that requires
it) runs torch's own linear. Weights are re-laid out once for oneDNN ("packed", ~25% faster decoding at batch
16) when the packed copies fit in a tenth of the free memory; they are kept while the layer lives and remade
when its weight changes (another storage or an in-place update).
"""

from __future__ import annotations

import functools
import threading
import time
import types
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import torch
from torch import nn
from torch.nn import functional as F

MODES = ("auto", "onednn", "torch")
"""``fp32_linears`` modes: measure and pick, force oneDNN, or leave torch's default."""

PACK_MEMORY_FRACTION = 0.1
"""Pack a module's weights for oneDNN only when the copies take at most this fraction of free memory."""

_LOCK = threading.Lock()
_ACTIVE: dict[int, int] = {}  # id(linear) -> how many open contexts patched it
_PACKED: weakref.WeakKeyDictionary[nn.Linear, tuple[tuple[int, int], torch.Tensor]] = (
    weakref.WeakKeyDictionary()
)


def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's fused linear (``torch.ops.mkldnn._linear_pointwise``)."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


@functools.cache
def onednn_speedup(threads: int) -> float:
    """oneDNN's float32 linear throughput over torch's default, measured once per thread count on a
    transformer-sized product (0 when oneDNN's linear is unavailable or fails)."""
    if not onednn_linear_available():
        return 0.0
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 512, generator=gen)
    w = torch.randn(1024, 512, generator=gen)

    def best(fn: Any) -> float:
        fn()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    with torch.no_grad():
        try:
            ours = best(lambda: _onednn(x, w, None))
            if not torch.allclose(_onednn(x, w, None), F.linear(x, w), rtol=1e-4, atol=1e-3):
                return 0.0
        except RuntimeError:
            return 0.0
        theirs = best(lambda: F.linear(x, w))
    return theirs / max(ours, 1e-12)


def use_onednn(mode: str = "auto") -> bool:
    """Whether :func:`fp32_linears` would switch in ``mode`` on this machine (``"auto"``: oneDNN measured at
    least 1.3x faster)."""
    if mode not in MODES:
        raise ValueError(f"unknown float32 linear mode {mode!r} (use one of {', '.join(MODES)})")
    if mode == "torch" or not onednn_linear_available():
        return False
    return mode == "onednn" or onednn_speedup(torch.get_num_threads()) >= 1.3


def _stamp(w: torch.Tensor) -> tuple[int, int]:
    return (w.data_ptr(), w._version)


def _pack(linear: nn.Linear) -> None:
    w = linear.weight.detach()
    _PACKED[linear] = (_stamp(linear.weight), torch.ops.mkldnn._reorder_linear_weight(w, 16))


_ONEDNN_DTYPES = (torch.float32, torch.bfloat16)


def _patched_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if (
        x.dtype != self.weight.dtype
        or x.dtype not in _ONEDNN_DTYPES
        or x.device.type != "cpu"
        or (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
    ):
        return F.linear(x, self.weight, self.bias)
    packed = _PACKED.get(self)
    if packed is not None and packed[0] == _stamp(self.weight):
        return _onednn(x, packed[1], self.bias)
    if x.dtype != torch.float32:  # torch already sends bf16 to oneDNN
        return F.linear(x, self.weight, self.bias)
    return _onednn(x, self.weight, self.bias)


def pack_linears(module: nn.Module) -> bool:
    """Pack the float32 and bfloat16 CPU ``nn.Linear`` weights of a module that alignscope owns (e.g. the
    bfloat16 copy GCG screens candidates with) for oneDNN, for good: ~20% faster bf16 matmuls, the same
    numbers. Skipped (False) without oneDNN's linear or when the packed copies would not fit in
    ``PACK_MEMORY_FRACTION`` of free memory. Calls that need a gradient still run torch's linear."""
    if not onednn_linear_available():
        return False
    linears = [
        m
        for m in module.modules()
        if type(m) is nn.Linear and m.weight.dtype in _ONEDNN_DTYPES and m.weight.device.type == "cpu"
    ]
    size = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    if size > PACK_MEMORY_FRACTION * psutil.virtual_memory().available:
        return False
    with torch.no_grad():
        for m in linears:
            _pack(m)
            m.forward = types.MethodType(_patched_forward, m)  # type: ignore[method-assign]
    return True


@contextmanager
def fp32_linears(module: nn.Module, mode: str = "auto") -> Iterator[bool]:
    """Run ``module``'s float32 CPU ``nn.Linear`` layers through oneDNN inside the ``with`` block (see the
    module docstring); yields whether it did. Safe to nest and to enter from several threads: the layers
    are restored when the last open block exits."""
    if not use_onednn(mode):
        yield False
        return
    linears = [
        m
        for m in module.modules()
        if type(m) is nn.Linear and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"
    ]
    need = [m for m in linears if (p := _PACKED.get(m)) is None or p[0] != _stamp(m.weight)]
    pack_bytes = sum(m.weight.numel() * 4 for m in need)
    if need and pack_bytes <= PACK_MEMORY_FRACTION * psutil.virtual_memory().available:
        with torch.no_grad():
            for m in need:
                _pack(m)
    with _LOCK:
        for m in linears:
            n = _ACTIVE.get(id(m), 0)
            if n == 0:
                m.forward = types.MethodType(_patched_forward, m)  # type: ignore[method-assign]
            _ACTIVE[id(m)] = n + 1
    try:
        yield True
    finally:
        with _LOCK:
            for m in linears:
                n = _ACTIVE.get(id(m), 1) - 1
                if n <= 0:
                    _ACTIVE.pop(id(m), None)
                    if "forward" in m.__dict__:
                        del m.forward
                else:
                    _ACTIVE[id(m)] = n
