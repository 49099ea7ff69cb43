"""What every speed benchmark prints about the machine, and the rule that keeps a ratio honest under load.

Each benchmark prints :func:`machine_line` (cores, torch threads, the CPU flags that decide which kernels run:
AVX2, AVX-512, AVX512-BF16, AMX, whether float32 linears run through oneDNN) and the 1-minute load average
before and after. Each side of a comparison is measured as a :class:`Side`: wall seconds, CPU seconds of the
process that did the work (``time.process_time``, all its threads), and the load average when it started and
ended.

**The load rule.** A ratio of two sides is printed only when they ran under similar load:

* their load averages (the mean of the 1-minute value at start and end of each side) differ by at most
  ``LOAD_TOLERANCE`` = max(1.0, cores / 2), and
* their CPU shares (CPU seconds / (wall seconds x threads): the fraction of its cores a side actually got)
  differ by at most ``SHARE_TOLERANCE`` = 0.25.

Otherwise the ratio is replaced by ``refused: <why>``. Ratios are computed from CPU seconds (steady when other
processes take turns on the cores) and printed next to the wall-clock ratio; on an idle machine the two agree.
The 1-minute load average trails by about a minute, so the CPU share, measured on the side itself, is the
sharper of the two tests.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import torch

SHARE_TOLERANCE = 0.25
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")

T = TypeVar("T")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


LOAD_TOLERANCE = max(1.0, cores() / 2)


def load1() -> float:
    """The 1-minute load average (nan where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def cpu_flags() -> dict[str, bool]:
    """The CPU flags that decide which matmul kernels run, from /proc/cpuinfo (all False elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read(1 << 16)
    except OSError:
        text = ""
    line = next((x for x in text.splitlines() if x.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return {f: f in have for f in FLAGS}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for x in f:
                if x.startswith("model name"):
                    return x.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    from alignscope.models.fast_linear import onednn_speedup

    return {
        "cpu": cpu_model(),
        "cores": cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "flags": cpu_flags(),
        "onednn_fp32_speedup": round(onednn_speedup(torch.get_num_threads()), 2),
        "load1": load1(),
    }


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line: CPU, cores, torch threads, the kernel-deciding flags, oneDNN's float32 linear speed-up."""
    info = info or machine_info()
    flags = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in info["flags"].items())
    return (
        f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} "
        f"thread(s), capability {info['torch_cpu_capability']}; {flags}; oneDNN float32 linear "
        f"{info['onednn_fp32_speedup']:.2f}x torch's BLAS"
    )


@dataclass
class Side:
    """One measured side of a comparison."""

    name: str
    wall: float
    cpu: float
    threads: int
    load_start: float
    load_end: float

    @property
    def load(self) -> float:
        return (self.load_start + self.load_end) / 2

    @property
    def share(self) -> float:
        """CPU seconds per wall second and thread: 1.0 when the side had its cores to itself."""
        return self.cpu / max(self.wall * self.threads, 1e-9)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "load": self.load, "share": self.share}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Side:
        return cls(d["name"], d["wall"], d["cpu"], d["threads"], d["load_start"], d["load_end"])


def measure(name: str, fn: Callable[[], T]) -> tuple[T, Side]:
    """Run ``fn`` in this process and measure it as a :class:`Side`."""
    l0, w0, c0 = load1(), time.perf_counter(), time.process_time()
    out = fn()
    side = Side(
        name, time.perf_counter() - w0, time.process_time() - c0, torch.get_num_threads(), l0, load1()
    )
    return out, side


def refusal(a: Side, b: Side) -> str | None:
    """Why the ratio of ``a`` and ``b`` must not be reported (see the module docstring), or None."""
    why = []
    if abs(a.load - b.load) > LOAD_TOLERANCE:
        why.append(f"load {a.load:.2f} vs {b.load:.2f} (tolerance {LOAD_TOLERANCE:.1f})")
    if abs(a.share - b.share) > SHARE_TOLERANCE:
        why.append(f"CPU share {a.share:.2f} vs {b.share:.2f} (tolerance {SHARE_TOLERANCE:.2f})")
    return "; ".join(why) or None


def ratio_text(slow: Side, fast: Side, value: float | None = None, unit: str = "x") -> str:
    """``value`` (default: slow CPU / fast CPU) formatted, or the refusal."""
    why = refusal(slow, fast)
    if why:
        return f"refused: {why}"
    value = value if value is not None else slow.cpu / max(fast.cpu, 1e-12)
    return f"{value:.2f}{unit}"


def load_line(before: float, after: float) -> str:
    return f"1-minute load average: {before:.2f} before, {after:.2f} after ({cores()} cores)"


RULE = (
    f"load rule: a ratio is shown only when its two sides' 1-minute load averages differ by <= "
    f"{LOAD_TOLERANCE:.1f} and their CPU shares (CPU-s / (wall-s x threads)) by <= {SHARE_TOLERANCE:.2f}; "
    "ratios use CPU seconds of the measured process"
)


def print_heading(title: str, load_before: float, load_after: float) -> None:
    """What every benchmark prints above its tables: what was measured, the load around it, the ratio rule."""
    print(title)
    print(load_line(load_before, load_after))
    print(RULE + "\n")
