"""The SGLang functions the plugin hooks or drives are the ones reviewed for 0.5.17
(sglang_droidspeak/sglang/hook_targets.py; patches/README.md says why there is no patch)."""

from __future__ import annotations

from cpu_sglang import require_cpu_sglang

require_cpu_sglang("sglang.srt.managers.scheduler")

from sglang_droidspeak.sglang import hook_targets  # noqa: E402
from sglang_droidspeak.sglang.plugin import HOOK_TARGETS  # noqa: E402


def test_every_reviewed_target_is_unchanged_in_the_installed_sglang():
    states = hook_targets.check()
    assert [s for s in states if s.state != "ok"] == []
    assert len(states) == 14


def test_every_hooked_method_is_pinned():
    pinned = {t.replace(":", ".") for t in hook_targets.REVIEWED}
    assert set(HOOK_TARGETS) <= pinned


def test_a_changed_or_missing_target_is_reported(monkeypatch):
    target = "sglang.srt.managers.scheduler:Scheduler.is_fully_idle"
    monkeypatch.setitem(hook_targets.REVIEWED, target, "0" * 16)
    monkeypatch.setitem(hook_targets.REVIEWED, "sglang.srt.managers.scheduler:Scheduler.no_such_method", "1" * 16)
    states = {s.target: s.state for s in hook_targets.check()}
    assert states[target] == "changed"
    assert states["sglang.srt.managers.scheduler:Scheduler.no_such_method"] == "missing"
