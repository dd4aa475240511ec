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


# glibc malloc: serve blocks up to this size from the heap (the most glibc allows on 64-bit) ...
MALLOC_MMAP_THRESHOLD = 32 * 2**20
# ... and keep up to this much freed memory at the heap's top instead of returning it to the kernel
MALLOC_TRIM_THRESHOLD = 512 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers (malloc.h)


@functools.cache
def keep_freed_memory() -> str:
    """Stop glibc from handing a training step's freed tensors back to the kernel (-> what was done, for the log).

    glibc returns freed memory above a threshold it adjusts by itself; depending on what a process allocated
    before (an in-memory dataset raises it, a streamed run does not), every training step can map tens of MB
    afresh: the default CPU config streaming its images took ~9 000 page faults and ~15 ms (15 %) more a step
    than from memory. Fixed thresholds (``MALLOC_MMAP_THRESHOLD``, ``MALLOC_TRIM_THRESHOLD``) take that away.
    Left alone where the user set ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` or the C library is not
    glibc.
    """
    import ctypes
    import os

    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return "malloc thresholds left as set in the environment"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "malloc thresholds left alone (not glibc)"
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return "malloc thresholds left alone (no mallopt)"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD) == 1 and \
        mallopt(_M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD) == 1
    if not ok:
        return "malloc thresholds: mallopt refused"
    return (f"malloc: blocks up to {MALLOC_MMAP_THRESHOLD >> 20} MiB from the heap, up to "
            f"{MALLOC_TRIM_THRESHOLD >> 20} MiB of freed memory kept (fewer page faults a step)")
