"""The receiver's fetch thread (sglang/fetch_worker.py) on the CPU: jobs finish in order,
errors become ``fetch_error``, and a slow fetch says where its time went."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest

from sglang_droidspeak.sglang import fetch_worker
from sglang_droidspeak.sglang.fetch_worker import FetchWorker


def job(rid):
    return SimpleNamespace(rid=rid, cancelled=False, receiver=object(), fetch_error=None, fetch_s=0.0,
                           fetched=threading.Event(), streams=SimpleNamespace(side=None, cuda=False))


class SlowFence:
    def __init__(self, s):
        self.s = s

    def synchronize(self):
        time.sleep(self.s)


@pytest.fixture
def worker():
    w = FetchWorker("test-fetch")
    yield w
    w.close()


def test_jobs_run_in_order_and_errors_are_kept(worker):
    done, jobs = [], [job("a"), job("b")]
    worker.submit(jobs[0], lambda request, receiver: done.append(request), "req-a")

    def fail(request, receiver):
        raise RuntimeError("peer gone")

    worker.submit(jobs[1], fail, "req-b")
    assert all(j.fetched.wait(5) for j in jobs)
    assert done == ["req-a"] and jobs[0].fetch_error is None
    assert repr(jobs[1].fetch_error) == "RuntimeError('peer gone')"


def test_a_slow_fetch_is_split_into_fence_plane_and_copies(worker, monkeypatch, caplog):
    monkeypatch.setattr(fetch_worker, "SLOW_FETCH_S", 0.1)
    caplog.set_level(logging.WARNING, logger=fetch_worker.__name__)
    fast, slow = job("fast"), job("slow")
    worker.submit(fast, lambda request, receiver: None, None)
    worker.submit(slow, lambda request, receiver: time.sleep(0.15), None, SlowFence(0.05))
    assert fast.fetched.wait(5) and slow.fetched.wait(5)
    lines = [r.getMessage() for r in caplog.records if "fetch took" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("droidspeak: import slow fetch took ")
    parts = dict(p.strip().rsplit(" ", 1) for p in lines[0].split(": ", 2)[2].split(","))
    assert 40 <= float(parts["fence"]) < 140 and 140 <= float(parts["plane"]) < 400
    assert float(parts["copies synced"]) < 50


def test_yield_gil_sleeps_only_while_the_worker_has_work(monkeypatch):
    """The scheduler thread hands the fetch thread the GIL once per tick, but only while a
    fetch is queued or running (an idle server's loop is never slowed)."""
    import threading as _threading

    from sglang_droidspeak.sglang import fetch_worker as fw

    slept = []
    monkeypatch.setattr(fw.time, "sleep", lambda s: slept.append(s))
    worker = fw.FetchWorker()
    try:
        worker.yield_gil()
        assert slept == [] and not worker.in_flight
        release = _threading.Event()
        worker.call(release.wait)  # occupies the worker until released
        assert worker.in_flight
        worker.yield_gil()
        assert slept == [fw.GIL_HANDOFF_S]
        release.set()
        worker._jobs.join()
        assert not worker.in_flight
        worker.yield_gil()
        assert slept == [fw.GIL_HANDOFF_S]
        worker.close()
        assert not worker.in_flight  # a closed worker never makes the scheduler sleep
    finally:
        worker.close()
