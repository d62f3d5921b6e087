"""Prometheus metrics of the DroidSpeak plugin, exported through SGLang's /metrics.

Runs in SGLang's scheduler process. SGLang sets PROMETHEUS_MULTIPROC_DIR before the
scheduler starts and its /metrics endpoint aggregates every process's files, so metrics
registered here on prometheus_client's default REGISTRY show up there. prometheus_client
is imported lazily (in ``DroidSpeakMetrics.__init__``) so that it is first imported after
that variable is set; this module imports no SGLang.

    metric (sample names)                               type       labels
    sglang:droidspeak_foreign_hits_total                counter    model, origin
    sglang:droidspeak_tokens_reused_total               counter    model
    sglang:droidspeak_layers_recomputed_total           counter    model
    sglang:droidspeak_bytes_moved_total                 counter    model, direction
    sglang:droidspeak_fallbacks_total                   counter    model, reason
    sglang:droidspeak_policy_decisions_total            counter    model, reason
    sglang:droidspeak_policy_systems_total              counter    model, system
    sglang:droidspeak_exports_total                     counter    model
    sglang:droidspeak_fetch_seconds_{bucket,sum,count}  histogram  model
    sglang:droidspeak_import_stage_seconds_{...}        histogram  model, stage
    sglang:droidspeak_guard_checks_total                counter    model, sender, outcome
    sglang:droidspeak_guard_trips_total                 counter    model, sender
    sglang:droidspeak_guard_agreement_{bucket,sum,count}  histogram  model, sender

``stage`` is one of IMPORT_STAGES (importer's ImportTimings: fetch = request -> FetchDone,
recompute = the groups' GPU time, drain = FetchDone -> GPU idle, total); the _sum
differences around one request give its split (bench-prefill reads them). ``system`` is
the system an online-policy decision serves (CHOSEN_SYSTEMS: droidspeak, cacheblend,
full_prefill); every value's series exists from the start.

The guard series (quality_guard.py): ``outcome`` is one of GUARD_OUTCOMES (checked = scored,
dropped = the guard's queue was full, failed = the shadow request or its answer failed);
``guard_agreement`` observes each scored check's teacher-forced agreement; a trip switches
the pair (``sender`` -> ``model``) to normal prefill. ``sender`` takes the configured peers'
model names only.
"""

from __future__ import annotations

import math
import numbers
import threading
import weakref
from typing import Any, Optional, Union

ORIGINS = ("remote", "derived")
DIRECTIONS = ("in", "out")
IMPORT_STAGES = ("fetch", "recompute", "drain", "total")
CHOSEN_SYSTEMS = ("droidspeak", "cacheblend", "full_prefill")  # plan.system_points' servable systems
GUARD_OUTCOMES = ("checked", "dropped", "failed")
AGREEMENT_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 1.0)
FETCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# registry -> {short name: metric}; prometheus refuses a second metric of the same name.
_CACHE: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()
_CACHE_LOCK = threading.Lock()


def _create_metrics(registry: Any) -> dict[str, Any]:
    from prometheus_client import Counter, Histogram

    def counter(name: str, doc: str, *labels: str) -> Any:
        return Counter(f"sglang:droidspeak_{name}", doc, ("model",) + labels, registry=registry)

    return {
        "hits": counter("foreign_hits", "Prefix hits on foreign (other-model) KV.", "origin"),
        "tokens": counter("tokens_reused", "Prompt tokens served from foreign KV."),
        "layers": counter("layers_recomputed", "Layers recomputed, summed over hits."),
        "bytes": counter("bytes_moved", "KV/E bytes transferred.", "direction"),
        "fallbacks": counter("fallbacks", "Foreign hits abandoned for full prefill.", "reason"),
        "decisions": counter("policy_decisions", "Online-policy decisions by reason.", "reason"),
        "systems": counter("policy_systems", "Online-policy decisions by the system they serve.", "system"),
        "exports": counter("exports", "Prefixes exported to a peer."),
        "drops": counter("dropped_messages", "Wire messages refused (bad signature, replay, stale, ...).",
                         "reason"),
        "fetch": Histogram("sglang:droidspeak_fetch_seconds", "Remote fetch latency.",
                           ("model",), registry=registry, buckets=FETCH_BUCKETS),
        "stage": Histogram("sglang:droidspeak_import_stage_seconds", "Import time by stage.",
                           ("model", "stage"), registry=registry, buckets=FETCH_BUCKETS),
        "guard_checks": counter("guard_checks", "Quality-guard shadow checks by outcome.", "sender", "outcome"),
        "guard_trips": counter("guard_trips", "Pairs switched to normal prefill by the quality guard.", "sender"),
        "guard_agreement": Histogram("sglang:droidspeak_guard_agreement", "Live teacher-forced agreement per check.",
                                     ("model", "sender"), registry=registry, buckets=AGREEMENT_BUCKETS),
    }


def _metrics_for(registry: Any) -> dict[str, Any]:
    with _CACHE_LOCK:
        if registry not in _CACHE:
            _CACHE[registry] = _create_metrics(registry)
        return _CACHE[registry]


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")


def _check_name(name: str, value: object) -> None:
    if type(value) is not str or not value:
        raise ValueError(f"{name} must be a non-empty str, got {value!r}")


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


