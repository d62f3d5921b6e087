"""The plan of scripts/gpu/guard_check.py: guard settings, requests, and what one receiver's run
must show, PASS/FAIL per row.

Per receiver and phase: ``requests`` greedy requests (droidspeak_plan "auto": a forced plan is
never checked), the context + its held-out continuation cut CUT tokens shorter each time
(``requests_of``), each on a flushed cache (so each imports the context from the sender: the
receiver's own shadow prefill of the previous one would make it a native hit) and followed by a
wait for its shadow check; then one extra request, after the trip. Before each phase a warm-up
on a forced plan. Phase "priority" restarts the liar with PRIORITY_ARGS: its shadow requests
then carry the lowest priority (LOWEST_PRIORITY) and must not abort.

A receiver's record (guard_check.run_receiver) holds its requests (each with its meta_info
droidspeak keys and its own counter deltas), the counter deltas over its whole run
(serving_requests.counters: 'name{label=value,...}' with the model label dropped) and the plugin's
"quality guard" log lines. ``evaluate`` reads from them:

    got key      what
    served       requests before the extra one that were served over foreign KV (droidspeak_system)
    checked      guard_checks_total{outcome="checked"}; bad: outcome failed + dropped
    trips        guard_trips_total; trip_lines: "quality guard tripped for SENDER -> RECEIVER" lines
    agreement    guard_agreement_sum / guard_agreement_count (the window's checks, mean)
    priority     the "(priority X)" of the "quality guard on:" log lines
    last_reused  whether the extra request (sent after the trip) was served over foreign KV;
    last_hits    its foreign_hits_total delta
    last_reason  its meta_info droidspeak_reason (a guard-blocked prefix: "quality_guard")

No SGLang, no servers: tests/unit/test_guard_check.py runs it on made-up records.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Callable, Optional

from sglang_droidspeak.plan.system_points import CACHEBLEND, DROIDSPEAK
from sglang_droidspeak.sglang.quality_guard import GUARD_FALLBACK  # imports no SGLang

GUARD_SAMPLES = ("guard_checks_total", "guard_trips_total", "guard_agreement_sum", "guard_agreement_count")
GUARD = {"guard_fraction": 1.0, "guard_min_checks": 4, "guard_window": 8, "guard_margin": 0.05,
         "guard_min_output_tokens": 8}  # both receivers' guard settings (settings_fields.GUARD_KEYS)
PHASES = ("no-priority", "priority")  # the liar without, then with --enable-priority-scheduling
ROLES = {"no-priority": ("liar", "control"), "priority": ("liar",)}  # who runs in each phase
PRIORITY_ARGS = ("--enable-priority-scheduling", "--default-priority-value", "0")  # phase "priority"'s liar
CUT = 4  # tokens each request's continuation is shorter than the one before
LOWEST_PRIORITY = str(-sys.maxsize - 1)  # guard_shadow.ShadowEndpoint's, as the "guard on" line logs it
REUSED_SYSTEMS = (DROIDSPEAK, CACHEBLEND)  # response_info.py; FULL_PREFILL is a fallback
GUARD_ON = re.compile(r"quality guard on: .*\(priority (\S+)\)")


def requests_of(ex, query_len: int, requests: int) -> list[list[int]]:
    """``requests`` + 1 prompts from one lcc example: its context, then its continuation cut CUT
    tokens shorter each time (``query_len`` tokens first)."""
    ctx = len(ex.context_ids)
    return [list(ex.prompt_ids[:ctx + query_len - CUT * k]) for k in range(requests + 1)]


def with_priority(spec: dict) -> dict:
    """A real_serving server spec with PRIORITY_ARGS added."""
    return {**spec, "extra": (*spec["extra"], *PRIORITY_ARGS)}


def liar_note(agreement: Optional[float], trip_below: float, slack: float = 0.03) -> str:
    """Whether the liar's measured full-reuse agreement (its profile) predicts a trip."""
    if agreement is None:
        return "no profile: the trip is not predicted"
    if agreement <= trip_below - slack:
        return f"{trip_below - agreement:.3f} below the trip line {trip_below:.3f}: it should trip"
    return f"not clearly below the trip line {trip_below:.3f}: it may not trip (smollm2-docs-lora: 0.853)"


