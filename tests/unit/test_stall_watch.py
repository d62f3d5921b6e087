"""stall_watch.py: a long fetch logs every thread's stack once; a sender's tick gap is logged,
each at most once per quiet period."""

from __future__ import annotations

import logging
import threading

from sglang_droidspeak.sglang import stall_watch
from sglang_droidspeak.sglang.stall_watch import StackWatch, TickGapWatch, thread_stacks


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_thread_stacks_name_every_thread_and_show_where_it_waits():
    gate, started = threading.Event(), threading.Event()

    def parked_here():
        started.set()
        gate.wait(5)

    t = threading.Thread(target=parked_here, name="parked-worker")
    t.start()
    started.wait(5)
    try:
        text = thread_stacks()
        assert "--- thread parked-worker" in text and "in parked_here" in text
        assert "--- thread MainThread" in text
    finally:
        gate.set()
        t.join()


def test_a_fetch_still_running_logs_stacks_once_per_quiet_period(caplog):
    caplog.set_level(logging.WARNING, logger=stall_watch.__name__)
    clock = Clock()
    watch = StackWatch(after_s=0.05, quiet_s=60.0, clock=clock)
    for label in ("fetch a", "fetch b"):  # b fires within a's quiet period: not logged
        timer = watch.start(label)
        timer.join(5)
    fast = watch.start("fetch c")
    StackWatch.stop(fast)  # ended before after_s: never logs
    fast.join(5)
    clock.now += 61
    watch.start("fetch d").join(5)
    logged = [r.getMessage().split(" still running")[0] for r in caplog.records]
    assert logged == ["droidspeak: fetch a", "droidspeak: fetch d"]
    assert "thread stacks:\n--- thread" in caplog.records[0].getMessage()


def test_tick_gaps_are_logged_above_the_threshold_and_rate_limited(caplog):
    caplog.set_level(logging.WARNING, logger=stall_watch.__name__)
    clock = Clock()
    watch = TickGapWatch(gap_s=1.0, quiet_s=30.0, clock=clock)
    gaps = []
    for step in (0.0, 0.5, 1.5, 2.0, 0.1, 29.0, 3.0):
        clock.now += step
        gaps.append(watch.tick())
    assert gaps == [None, None, 1.5, None, None, 29.0, None]  # 2.0 and 3.0 fall in a quiet period
    assert [r.getMessage().split(" between")[0] for r in caplog.records] == ["droidspeak: 1500 ms",
                                                                              "droidspeak: 29000 ms"]


def test_the_gil_probe_reports_a_late_wake_with_the_main_threads_stack(monkeypatch, caplog):
    from sglang_droidspeak.sglang import stall_watch

    clock = iter([0.0, 0.003, 1.0, 1.102]).__next__  # a 2 ms sleep waking 1 ms late, then 100 ms late
    monkeypatch.setattr(stall_watch.time, "sleep", lambda s: None)
    probe = stall_watch.GilLagProbe(lag_s=0.05, clock=clock)
    with caplog.at_level("WARNING"):
        assert abs(probe.check(0.002) - 0.001) < 1e-9
        assert caplog.records == []
        assert abs(probe.check(0.002) - 0.1) < 1e-9
    assert "woke 100.0 ms late" in caplog.text and "main thread" in caplog.text and "test_stall_watch" in caplog.text
    assert abs(probe.max_lag_s - 0.1) < 1e-9
