"""The per-replica numbers of ``/status`` and ``droidspeak status``, from SGLang's /metrics.

Imports only the standard library (``droidspeak status`` uses it without aiohttp).
"""

from __future__ import annotations

import contextlib
import statistics

# summary key -> Prometheus sample name. Gauges (no _total): mean over the samples (one per
# rank), None when absent; counters: sum, 0 when absent (not yet counted).
STATUS_METRICS = {"cache_hit_rate": "sglang:cache_hit_rate", "token_usage": "sglang:token_usage",
                  "droidspeak_foreign_hits": "sglang:droidspeak_foreign_hits_total",
                  "droidspeak_tokens_reused": "sglang:droidspeak_tokens_reused_total",
                  "droidspeak_fallbacks": "sglang:droidspeak_fallbacks_total"}


def summarize_metrics(text: str) -> dict[str, float | None]:
    """``STATUS_METRICS`` from Prometheus text (``name{labels} value [timestamp]`` lines)."""
    samples: dict[str, list[float]] = {}
    for line in (x for x in text.splitlines() if not x.startswith("#")):
        name, brace, rest = line.partition("{")
        if not brace or " " in name:  # no labels
            name, _, rest = line.partition(" ")
        with contextlib.suppress(ValueError, IndexError):
            samples.setdefault(name.strip(), []).append(float(rest.rpartition("}")[2].split()[0]))
    return {key: sum(samples.get(name, [])) if name.endswith("_total")
            else statistics.fmean(samples[name]) if name in samples else None
            for key, name in STATUS_METRICS.items()}