def sample(counts: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``counts``' samples named ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in counts.items():
        base, _, rest = key.partition("{")
        have = dict(kv.split("=", 1) for kv in rest.rstrip("}").split(",") if "=" in kv)
        if base == name and all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


def first(meta: dict, key: str) -> Any:
    """A droidspeak meta_info value: a one-element list (response_info.py), or None."""
    value = meta.get(key)
    return value[0] if isinstance(value, list) and value else value


def reused(meta: dict) -> bool:
    return first(meta, "droidspeak_system") in REUSED_SYSTEMS


def measured(rec: dict, sender: str, receiver: str) -> dict:
    """The ``got`` values of the module table from one receiver's record."""
    d, requests = rec.get("delta") or {}, rec.get("requests") or []
    count = sample(d, "guard_agreement_count", sender=sender)
    last = requests[-1] if requests else {}
    lines = rec.get("log_lines") or []
    return {
        "served": sum(reused(r.get("meta") or {}) for r in requests[:-1]),
        "checked": sample(d, "guard_checks_total", sender=sender, outcome="checked"),
        "bad": sum(sample(d, "guard_checks_total", sender=sender, outcome=o) for o in ("failed", "dropped")),
        "trips": sample(d, "guard_trips_total", sender=sender),
        "trip_lines": sum(f"quality guard tripped for {sender} -> {receiver}" in line for line in lines),
        "agreement": round(sample(d, "guard_agreement_sum", sender=sender) / count, 4) if count else None,
        "priority": [m.group(1) for m in map(GUARD_ON.search, lines) if m],
        "last_reused": bool(last) and reused(last.get("meta") or {}),
        "last_hits": sample(last.get("counters") or {}, "foreign_hits_total") if last else None,
        "last_reason": first(last.get("meta") or {}, "droidspeak_reason") if last else None,
    }


def expected(sender: str, requests: int, max_quality_drop: float, role: str, phase: str) -> dict:
    """``rules``' cfg for one receiver in one phase."""
    return {"sender": sender, "min_checks": GUARD["guard_min_checks"], "requests": requests,
            "trip_below": round(1 - max_quality_drop - GUARD["guard_margin"], 6),
            "priority": LOWEST_PRIORITY if (role, phase) == ("liar", "priority") else "None"}


Rule = tuple[str, str, str, Callable[[dict], bool]]  # check, expect, got key, test


def rules(role: str, cfg: dict) -> list[Rule]:
    """The rows for ``role`` ("liar" or "control"); ``cfg``: min_checks, requests (before the
    extra one), trip_below (bound - margin), priority (the guard's shadow priority, as logged)."""
    m, below, priority = cfg["min_checks"], cfg["trip_below"], cfg["priority"]

    def mean_is(test: Callable[[float], bool]) -> Callable[[dict], bool]:
        return lambda g: g["agreement"] is not None and test(g["agreement"])

    common: list[Rule] = [
        ("served over foreign KV", f">= {m} of the first {cfg['requests']}", "served", lambda g: g["served"] >= m),
        ("checks scored", f">= {m}", "checked", lambda g: g["checked"] >= m),
        ("checks failed or dropped", "0", "bad", lambda g: g["bad"] == 0),
        ("shadow priority (guard on line)", f"[{priority}]", "priority", lambda g: g["priority"] == [priority]),
    ]
    if role == "liar":
        return common + [
            ("trips", "1", "trips", lambda g: g["trips"] == 1),
            ("trip warning in the log", "1 line", "trip_lines", lambda g: g["trip_lines"] == 1),
            ("live agreement mean", f"< {below:.3f}", "agreement", mean_is(lambda a: a < below)),
            ("extra request: not reused", "False", "last_reused", lambda g: not g["last_reused"]),
            ("extra request: foreign hits", "+0", "last_hits", lambda g: g["last_hits"] == 0),
            ("extra request: meta_info reason", GUARD_FALLBACK, "last_reason",
             lambda g: g["last_reason"] == GUARD_FALLBACK),
        ]
    if role == "control":
        return common + [
            ("trips", "0", "trips", lambda g: g["trips"] == 0 and g["trip_lines"] == 0),
            ("live agreement mean (noise floor)", f">= {below:.3f}", "agreement", mean_is(lambda a: a >= below)),
            ("extra request: reused", "True", "last_reused", lambda g: g["last_reused"]),
        ]
    raise ValueError(f"role must be 'liar' or 'control', got {role!r}")


def evaluate(role: str, rec: dict, cfg: dict, receiver: Optional[str] = None) -> list[dict]:
    """PASS/FAIL per row of ``rules(role, cfg)`` on ``rec`` (``cfg['sender']`` -> ``receiver``)."""
    got = measured(rec, cfg["sender"], receiver or cfg.get("receiver", ""))
    return [{"check": check, "expect": expect, "got": got[key], "pass": bool(test(got))}
            for check, expect, key, test in rules(role, cfg)]


def table(phases: dict) -> str:
    """One line per row: phase, receiver, check, expect, got, PASS/FAIL."""
    lines = [f"{'phase':12} {'receiver':18} {'check':34} {'expect':16} {'got':>22}  result"]
    for phase, receivers in phases.items():
        for name, rec in receivers.items():
            for row in rec.get("expect") or []:
                lines.append(f"{phase:12} {name:18} {row['check']:34} {row['expect']:16} {str(row['got']):>22}  "
                             f"{'PASS' if row['pass'] else 'FAIL'}")
    return "\n".join(lines)


def all_pass(phases: dict) -> bool:
    rows = [row for receivers in phases.values() for rec in receivers.values() for row in rec.get("expect") or []]
    return bool(rows) and all(row["pass"] for row in rows)
