"""The profiler's resumable JSONL store."""

import json

import pytest

from sglang_droidspeak.profiler.store import RECORD_FORMAT, Record, ResultStore


def test_resume_and_torn_tail(tmp_path):
    path = tmp_path / "run.jsonl"
    store = ResultStore(path, {"seed": 0})
    store.add(Record("receiver", 0, {"edit_sim": 0.5}, "x = 1"))
    store.add(Record("receiver", 1, {"edit_sim": 1.0}, "y"))
    with path.open("a") as f:
        f.write('{"system": "receiver", "exam')  # killed mid-write
    again = ResultStore(path, {"seed": 0})
    assert len(again) == 2 and ("receiver", 1) in again and again.mean("receiver", "edit_sim") == 0.75
    again.add(Record("sender", 0, {"edit_sim": 0.0}, ""))
    assert len(ResultStore(path, {"seed": 0})) == 3


def test_other_run_is_moved_aside(tmp_path):
    path = tmp_path / "run.jsonl"
    ResultStore(path, {"seed": 0}).add(Record("receiver", 0, {"m": 1.0}, "a"))
    fresh = ResultStore(path, {"seed": 1})
    assert len(fresh) == 0
    stale = tmp_path / "run.stale.jsonl"
    assert json.loads(stale.read_text().splitlines()[0]) == {"run": {"seed": 0}, "format": RECORD_FORMAT}
    with pytest.raises(KeyError, match="receiver"):
        fresh.mean("receiver", "m")
