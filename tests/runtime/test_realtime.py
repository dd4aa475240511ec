"""runtime.realtime: validated config; refused privileges are reported and logged, never raised."""

from __future__ import annotations

import logging
import os
import threading

import pytest

from runtime import realtime
from runtime.realtime import RealtimeConfig, RealtimeReport, configure_realtime, restore_realtime


@pytest.mark.parametrize("kwargs, field", [
    ({"priority": 0}, "priority"),
    ({"priority": 99}, "priority"),
    ({"priority": 50.5}, "priority"),
    ({"priority": True}, "priority"),
    ({"cpu": -1}, "cpu"),
    ({"cpu": "1"}, "cpu"),
    ({"lock_memory": 1}, "lock_memory"),
])
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"realtime.{field}"):
        RealtimeConfig(**kwargs)


def test_unknown_key_fails_through_from_dict():
    from policy.config_utils import from_dict

    with pytest.raises(ValueError, match="prio"):
        from_dict(RealtimeConfig, {"prio": 70}, "realtime")
    assert from_dict(RealtimeConfig, {"priority": 70, "cpu": 1}, "realtime") == RealtimeConfig(70, 1)


def test_default_config_touches_nothing(monkeypatch):
    def boom(*a):
        raise AssertionError("must not be called")

    monkeypatch.setattr(os, "sched_setscheduler", boom, raising=False)
    monkeypatch.setattr(os, "sched_setaffinity", boom, raising=False)
    report = configure_realtime(RealtimeConfig())
    assert isinstance(report, RealtimeReport) and report.ok and report.priority is None and report.cpu is None


def test_refused_privileges_are_reported_and_logged_never_raised(monkeypatch, caplog):
    def refuse(*a):
        raise PermissionError(1, "Operation not permitted")

    class Libc:
        def mlockall(self, flags):
            assert flags == realtime.MCL_CURRENT | realtime.MCL_FUTURE
            return -1

    monkeypatch.setattr(os, "sched_setscheduler", refuse, raising=False)
    monkeypatch.setattr(os, "sched_setaffinity", refuse, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(realtime, "_libc", Libc)
    monkeypatch.setattr(realtime.sys, "platform", "linux")
    with caplog.at_level(logging.WARNING, logger="runtime.realtime"):
        report = configure_realtime(RealtimeConfig(priority=70, cpu=1, lock_memory=True))
    assert not report.ok and len(report.refused) == 3
    assert report.priority is None and report.cpu is None and not report.memory_locked
    text = " ".join(report.refused)
    assert "SCHED_FIFO priority 70" in text and "ulimit -r" in text and "pin to CPU 1" in text and "mlockall" in text
    assert sum("refused, running without it" in r.message for r in caplog.records) == 3
    restore_realtime(report)  # nothing applied: nothing to undo, no error


def test_a_core_outside_the_allowed_set_is_refused_not_raised(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    report = configure_realtime(RealtimeConfig(cpu=5))
    assert report.cpu is None and "pin to CPU 5" in report.refused[0]


def test_missing_os_support_is_refused_not_raised(monkeypatch):
    monkeypatch.delattr(os, "sched_setscheduler", raising=False)
    monkeypatch.delattr(os, "sched_setaffinity", raising=False)
    monkeypatch.setattr(realtime.sys, "platform", "darwin")
    report = configure_realtime(RealtimeConfig(priority=10, cpu=0, lock_memory=True))
    assert len(report.refused) == 3 and all("not supported" in r for r in report.refused)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_settings_apply_to_the_calling_thread_only_and_are_restored():
    """Pinning (and SCHED_FIFO where permitted) changes the loop thread, not the others; restored after."""
    main_cpus = os.sched_getaffinity(0)
    # what the thread starts with: SCHED_OTHER, unless a library made the test process real-time (as root,
    # the AV1 encoding in tests/policy/test_convert_lerobot.py leaves the main thread SCHED_FIFO)
    main_policy = os.sched_getscheduler(0)
    cpu = min(main_cpus)
    seen: dict = {}

    def loop() -> None:
        report = configure_realtime(RealtimeConfig(priority=10, cpu=cpu))
        seen["cpus"] = os.sched_getaffinity(0)
        seen["policy"] = os.sched_getscheduler(0)
        seen["report"], seen["cpu"], seen["priority"] = report, report.cpu, report.priority
        restore_realtime(report)
        seen["restored_cpus"] = os.sched_getaffinity(0)
        seen["restored_policy"] = os.sched_getscheduler(0)

    t = threading.Thread(target=loop)
    t.start()
    t.join()
    report = seen["report"]
    assert seen["cpu"] == cpu and seen["cpus"] == {cpu}
    if seen["priority"] is not None:  # root or CAP_SYS_NICE: really SCHED_FIFO; otherwise reported as refused
        assert seen["policy"] == os.SCHED_FIFO
    else:
        assert any("SCHED_FIFO" in r for r in report.refused)
    assert report.cpu is None and report.priority is None  # undone
    assert seen["restored_cpus"] == main_cpus and seen["restored_policy"] == main_policy
    assert os.sched_getaffinity(0) == main_cpus and os.sched_getscheduler(0) == main_policy


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux CPU affinity and two cores")
def test_realtime_loop_moves_the_inference_process_off_the_loop_core_and_restores():
    import subprocess
    import sys

    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        result: dict = {}

        def loop_thread():
            with realtime.realtime_loop(RealtimeConfig(cpu=cpu), [child.pid, None]) as report:
                result["inside"] = os.sched_getaffinity(0)
                result["report_cpu"] = report.cpu
            result["after"] = os.sched_getaffinity(0)

        t = threading.Thread(target=loop_thread)
        t.start()
        t.join()
        if result["report_cpu"] is None:
            pytest.skip("pinning was refused here")
        assert result["inside"] == {cpu}
        assert cpu not in os.sched_getaffinity(child.pid)  # the inference process left the loop's core
        assert result["after"] == before
    finally:
        child.kill()
        child.wait()
