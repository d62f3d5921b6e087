"""What scripts/gpu/real_serving.py measures, scored and summarised (no servers, no SGLang).

    function         what
    Scorer           decodes a generation and scores it against the receiver's own answer
                     (edit_sim: InDel on the lcc answer line; gen_sim: on the whole text) and
                     against the file's true next line (task_edit_sim: LongBench edit_sim)
    summarize        per (receiver, plan): exact-match rate with its Wilson 95% interval,
                     mean similarities with normal 95% intervals, TTFT p50/p90 beside the
                     receiver's own prefill on the same prompts, fallbacks by reason
    table            that summary as the table the script prints
"""

from __future__ import annotations

import math
from typing import Any, Optional

from sglang_droidspeak.bench.throughput_stats import percentile
from sglang_droidspeak.profiler.quality_study import ci95_half_width

OWN, RADIX = "own", "radix"
Z95 = 1.96


def first_divergence(a: list[int], b: list[int]) -> Optional[int]:
    """Index of the first differing token; None when equal (a proper prefix diverges at its end)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n; (0, 1) for n = 0."""
    if n == 0:
        return (0.0, 1.0)
    p, z2 = k / n, z * z
    centre, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_ci(values: list[float]) -> dict:
    """Mean and the half-width of its normal-approximation 95% interval (0 for n < 2)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0}
    mean = sum(values) / n
    return {"mean": round(mean, 6), "ci95": round(ci95_half_width(values), 6), "n": n}


def pcts(values: list[float]) -> dict:
    return {"p50": round(percentile(values, 50), 3), "p90": round(percentile(values, 90), 3),
            "mean": round(sum(values) / len(values), 3)} if values else {"p50": None, "p90": None, "mean": None}


class Scorer:
    """Decodes generations and scores them (tasks.decode_answer / edit_similarity / indel_ratio)."""

    def __init__(self, tokenizer):
        from sglang_droidspeak.tasks import code_tasks
        self.tokenizer, self.specials = tokenizer, code_tasks.special_token_ids(code_tasks.as_backend(tokenizer))

    def answer(self, ids: list[int]) -> str:
        from sglang_droidspeak.tasks import decode_answer
        from sglang_droidspeak.tasks.datasets import normalize_lines
        return normalize_lines(decode_answer(self.tokenizer, ids, "lcc"))

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode([i for i in ids if i not in self.specials], skip_special_tokens=False)

    def compare(self, ids: list[int], ref_ids: list[int], ref_answer: str, ref_text: str, target: str) -> dict:
        from sglang_droidspeak.tasks.metrics import edit_similarity, indel_ratio
        answer = self.answer(ids)
        return {"answer": answer, "exact": ids == ref_ids, "first_divergence": first_divergence(ids, ref_ids),
                "edit_sim": round(indel_ratio(answer, ref_answer), 6),
                "gen_sim": round(indel_ratio(self.text(ids), ref_text), 6),
                "task_edit_sim": round(edit_similarity(answer, target), 6)}


def context_reused(row: dict, context_len: int) -> bool:
    return (row.get("cached") or 0) >= context_len - 1


def summarize(rows: list[dict], context_len: int) -> dict:
    """Per (receiver, plan label): counts, exact-match rate (Wilson 95%), similarities (mean,
    95% half-width), TTFT p50/p90 beside ``own`` on the same prompts, fallbacks by reason."""
    out: dict = {}
    ok = [r for r in rows if "error" not in r]
    own = {(r["receiver"], r["prompt"]): r for r in ok if r["plan"] == OWN}
    for receiver in dict.fromkeys(r["receiver"] for r in ok):
        out[receiver] = {}
        for label in dict.fromkeys(r["plan"] for r in ok if r["receiver"] == receiver):
            sel = [r for r in ok if r["receiver"] == receiver and r["plan"] == label]
            base = [own[(receiver, r["prompt"])] for r in sel if (receiver, r["prompt"]) in own]
            errors = sum(1 for r in rows if "error" in r and r["receiver"] == receiver and r["plan"] == label)
            s: dict[str, Any] = {"value": sel[0].get("value"), "n": len(sel), "errors": errors,
                                 "reused": sum(context_reused(r, context_len) for r in sel),
                                 "ttft_ms": pcts([r["ttft_ms"] for r in sel if r.get("ttft_ms") is not None]),
                                 "own_ttft_ms": pcts([r["ttft_ms"] for r in base if r.get("ttft_ms") is not None]),
                                 "task_edit_sim": mean_ci([r["task_edit_sim"] for r in sel])}
            if label != OWN:
                k = sum(r["exact"] for r in sel)
                divs = [r["first_divergence"] for r in sel if r["first_divergence"] is not None]
                lo, hi = wilson(k, len(sel))
                s.update(exact=k, exact_rate=round(k / len(sel), 6), exact_ci95=[round(lo, 6), round(hi, 6)],
                         first_divergence_mean=round(sum(divs) / len(divs), 3) if divs else None,
                         edit_sim=mean_ci([r["edit_sim"] for r in sel]), gen_sim=mean_ci([r["gen_sim"] for r in sel]))
                if any("exact_radix" in r for r in sel):
                    s["exact_vs_radix"] = sum(r.get("exact_radix", False) for r in sel)
                p50, own50 = s["ttft_ms"]["p50"], s["own_ttft_ms"]["p50"]
                s["ttft_speedup_p50"] = round(own50 / p50, 3) if p50 and own50 else None
                falls: dict[str, float] = {}
                for r in sel:
                    for key, v in (r.get("counters") or {}).items():
                        if key.startswith("fallbacks_total"):
                            falls[key] = falls.get(key, 0) + v
                s["fallbacks"] = falls
                totals = [r["import"]["total_ms"] for r in sel if (r.get("import") or {}).get("total_ms") is not None]
                s["import_total_ms"] = pcts(totals)
            out[receiver][label] = s
    return out


def table(summary: dict) -> str:
    head = (f"{'receiver':18} {'plan':13} {'n':>3} {'reused':>6} {'exact':>11} {'edit_sim':>14} {'task':>6} "
            f"{'TTFT p50/p90 ms':>17} {'own p50/p90':>15} fallbacks")
    lines = [head]
    for receiver, plans in summary.items():
        for label, s in plans.items():
            t, o = s["ttft_ms"], s["own_ttft_ms"]
            ttft = f"{t['p50'] or 0:8.1f}/{t['p90'] or 0:<8.1f}"
            own = f"{o['p50'] or 0:7.1f}/{o['p90'] or 0:<7.1f}"
            exact = f"{s['exact']}/{s['n']}" if "exact" in s else "-"
            if "exact_vs_radix" in s:
                exact += f" r{s['exact_vs_radix']}"
            es = f"{s['edit_sim']['mean']:.3f}+-{s['edit_sim']['ci95']:.3f}" if "edit_sim" in s else "-"
            task = s["task_edit_sim"]["mean"]
            falls = ",".join(f"{k.split('reason=')[-1].rstrip('}')}:{v:g}" for k, v in s.get("fallbacks", {}).items())
            lines.append(f"{receiver:18} {label:13} {s['n']:>3} {s['reused']:>6} {exact:>11} {es:>14} "
                         f"{task if task is not None else float('nan'):6.3f} {ttft:>17} {own:>15} {falls or '-'}")
    return "\n".join(lines)
