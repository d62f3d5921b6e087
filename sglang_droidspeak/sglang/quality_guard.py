"""The live quality guard (issue 16): shadow-check reused requests, switch off a pair that lies.

A fraction (``guard_fraction``) of the greedy requests this receiver served over foreign KV
(a DERIVED namespace: an import, or derived KV adopted from the tree) is checked again in the
background: one request to this server's own ``/generate`` with the reused request's prompt +
output as ``input_ids``, ``droidspeak_plan: "off"`` (normal prefill: no cross-model reuse),
``max_new_tokens: 1``, and the full-prefill model's top-1 token at every output position
(``return_logprob``, ``logprob_start_len = prompt_len - 1``, ``top_logprobs_num: 1``). The
share of reused output tokens equal to that top-1 is the request's teacher-forced agreement,
the quantity the offline profiles call ``agreement`` (profiler/batched_study.py).

    step        thread       what
    on_finished scheduler    cheap checks, a random draw, a copy of the ids into a bounded
                             queue (full: dropped and counted; never blocks)
    check       guard        one HTTP request (low priority where the server has priority
                             scheduling), the agreement, the pair's window
    trip        guard        mean agreement over the last ``guard_window`` checks (at least
                             ``guard_min_checks``) < mean bound - ``guard_margin``: a warning,
                             ``guard_trips_total``, and the pair is blocked until restart:
                             no REMOTE hit and no DERIVED adoption from that sender
                             (radix_lookup.py), and PlanChooser answers "quality guard"

Only plain greedy requests are checked (top_k 1 after SGLang's temperature-0 normalisation,
no penalties, logit bias, grammar, min_new_tokens, custom logit processor, LoRA, multimodal
input or session), with at least ``guard_min_output_tokens`` output tokens, not aborted, and
not on a plan the request forced (``custom_params.droidspeak_plan``): a forced plan is the
client's choice, not the profile's promise.

The bound of one check: the agreement the pair's profile promises for the plan used, i.e. the
``quality`` of the profile's point with that plan (its DroidSpeak frontier or its CacheBlend
``systems`` points) when the profile's metric is ``agreement``; otherwise (another metric, no
profile, an inline or forced plan the profile did not measure) ``1 - max_quality_drop``: the settings' promise read as agreement. Each check keeps its
own bound, so a window that mixes plans compares with the mean of their bounds.

The shadow request itself (body, agreement, endpoint, which requests qualify) is
guard_shadow.py. Imports no SGLang (the caller passes SGLang's ``Req`` and ``server_args``).
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import random
import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

from sglang_droidspeak.sglang.guard_shadow import (  # noqa: F401 (re-exported: tests, callers)
    PLAN_FORCED_ATTR, RID_PREFIX, ShadowCheck, ShadowEndpoint, ShadowError, guardable, shadow_body,
    teacher_forced_agreement,
)
from sglang_droidspeak.radix.namespace import decode_namespace, is_tagged_namespace
from sglang_droidspeak.radix.tags import KVOrigin

logger = logging.getLogger(__name__)
GUARD_REASON = "quality guard"  # PlanChooser's reason for a blocked pair
GUARD_FALLBACK = "quality_guard"  # the fallback reason (/metrics, meta_info) of a request the guard turns away
QUEUE_SIZE = 16  # shadow checks waiting for the guard thread; more are dropped and counted
OUTCOMES = ("checked", "dropped", "failed")  # guard_checks_total{outcome}


@dataclass(frozen=True)
class Trip:
    sender: str
    live: float  # mean agreement of the window
    bound: float  # mean bound of the window
    checks: int


class PairWindow:
    """The last ``size`` checks of one pair: (agreement, bound)."""

    def __init__(self, size: int):
        self.checks: collections.deque = collections.deque(maxlen=size)

    def add(self, agreement: float, bound: float) -> None:
        self.checks.append((agreement, bound))

    @property
    def live(self) -> float:
        return sum(a for a, _ in self.checks) / len(self.checks)

    @property
    def bound(self) -> float:
        return sum(b for _, b in self.checks) / len(self.checks)

    def trips(self, min_checks: int, margin: float) -> bool:
        """At least ``min_checks`` checks and live < bound - margin (1e-9 slack for sums)."""
        return len(self.checks) >= min_checks and self.live < self.bound - margin - 1e-9


# ---- the guard ----

BoundOf = Callable[[str, str], float]  # (sender, plan string) -> promised agreement


class QualityGuard:
    """Per-receiver guard: ``on_finished`` on the scheduler thread, checks on a thread of its own."""

    def __init__(self, settings: Any, model: str, metrics: Any, endpoint: ShadowEndpoint, bound_of: BoundOf,
                 rng: Optional[random.Random] = None, start: bool = True):
        self.settings, self.model, self.metrics, self.endpoint = settings, model, metrics, endpoint
        self.bound_of, self.rng = bound_of, rng or random.Random()
        self.windows: dict[str, PairWindow] = {}
        self.tripped: dict[str, Trip] = {}  # sender -> its trip; written by the guard thread only
        self.queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self._stop = threading.Event()
        self._failures = 0
        self.thread = threading.Thread(target=self._run, name="droidspeak-guard", daemon=True)
        if start:
            self.thread.start()

    # ---- scheduler thread ----

    def blocks(self, sender: str) -> bool:
        return sender in self.tripped

    def on_finished(self, req: Any) -> Optional[ShadowCheck]:
        """A finished request: maybe queue its shadow check (never raises, never blocks)."""
        try:
            return self._consider(req)
        except Exception:  # noqa: BLE001 - the guard must never break the scheduler
            logger.exception("droidspeak: quality guard: examining a finished request failed")
            return None

    def _consider(self, req: Any) -> Optional[ShadowCheck]:
        extra_key = getattr(req, "extra_key", None)
        if not is_tagged_namespace(extra_key):  # native: nothing was reused
            return None
        base, tag = decode_namespace(extra_key, self.model)
        if tag.origin is not KVOrigin.DERIVED or base is not None or tag.origin_sender in self.tripped:
            return None  # a base key (LoRA id, cache salt) cannot be reproduced over HTTP here
        if not guardable(req, self.settings.guard_min_output_tokens):
            return None
        if self.rng.random() >= self.settings.guard_fraction:
            return None
        check = ShadowCheck(str(getattr(req, "rid", "?")), tag.origin_sender, tag.plan,
                            self.bound_of(tag.origin_sender, tag.plan), tuple(req.origin_input_ids),
                            tuple(req.output_ids))
        try:
            self.queue.put_nowait(check)
        except queue.Full:
            self.metrics.record_guard_check(check.sender, "dropped")
            return None
        return check

    # ---- guard thread ----

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                check = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self.run_check(check)
            except Exception:  # noqa: BLE001 - keep the thread alive
                logger.exception("droidspeak: quality guard: a check failed")
            finally:
                self.queue.task_done()

    def run_check(self, check: ShadowCheck) -> Optional[float]:
        """Send ``check``'s shadow request, score it, update the pair (None: the check failed)."""
        if check.sender in self.tripped:
            return None
        try:
            answer = self.endpoint.post(shadow_body(check, self.endpoint.priority), self.settings.guard_timeout_s)
            agreement = teacher_forced_agreement(check.output_ids, answer)
        except Exception as exc:  # noqa: BLE001 - HTTP errors, timeouts, bad answers: count, never trip
            self._failures += 1
            self.metrics.record_guard_check(check.sender, "failed")
            log = logger.warning if self._failures == 1 or self._failures % 100 == 0 else logger.debug
            log("droidspeak: quality guard: shadow check of rid=%s failed (%d so far): %s", check.rid,
                self._failures, exc)
            return None
        self.record(check.sender, agreement, check.bound)
        return agreement

    def record(self, sender: str, agreement: float, bound: float) -> Optional[Trip]:
        """One scored check of (sender -> us); the trip if this check tripped the pair."""
        self.metrics.record_guard_check(sender, "checked")
        self.metrics.observe_guard_agreement(sender, agreement)
        window = self.windows.setdefault(sender, PairWindow(self.settings.guard_window))
        window.add(agreement, bound)
        if sender in self.tripped or not window.trips(self.settings.guard_min_checks, self.settings.guard_margin):
            return None
        trip = Trip(sender, window.live, window.bound, len(window.checks))
        self.tripped[sender] = trip
        self.metrics.record_guard_trip(sender)
        logger.warning("droidspeak: quality guard tripped for %s -> %s: live agreement %.3f over the last %d "
                       "checks, below the profile's bound %.3f - margin %.3f; reuse from %s is off (normal "
                       "prefill) until restart", sender, self.model, trip.live, trip.checks, trip.bound,
                       self.settings.guard_margin, sender)
        return trip

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every queued check has run (tests)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self.queue.join(), done.set()), daemon=True).start()
        if not done.wait(timeout):
            raise TimeoutError("quality guard: queued checks did not finish")

    def close(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=2.0)


