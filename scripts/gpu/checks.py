"""The checks scripts/gpu/integration.py runs against live servers (stdlib only).

    check_exactness   same weights: every plan vs stock SGLang (bitwise / teacher-forced)
    check_quality     tester -> libwriter: the profile's plan vs the reference engine
    check_fallbacks   incompatible sender, no profile, frozen sender, KV memory pressure
"""

from __future__ import annotations

import random
import signal
import threading
import time
import urllib.request

from sglang_droidspeak.bench.servers import Server, metric_sum

PLANS = ["0:8", "0:2", "2:5", "7:8", "reuse", "0:1,4:6", "blend:0.25", "blend:1.0"]  # blend: CacheBlend-style


def greedy(server: Server, ids: list[int], plan: str | None = None, n: int = 16, start: int | None = None) -> dict:
    """Greedy output; with ``start``, also the teacher-forced logprobs of ids[start:]."""
    params = {"max_new_tokens": n, "temperature": 0}
    if plan is not None:
        params["custom_params"] = {"droidspeak_plan": plan}
    body = {"input_ids": ids, "sampling_params": params, "return_logprob": True}
    if start is not None:
        body["logprob_start_len"] = start
    r = server.generate(body)
    meta = r["meta_info"]
    return {"ids": r["output_ids"], "cached": meta.get("cached_tokens"),
            "logprobs": [lp[0] for lp in meta["output_token_logprobs"]],
            "input_logprobs": [lp[0] for lp in meta.get("input_token_logprobs") or [] if lp[0] is not None]}


