"""What the machine's processor can do, detected at run time (never assumed)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# CPU flags (Linux /proc/cpuinfo) that give native bfloat16 dot products: AVX-512 BF16 and AMX.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The processor's feature flags; empty where they cannot be read (not Linux)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        if platform.system() != "Linux" or not path.is_file():
            return frozenset()
        cpuinfo = path.read_text(errors="replace")
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def native_cpu_bf16() -> bool:
    """True when the CPU computes bfloat16 natively, so that bf16 autocast speeds training up (on CPUs
    without it oneDNN emulates bf16, slower than float32)."""
    return any(f in cpu_flags() for f in NATIVE_BF16_FLAGS)