# ---- building ----

def profile_bound(settings: Any, model: str) -> BoundOf:
    """``(sender, plan) -> bound`` (module docstring), cached per (sender, plan)."""
    profiles = settings.profile_lookup() if settings.profiles_dir else (lambda sender, receiver: None)
    default = 1.0 - settings.max_quality_drop
    cache: dict[tuple[str, str], float] = {}

    def bound_of(sender: str, plan: str) -> float:
        if (sender, plan) not in cache:
            profile = profiles(sender, model)
            measured = () if profile is None or profile.metric != "agreement" else \
                getattr(profile, "points", lambda: profile.frontier)()  # DroidSpeak, then CacheBlend points
            points = [p.quality for p in measured if str(p.plan) == plan]
            value = points[0] if points else default
            cache[(sender, plan)] = value if math.isfinite(value) else default
        return cache[(sender, plan)]

    return bound_of


def build_guard(settings: Any, model: str, metrics: Any, server_args: Any) -> Optional[QualityGuard]:
    """The guard of a receiver with ``guard_fraction`` > 0, else None."""
    if settings.guard_fraction <= 0 or not settings.peers:
        return None
    endpoint = ShadowEndpoint.from_server_args(server_args, settings.guard_url)
    logger.info("droidspeak: quality guard on: %.3g of reused greedy requests re-run at %s (priority %s)",
                settings.guard_fraction, endpoint.url, endpoint.priority)
    return QualityGuard(settings, model, metrics, endpoint, profile_bound(settings, model))