def prefill_on(server: Server, ids: list[int]) -> None:
    server.generate({"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0}})
    time.sleep(0.5)  # the announcement crosses PUB/SUB


def stock_runs(stock: Server, ctx: list, suffix: list) -> tuple[dict, dict]:
    """Stock SGLang on ctx + suffix: cold, and with ctx prefilled alone first (as lw-a does)."""
    flush(stock)
    cold = greedy(stock, ctx + suffix, start=len(ctx))
    flush(stock)
    prefill_on(stock, ctx)
    return cold, greedy(stock, ctx + suffix, start=len(ctx))


def flush(server: Server) -> None:
    urllib.request.urlopen(urllib.request.Request(server.url + "/flush_cache", b"", method="POST"), timeout=60).read()
    time.sleep(0.2)


def max_diff(a: dict, b: dict, key: str = "logprobs") -> float:
    return max((abs(x - y) for x, y in zip(a[key], b[key])), default=float("nan"))


def first_divergence(a: dict, b: dict) -> int:
    """Index of the first differing greedy token (len if none)."""
    return next((i for i, (x, y) in enumerate(zip(a["ids"], b["ids"])) if x != y), len(a["ids"]))


TF_TOLERANCE = 0.1  # nats: teacher-forced logprob gap allowed for recomputed (non-bitwise) KV


def exactness_row(i: int, plan: str, got: dict, cached: dict, cold: dict) -> dict:
    return {"prompt": i, "plan": plan, "cached": got["cached"],
            "same_ids": got["ids"] == cached["ids"], "same_ids_as_cold": got["ids"] == cold["ids"],
            "first_divergence": first_divergence(got, cached),
            "max_tf_logprob_diff": max_diff(got, cached, "input_logprobs"),
            "max_tf_logprob_diff_cold": max_diff(got, cold, "input_logprobs"),
            "max_logprob_diff": max_diff(got, cached)}


def check_exactness(s: dict, prompts: list[tuple[list, list]]) -> dict:
    """bf16 on CUDA (sgl_kernel's rmsnorm has no fp32 kernel). Bitwise equality is only
    possible where the same kernels computed the KV: full reuse of a same-weights sender
    must equal stock-with-the-context-cached bitwise. Recomputed layers run other kernels
    (SDPA, unpadded GEMMs), so their check is the teacher-forced logprob gap over the
    suffix (no free-running divergence) within TF_TOLERANCE, next to stock's own
    cold-vs-cached gap; greedy-token equality is reported too."""
    rows = []
    for i, (ctx, suffix) in enumerate(prompts):
        cold, cached = stock_runs(s["stock"], ctx, suffix)
        rows.append(exactness_row(i, "stock cold", cold, cached, cold))
        prefill_on(s["lw-a"], ctx)
        for plan in PLANS + ["off"]:
            rows.append(exactness_row(i, plan, greedy(s["lw-b"], ctx + suffix, plan, start=len(ctx)), cached, cold))
    plan_rows = [r for r in rows if r["plan"] in PLANS]
    reuse_bitwise = all(r["max_logprob_diff"] == 0.0 and r["max_tf_logprob_diff"] == 0.0
                        for r in plan_rows if r["plan"] == "reuse")
    reused = all(r["cached"] >= len(prompts[r["prompt"]][0]) - 1 for r in plan_rows)
    within = all(r["max_tf_logprob_diff"] <= TF_TOLERANCE for r in plan_rows)
    return {"ok": reuse_bitwise and reused and within, "reuse_bitwise": reuse_bitwise, "all_reused": reused,
            "teacher_forced_within_tolerance": within, "tolerance_nats": TF_TOLERANCE,
            "greedy_same_tokens": sum(r["same_ids"] or r["same_ids_as_cold"] for r in plan_rows),
            "num_plan_rows": len(plan_rows), "rows": rows}


def continuation_top1(server: Server, ex: dict, plan: str) -> tuple[list[int], int]:
    head = ex["context_ids"] + ex["query_ids"]
    r = server.generate({"input_ids": head + ex["continuation_ids"], "return_logprob": True,
                         "logprob_start_len": len(head), "top_logprobs_num": 1,
                         "sampling_params": {"max_new_tokens": 1, "temperature": 0,
                                             "custom_params": {"droidspeak_plan": plan}}})
    tops = r["meta_info"]["input_top_logprobs"]  # entry j predicts token len(head) + j
    return [t[0][1] if t else -1 for t in tops[: len(ex["continuation_ids"])]], r["meta_info"].get("cached_tokens")


def bootstrap_ci(diffs: list, num_samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of per-example differences."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(num_samples))
    return means[int(0.025 * num_samples)], means[int(0.975 * num_samples) - 1]


def quality_table(rows: list, examples: list, ref_key: str = "reference") -> dict:
    """Per system and metric: SGLang's mean, the reference engine's (``ref_key``: fp32 or
    bf16) and the 95% bootstrap interval of the per-example difference; plus ``plan_gain``:
    the interval of the difference between the engines' per-example gains of the plan over
    full reuse (agreement), i.e. whether DroidSpeak's effect reproduces."""
    table = {}
    for key in ("receiver", "full_reuse", "plan"):
        table[key] = {}
        for m in ("agreement", "target_acc"):
            got = [r[key][m] for r in rows]
            ref = [e[ref_key][key][m] for e in examples]
            low, high = bootstrap_ci([g - r for g, r in zip(got, ref)])
            table[key][m] = {"sglang": sum(got) / len(got), "reference": sum(ref) / len(ref),
                             "diff_ci95": [low, high]}
    gain = lambda scores: scores["plan"]["agreement"] - scores["full_reuse"]["agreement"]  # noqa: E731
    got, ref = [gain(r) for r in rows], [gain(e[ref_key]) for e in examples]
    table["plan_gain"] = {"agreement": {"sglang": sum(got) / len(got), "reference": sum(ref) / len(ref),
                                        "diff_ci95": list(bootstrap_ci([g - r for g, r in zip(got, ref)]))}}
    return table


def within_noise(table: dict) -> bool:
    return all(v["diff_ci95"][0] <= 0 <= v["diff_ci95"][1] for row in table.values() for v in row.values()
               if v["sglang"] != v["reference"])


def check_quality(s: dict, quality: dict) -> dict:
    """Per example and system: SGLang's teacher-forced agreement / target_acc next to the
    reference engine's (fp32 and bf16). "Matches within noise": for every (system, metric)
    the 95% bootstrap interval of the per-example difference (SGLang - reference) contains 0."""
    rows, cached = [], []
    for ex in quality["examples"]:
        prefill_on(s["tester"], ex["context_ids"])
        truth, preds = ex["continuation_ids"], {}
        # cross-model runs first: a native run would leave the whole prompt in the native tree
        for key, plan in (("plan", "auto"), ("full_reuse", "reuse"), ("receiver", "off")):
            preds[key], c = continuation_top1(s["libwriter"], ex, plan)
            if key == "plan":
                cached.append(c)
        own = preds["receiver"]
        rows.append({key: {"agreement": sum(a == b for a, b in zip(pred, own)) / len(truth),
                           "target_acc": sum(a == b for a, b in zip(pred, truth)) / len(truth)}
                     for key, pred in preds.items()})
    return quality_result(rows, quality, cached)


def quality_result(rows: list, quality: dict, cached: list) -> dict:
    examples = quality["examples"]
    tables = {key: quality_table(rows, examples, key) for key in ("reference", "reference_bf16") if key in examples[0]}
    table = tables["reference"]
    reused = all(c >= len(e["context_ids"]) - 1 for c, e in zip(cached, examples))
    worst = max(abs(v["sglang"] - v["reference"]) for row in table.values() for v in row.values())
    return {"ok": within_noise(table) and reused, "within_noise": within_noise(table), "plan": quality["plan_str"],
            "num_examples": len(rows), "max_abs_diff": worst, "table": table, "tables": tables,
            "within_noise_by_reference": {k: within_noise(t) for k, t in tables.items()},
            "per_example": rows, "cached_tokens": cached}


def check_fallbacks(s: dict, prompts: list) -> dict:
    rows = {}
    ctx, suffix = prompts[0]
    ctx = [t % 2000 + 7 for t in reversed(ctx)]  # fresh contexts, unseen by every tree
    prefill_on(s["odd"], ctx)
    rows["incompatible"] = greedy(s["lw-b"], ctx + suffix)["ids"] == greedy(s["stock"], ctx + suffix)["ids"]
    ctx2 = [t % 1999 + 11 for t in ctx]
    prefill_on(s["lw-a"], ctx2)
    rows["no_profile"] = greedy(s["libwriter"], ctx2 + suffix)["ids"] == greedy(s["stock"], ctx2 + suffix)["ids"]
    rows["memory"] = check_memory_pressure(s, suffix)  # before the frozen peer: its backoff would skip it
    ctx3 = [t % 1998 + 13 for t in ctx]
    prefill_on(s["lw-a"], ctx3)
    s["lw-a"].signal_all(signal.SIGSTOP)  # the whole process group: the scheduler answers fetches
    start = time.time()
    try:
        got = greedy(s["lw-b"], ctx3 + suffix, "0:2")
    finally:
        s["lw-a"].signal_all(signal.SIGCONT)
    rows["silent_peer"] = got["ids"] == greedy(s["stock"], ctx3 + suffix)["ids"]
    rows["silent_peer_latency_s"] = round(time.time() - start, 2)
    text = s["lw-b"].metrics()
    rows["fallback_counts"] = {r: metric_sum(text, "sglang:droidspeak_fallbacks_total", reason=r)
                               for r in ("incompatible", "timeout", "peer_backoff", "no_memory", "no_plan")}
    return rows


def check_memory_pressure(s: dict, suffix: list) -> dict:
    """lw-b has 4096 KV slots. Its tree is flushed (nothing evictable), then two native
    requests of 1100 prompt + 900 generated tokens are admitted together (SGLang reserves
    about 0.7 of max_new_tokens each: 2 x 1730 <= 4096) and hold 2200+ slots, growing, while
    a 1900-token foreign prefix arrives: fewer than 1900 slots are free, so the import must
    fail with reason no_memory and the request prefill normally once the two finish.

    Exactly two: a third request that SGLang cannot admit sets ``batch_is_full``, and the
    scheduler then matches no waiting request (no import is tried) until memory frees; the
    foreign request then imports normally (GPU run 3, 2026-11-28: 1900 tokens reused, no
    fallback, answer equal to stock)."""
    flush(s["lw-b"])
    rng = random.Random(0)
    ctx = [rng.randrange(3, 2000) for _ in range(1900)]
    prefill_on(s["lw-a"], ctx)
    before = metric_sum(s["lw-b"].metrics(), "sglang:droidspeak_fallbacks_total", reason="no_memory")
    hogs = [[rng.randrange(3, 2000) for _ in range(1100)] for _ in range(2)]
    body = lambda ids: {"input_ids": ids, "sampling_params": {"max_new_tokens": 900, "temperature": 0,  # noqa: E731
                                                               "ignore_eos": True}}
    threads = [threading.Thread(target=s["lw-b"].generate, args=(body(h),)) for h in hogs]
    for t in threads:
        t.start()
    time.sleep(0.5)
    got = greedy(s["lw-b"], ctx + suffix, "0:2")
    for t in threads:
        t.join()
    after = metric_sum(s["lw-b"].metrics(), "sglang:droidspeak_fallbacks_total", reason="no_memory")
    return {"same_ids": got["ids"] == greedy(s["stock"], ctx + suffix)["ids"], "cached": got["cached"],
            "no_memory_fallbacks": after - before}