class DroidSpeakMetrics:
    """Counters and histogram of one model's plugin (label ``model``).

    ``registry`` None means prometheus_client's default REGISTRY. Instances on the same
    registry share the metric objects (so two never collide); each writes its own
    ``model`` label. Every method validates its arguments and raises ValueError naming
    the bad one; ``reason`` values should come from a small fixed set (one series each).
    """

    def __init__(self, model: str, registry: Optional[Any] = None) -> None:
        if type(model) is not str or not model:
            raise ValueError(f"model must be a non-empty str, got {model!r}")
        if registry is None:
            from prometheus_client import REGISTRY
            registry = REGISTRY
        self.model = model
        self._m = _metrics_for(registry)
        for origin in ORIGINS:  # expose zero-valued series from the start
            self._m["hits"].labels(model, origin)
        for direction in DIRECTIONS:
            self._m["bytes"].labels(model, direction)
        for key in ("tokens", "layers", "exports", "fetch"):
            self._m[key].labels(model)
        for stage in IMPORT_STAGES:
            self._m["stage"].labels(model, stage)
        for system in CHOSEN_SYSTEMS:
            self._m["systems"].labels(model, system)

    def record_hit(self, origin: str, num_tokens: int, num_recomputed_layers: int) -> None:
        """One foreign hit: ``origin`` "remote" (fetched) or "derived" (local derived KV)."""
        _check_choice("origin", origin, ORIGINS)
        _check_count("num_tokens", num_tokens)
        _check_count("num_recomputed_layers", num_recomputed_layers)
        self._m["hits"].labels(self.model, origin).inc()
        self._m["tokens"].labels(self.model).inc(num_tokens)
        self._m["layers"].labels(self.model).inc(num_recomputed_layers)

    def record_bytes(self, direction: str, num_bytes: int) -> None:
        _check_choice("direction", direction, DIRECTIONS)
        _check_count("num_bytes", num_bytes)
        self._m["bytes"].labels(self.model, direction).inc(num_bytes)

    def record_fallback(self, reason: str) -> None:
        if type(reason) is not str or not reason:
            raise ValueError(f"reason must be a non-empty str, got {reason!r}")
        self._m["fallbacks"].labels(self.model, reason).inc()

    def record_decision(self, reason: str) -> None:
        if type(reason) is not str or not reason:
            raise ValueError(f"reason must be a non-empty str, got {reason!r}")
        self._m["decisions"].labels(self.model, reason).inc()

    def record_system(self, system: str) -> None:
        """The system one online-policy decision serves (one of CHOSEN_SYSTEMS)."""
        _check_choice("system", system, CHOSEN_SYSTEMS)
        self._m["systems"].labels(self.model, system).inc()

    def record_export(self) -> None:
        self._m["exports"].labels(self.model).inc()

    def record_drop(self, reason: str) -> None:
        """A wire message refused before it was used (transfer/drops.py reasons)."""
        if type(reason) is not str or not reason:
            raise ValueError(f"reason must be a non-empty str, got {reason!r}")
        self._m["drops"].labels(self.model, reason).inc()

    def observe_fetch_seconds(self, s: float) -> None:
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s) or s < 0:
            raise ValueError(f"s must be a finite number >= 0, got {s!r}")
        self._m["fetch"].labels(self.model).observe(s)

    def observe_import_stage(self, stage: str, s: float) -> None:
        _check_choice("stage", stage, IMPORT_STAGES)
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(s) or s < 0:
            raise ValueError(f"s must be a finite number >= 0, got {s!r}")
        self._m["stage"].labels(self.model, stage).observe(s)

    def record_guard_check(self, sender: str, outcome: str) -> None:
        _check_name("sender", sender)
        _check_choice("outcome", outcome, GUARD_OUTCOMES)
        self._m["guard_checks"].labels(self.model, sender, outcome).inc()

    def record_guard_trip(self, sender: str) -> None:
        _check_name("sender", sender)
        self._m["guard_trips"].labels(self.model, sender).inc()

    def observe_guard_agreement(self, sender: str, agreement: float) -> None:
        _check_name("sender", sender)
        if (isinstance(agreement, bool) or not isinstance(agreement, numbers.Real) or not math.isfinite(agreement)
                or not 0 <= agreement <= 1):
            raise ValueError(f"agreement must be a number in [0, 1], got {agreement!r}")
        self._m["guard_agreement"].labels(self.model, sender).observe(agreement)


class NullMetrics:
    """The same methods as DroidSpeakMetrics; each accepts anything and does nothing."""

    def __init__(self, model: str = "", registry: Optional[Any] = None) -> None:
        self.model = model

    def record_hit(self, origin: Any, num_tokens: Any, num_recomputed_layers: Any) -> None:
        pass

    def record_bytes(self, direction: Any, num_bytes: Any) -> None:
        pass

    def record_fallback(self, reason: Any) -> None:
        pass

    def record_decision(self, reason: Any) -> None:
        pass

    def record_system(self, system: Any) -> None:
        pass

    def record_export(self) -> None:
        pass

    def record_drop(self, reason: Any) -> None:
        pass

    def observe_fetch_seconds(self, s: Any) -> None:
        pass

    def observe_import_stage(self, stage: Any, s: Any) -> None:
        pass

    def record_guard_check(self, sender: Any, outcome: Any) -> None:
        pass

    def record_guard_trip(self, sender: Any) -> None:
        pass

    def observe_guard_agreement(self, sender: Any, agreement: Any) -> None:
        pass


def make_metrics(model: str, enabled: bool) -> Union[DroidSpeakMetrics, NullMetrics]:
    """DroidSpeakMetrics on the default registry when ``enabled``, else NullMetrics."""
    return DroidSpeakMetrics(model) if enabled else NullMetrics(model)
