"""Real-time settings for the control loop: SCHED_FIFO priority, locked memory, a pinned core.

Call ``configure_realtime(cfg)`` **in the thread that runs the loop**, before its first tick: on Linux
the scheduling policy and the CPU affinity set with pid 0 apply to the calling thread only (the other
threads, the inference worker included, keep theirs); ``mlockall`` applies to the whole process.
Each setting that the OS refuses (no root, no ``CAP_SYS_NICE`` / ``ulimit -r``, ``ulimit -l``, a
container without real-time budget, not Linux) is logged and reported, never raised: the loop runs on
without it. ``restore_realtime(report)`` undoes what was applied (benchmarks run with and without).

On a robot computer: a PREEMPT_RT kernel, the user in a group with ``rtprio 95`` and ``memlock
unlimited`` in ``/etc/security/limits.conf`` (``ulimit -r`` / ``ulimit -l``), and the loop on a core
that the inference process and the camera drivers do not use.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MCL_CURRENT, MCL_FUTURE = 1, 2  # <sys/mman.h> on Linux
MAX_FIFO_PRIORITY = 99


@dataclass
class RealtimeConfig:
    """Real-time settings of the control-loop thread (all off by default).

    ``priority``: SCHED_FIFO priority 1..98 (None: leave the normal scheduler; 99 is left to the
    kernel's own threads, and libfranka uses 80 for its 1 kHz thread, so ~70 suits the 10 Hz loop).
    ``cpu``: the core to pin the loop thread to (None: no pinning); pick one that inference does not use.
    ``lock_memory``: ``mlockall(MCL_CURRENT | MCL_FUTURE)`` so no page fault stalls a tick.
    """

    priority: int | None = None
    cpu: int | None = None
    lock_memory: bool = False

    def __post_init__(self) -> None:
        if self.priority is not None and (isinstance(self.priority, bool) or not isinstance(self.priority, int)
                                          or not 1 <= self.priority < MAX_FIFO_PRIORITY):
            raise ValueError(f"realtime.priority must be an integer in 1..{MAX_FIFO_PRIORITY - 1} (SCHED_FIFO) "
                             f"or null, got {self.priority!r}")
        if self.cpu is not None and (isinstance(self.cpu, bool) or not isinstance(self.cpu, int) or self.cpu < 0):
            raise ValueError(f"realtime.cpu must be a core index >= 0 or null, got {self.cpu!r}")
        if not isinstance(self.lock_memory, bool):
            raise ValueError(f"realtime.lock_memory must be true or false, got {self.lock_memory!r}")

    @property
    def enabled(self) -> bool:
        return self.priority is not None or self.cpu is not None or self.lock_memory


@dataclass
class RealtimeReport:
    """What ``configure_realtime`` applied and what the OS refused (one line each, with the fix)."""

    priority: int | None = None  # the SCHED_FIFO priority in effect, None if not applied
    cpu: int | None = None  # the core the thread is pinned to, None if not applied
    memory_locked: bool = False
    refused: list[str] = field(default_factory=list)
    previous_policy: int | None = None  # what to restore (scheduler policy, param, affinity)
    previous_priority: int = 0
    previous_cpus: set[int] | None = None

    @property
    def ok(self) -> bool:
        return not self.refused

    def summary(self) -> dict[str, object]:
        return {"realtime_priority": self.priority, "realtime_cpu": self.cpu,
                "realtime_memory_locked": self.memory_locked, "realtime_refused": list(self.refused)}


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _set_fifo(priority: int, report: RealtimeReport) -> None:
    if not hasattr(os, "sched_setscheduler"):
        report.refused.append(f"SCHED_FIFO priority {priority}: not supported on {sys.platform}")
        return
    try:
        report.previous_policy = os.sched_getscheduler(0)
        report.previous_priority = os.sched_getparam(0).sched_priority
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        report.priority = priority
    except OSError as e:  # PermissionError without CAP_SYS_NICE / rtprio, EPERM without RT budget
        report.previous_policy = None
        report.refused.append(f"SCHED_FIFO priority {priority}: {e.strerror or e} (needs root, CAP_SYS_NICE "
                              "or `ulimit -r` >= the priority; containers also need an RT runtime budget)")


def _pin(cpu: int, report: RealtimeReport) -> None:
    if not hasattr(os, "sched_setaffinity"):
        report.refused.append(f"pin to CPU {cpu}: not supported on {sys.platform}")
        return
    try:
        allowed = os.sched_getaffinity(0)
        if cpu not in allowed:
            report.refused.append(f"pin to CPU {cpu}: not among this process's CPUs {sorted(allowed)}")
            return
        os.sched_setaffinity(0, {cpu})
        report.previous_cpus, report.cpu = allowed, cpu
    except OSError as e:
        report.refused.append(f"pin to CPU {cpu}: {e.strerror or e}")


def _lock_memory(report: RealtimeReport) -> None:
    if not sys.platform.startswith("linux"):
        report.refused.append(f"mlockall: not supported on {sys.platform}")
        return
    try:
        libc = _libc()
        if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
            err = ctypes.get_errno()
            report.refused.append(f"mlockall: {os.strerror(err)} (needs root, CAP_IPC_LOCK or `ulimit -l "
                                  "unlimited`)")
            return
        report.memory_locked = True
    except (OSError, AttributeError) as e:
        report.refused.append(f"mlockall: {e}")


def configure_realtime(cfg: RealtimeConfig) -> RealtimeReport:
    """Apply ``cfg`` to the calling thread (scheduler, affinity) and process (memory); never raises for a
    missing privilege. Logs one line for what worked and one warning per refusal."""
    report = RealtimeReport()
    if not cfg.enabled:
        return report
    if cfg.lock_memory:
        _lock_memory(report)
    if cfg.cpu is not None:
        _pin(cfg.cpu, report)
    if cfg.priority is not None:
        _set_fifo(cfg.priority, report)
    applied = [s for s, on in ((f"SCHED_FIFO {report.priority}", report.priority is not None),
                               (f"pinned to CPU {report.cpu}", report.cpu is not None),
                               ("memory locked", report.memory_locked)) if on]
    if applied:
        log.info("real-time settings for the loop thread: %s", ", ".join(applied))
    for line in report.refused:
        log.warning("real-time setting refused, running without it: %s", line)
    return report


def restore_realtime(report: RealtimeReport) -> None:
    """Undo what ``configure_realtime`` applied (call in the same thread); failures are only logged."""
    try:
        if report.priority is not None and report.previous_policy is not None:
            os.sched_setscheduler(0, report.previous_policy, os.sched_param(report.previous_priority))
            report.priority = None
        if report.previous_cpus is not None:
            os.sched_setaffinity(0, report.previous_cpus)
            report.cpu = None
        if report.memory_locked:
            _libc().munlockall()
            report.memory_locked = False
    except OSError as e:
        log.warning("could not restore the scheduler settings: %s", e)


@contextlib.contextmanager
def realtime_loop(cfg: RealtimeConfig, other_pids: Iterable[int | None] = ()) -> Iterator[RealtimeReport]:
    """``cfg`` applied to the calling (loop) thread for the ``with`` block, then undone. With ``cfg.cpu`` set,
    the processes ``other_pids`` (the inference child) are moved off the loop's core. Enter it after every
    device and worker has started: threads and processes started later would inherit the settings."""
    report = configure_realtime(cfg)
    if report.cpu is not None:
        for pid in other_pids:
            if pid is None:
                continue
            try:
                others = os.sched_getaffinity(pid) - {report.cpu}
                if others:
                    os.sched_setaffinity(pid, others)
            except OSError as e:
                log.warning("could not move process %d off the loop's CPU %d: %s", pid, report.cpu, e)
    try:
        yield report
    finally:
        restore_realtime(report)
