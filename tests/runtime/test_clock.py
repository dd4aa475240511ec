"""Clocks and tick pacing: absolute deadlines, no bursts after a stall."""

from __future__ import annotations

from runtime.clock import SimClock, WallClock, wait_for_tick


def test_sim_clock_jumps_to_deadlines_and_never_goes_back():
    c = SimClock(1.0)
    c.sleep_until(1.5)
    assert c.now() == 1.5
    c.sleep_until(1.2)
    assert c.now() == 1.5
    c.advance(0.25)
    assert c.now() == 1.75


def test_wait_for_tick_sleeps_to_the_absolute_deadline():
    c = SimClock()
    c.advance(0.03)  # the tick's work took 30 ms
    assert wait_for_tick(c, 0.0, 0.1, 1) == (1, 0)
    assert c.now() == 0.1  # not 0.13: deadlines do not drift with the work


def test_wait_for_tick_skips_missed_ticks_instead_of_bursting():
    c = SimClock()
    c.advance(0.35)  # a stall: ticks 1, 2 and 3 are already past
    tick, skipped = wait_for_tick(c, 0.0, 0.1, 1)
    assert (tick, skipped) == (3, 2) and c.now() == 0.35  # run tick 3 now (its deadline passed 50 ms ago)


def test_wall_clock_does_not_return_early():
    c = WallClock()
    deadline = c.now() + 0.02
    c.sleep_until(deadline)
    assert c.now() >= deadline
