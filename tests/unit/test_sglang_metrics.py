"""DroidSpeak Prometheus metrics: exact sample values on a fresh registry, validation,
shared metric objects, the no-op twin, and SGLang's multiprocess mode."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from prometheus_client import CollectorRegistry

from sglang_droidspeak.sglang.metrics import DroidSpeakMetrics, NullMetrics, make_metrics


def _value(registry: CollectorRegistry, name: str, **labels: str):
    return registry.get_sample_value(f"sglang:droidspeak_{name}", labels)


def test_exact_sample_values():
    registry = CollectorRegistry()
    metrics = DroidSpeakMetrics("coder-b", registry)
    assert _value(registry, "foreign_hits_total", model="coder-b", origin="derived") == 0.0
    metrics.record_hit("remote", 120, 3)
    metrics.record_hit("remote", 8, 0)
    metrics.record_hit("derived", 50, 5)
    metrics.record_bytes("in", 4096)
    metrics.record_bytes("out", 10)
    metrics.record_bytes("in", 4)
    metrics.record_fallback("timeout")
    metrics.record_fallback("timeout")
    metrics.record_fallback("evicted")
    metrics.record_export()
    metrics.observe_fetch_seconds(0.02)
    metrics.observe_fetch_seconds(3)
    m = {"model": "coder-b"}
    assert _value(registry, "foreign_hits_total", origin="remote", **m) == 2.0
    assert _value(registry, "foreign_hits_total", origin="derived", **m) == 1.0
    assert _value(registry, "tokens_reused_total", **m) == 178.0
    assert _value(registry, "layers_recomputed_total", **m) == 8.0
    assert _value(registry, "bytes_moved_total", direction="in", **m) == 4100.0
    assert _value(registry, "bytes_moved_total", direction="out", **m) == 10.0
    assert _value(registry, "fallbacks_total", reason="timeout", **m) == 2.0
    assert _value(registry, "fallbacks_total", reason="evicted", **m) == 1.0
    assert _value(registry, "exports_total", **m) == 1.0
    assert _value(registry, "fetch_seconds_count", **m) == 2.0
    assert _value(registry, "fetch_seconds_sum", **m) == 3.02
    assert _value(registry, "fetch_seconds_bucket", le="0.025", **m) == 1.0
    assert _value(registry, "fetch_seconds_bucket", le="2.5", **m) == 1.0
    assert _value(registry, "fetch_seconds_bucket", le="+Inf", **m) == 2.0
    assert _value(registry, "foreign_hits", origin="remote", **m) is None  # only *_total


@pytest.mark.parametrize("call, match", [
    (lambda m: m.record_hit("local", 1, 0), "origin must be one of .* got 'local'"),
    (lambda m: m.record_hit("remote", -1, 0), "num_tokens must be a non-negative int, got -1"),
    (lambda m: m.record_hit("remote", 1, 2.0), "num_recomputed_layers must be .* got 2.0"),
    (lambda m: m.record_bytes("up", 1), "direction must be one of .* got 'up'"),
    (lambda m: m.record_bytes("in", True), "num_bytes must be a non-negative int, got True"),
    (lambda m: m.record_fallback(""), "reason must be a non-empty str"),
    (lambda m: m.observe_fetch_seconds(float("nan")), "s must be a finite number"),
    (lambda m: m.observe_fetch_seconds(-0.1), "s must be a finite number >= 0, got -0.1"),
])
def test_bad_values_raise_and_record_nothing(call, match):
    registry = CollectorRegistry()
    metrics = DroidSpeakMetrics("m", registry)
    with pytest.raises(ValueError, match=match):
        call(metrics)
    assert _value(registry, "foreign_hits_total", model="m", origin="remote") == 0.0
    assert _value(registry, "tokens_reused_total", model="m") == 0.0
    assert _value(registry, "bytes_moved_total", model="m", direction="in") == 0.0
    assert _value(registry, "fetch_seconds_count", model="m") == 0.0
    with pytest.raises(ValueError, match="model must be a non-empty str"):
        DroidSpeakMetrics("", registry)


def test_two_instances_on_one_registry_share_metrics():
    registry = CollectorRegistry()
    first, again, other = (DroidSpeakMetrics(name, registry) for name in ("a", "a", "b"))
    first.record_export()
    again.record_export()
    other.record_hit("derived", 7, 1)
    assert _value(registry, "exports_total", model="a") == 2.0
    assert _value(registry, "exports_total", model="b") == 0.0
    assert _value(registry, "tokens_reused_total", model="b") == 7.0
    assert _value(registry, "tokens_reused_total", model="a") == 0.0
    separate = CollectorRegistry()
    DroidSpeakMetrics("a", separate).record_export()  # another registry: its own metrics
    assert _value(separate, "exports_total", model="a") == 1.0
    assert _value(registry, "exports_total", model="a") == 2.0


def test_null_metrics_accepts_everything_and_make_metrics():
    null = NullMetrics("m")
    null.record_hit("anything", -1, None)
    null.record_bytes(object(), "x")
    null.record_fallback(None)
    null.record_export()
    null.observe_fetch_seconds(float("nan"))
    assert type(make_metrics("m", enabled=False)) is NullMetrics
    enabled = make_metrics("test-make-metrics", enabled=True)  # default REGISTRY
    assert type(enabled) is DroidSpeakMetrics and enabled.model == "test-make-metrics"
    assert make_metrics("test-make-metrics", enabled=True).model == "test-make-metrics"


MULTIPROC_SCRIPT = """
import json, sys
import sglang_droidspeak.sglang.metrics as mod
lazy = "prometheus_client" not in sys.modules and "sglang" not in sys.modules
metrics = mod.make_metrics("coder-b", enabled=True)
metrics.record_hit("remote", 9, 2)
metrics.observe_fetch_seconds(0.5)
from prometheus_client import CollectorRegistry, multiprocess
registry = CollectorRegistry()
multiprocess.MultiProcessCollector(registry)
get = lambda name, **labels: registry.get_sample_value(name, {"model": "coder-b", **labels})
print(json.dumps([lazy, get("sglang:droidspeak_foreign_hits_total", origin="remote"),
                  get("sglang:droidspeak_tokens_reused_total"),
                  get("sglang:droidspeak_fetch_seconds_count"), get("sglang:droidspeak_fetch_seconds_sum")]))
"""


def test_multiprocess_mode_like_sglang(tmp_path):
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", MULTIPROC_SCRIPT], env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    assert json.loads(out.stdout) == [True, 1.0, 9.0, 1.0, 0.5]
    assert sorted(p.name.rsplit("_", 1)[0] for p in tmp_path.iterdir()) == [
        "counter", "histogram"]


def test_policy_decisions_are_counted_by_reason():
    registry = CollectorRegistry()
    metrics = DroidSpeakMetrics("coder-b", registry)
    metrics.record_decision("idle: most layers within SLO")
    metrics.record_decision("idle: most layers within SLO")
    metrics.record_decision("full prefill faster")
    value = lambda reason: _value(registry, "policy_decisions_total", model="coder-b", reason=reason)  # noqa: E731
    assert (value("idle: most layers within SLO"), value("full prefill faster")) == (2.0, 1.0)
    with pytest.raises(ValueError, match="reason must be a non-empty str"):
        metrics.record_decision("")
    NullMetrics().record_decision(None)
