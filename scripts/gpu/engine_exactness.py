"""Engine-native receiver, exactness through SGLang: four architectures, both attention backends.

    bash scripts/gpu/engine_exactness.sh      (on the device machine; OUT gets the JSON)

Per (architecture, attention backend) one sender and one receiver server of the same
random-weight model (sender = receiver weights), stock sglang 0.5.17 + the plugin, bf16,
CUDA graphs and the overlap scheduler on (graph batch sizes capped to start fast),
``--skip-tokenizer-init`` (token ids in and out), data plane cuda_ipc:

    arch      what it exercises                           weights
    llama3    Llama 3 layers, rope theta 5e5              HF init (std 0.02), seeded
    qwen2     Qwen2.5: q/k/v biases                       "
    qwen3     Qwen3: q/k RMSNorm                          "
    gemma2    Gemma 2: sliding window 256 < context 1024  "
              on every other layer, logit soft-capping

Backends: ``triton``, ``flashinfer`` and ``flashinfer-paged`` (flashinfer with
``SGLANG_FLASHINFER_USE_PAGED=1``: SGLang 0.5.17's ragged prefill path applies no sliding
window to a prefix-free extend, its paged path does; the plugin refuses sliding-window
models on ragged flashinfer).

Per context (1024 tokens, random ids) the sender prefills it; the receiver answers
context + 16-token suffix natively first ("off": its own full prefill, the reference),
its cache is flushed, then it answers under every plan (reuse, 0:2, 3:5 (a middle group),
0:8 = all layers of 8, which the receiver serves as its own normal prefill (no import);
blend:0.3333@1 = CacheBlend-style recompute of a third of the
tokens, selected at layer 1, through the engine: with sender = receiver weights it must
equal the own prefill too), each importing the context from the sender.
Checks: each plan's request reused the context (0:8: did not), its 16 greedy tokens equal
the reference's, and its teacher-forced logprobs of suffix + the reference's tokens are
within TF_TOLERANCE nats of the reference's; no fallback counted on any receiver.
Control row ``radix`` (no DroidSpeak): the reference's teacher-forced pass reuses the
context from the receiver's own radix cache; the same pass on a flushed cache (no prefix)
is compared with it: how far the server's own prefix hits move its outputs.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

from sglang_droidspeak.bench.prefill_model import flush
from sglang_droidspeak.bench.servers import Server, metric_sum, post, wait_healthy
from sglang_droidspeak.plan.system_points import CACHEBLEND, DROIDSPEAK

TOKENIZER = Path(".cache/gpu-tok")  # carried: any tokenizer files (--skip-tokenizer-init: ids in and out)
ARCHS = ("llama3", "qwen2", "qwen3", "gemma2")
BACKENDS = ("triton", "flashinfer", "flashinfer-paged")
PAGED_ENV = {"SGLANG_FLASHINFER_USE_PAGED": "1"}
PLANS = ("reuse", "0:2", "3:5", "0:8", "blend:0.3333@1")
CONTEXT_LEN, SUFFIX_LEN, NEW_TOKENS, NUM_CONTEXTS, VOCAB = 1024, 16, 16, 2, 32000
TF_TOLERANCE = 0.1  # nats, bf16 (as scripts/gpu/checks.py)
DIMS = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=8,
            num_key_value_heads=2, head_dim=128, vocab_size=VOCAB, max_position_embeddings=4096)
ALL_LAYERS = DIMS["num_hidden_layers"]  # plan 0:8 recomputes every layer


def make_model(arch: str, dest: Path) -> Path:
    """A seeded random bf16 model of ``arch`` saved as safetensors, with TOKENIZER's files."""
    import torch
    import transformers

    if (dest / "config.json").exists():
        return dest
    extra = {"llama3": {"rope_theta": 500000.0}, "qwen2": {}, "qwen3": {},
             "gemma2": {"sliding_window": 256, "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0,
                        "query_pre_attn_scalar": 128, "hidden_act": "gelu_pytorch_tanh",
                        "hidden_activation": "gelu_pytorch_tanh"}}[arch]
    name = {"llama3": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "gemma2": "Gemma2"}[arch]
    config = getattr(transformers, f"{name}Config")(**DIMS, **extra, tie_word_embeddings=arch == "gemma2")
    torch.manual_seed(ARCHS.index(arch))
    model = getattr(transformers, f"{name}ForCausalLM")(config).to(torch.bfloat16)
    model.save_pretrained(dest)
    for tok in TOKENIZER.glob("tokenizer*.json"):  # the plugin fingerprints the tokenizer too (ids go in raw)
        shutil.copyfile(tok, dest / tok.name)
    return dest


def start_pair(arch: str, backend: str, index: int, model: Path, work: Path) -> tuple[Server, Server]:
    port, zmq = 31000 + 10 * index, 5900 + 10 * index
    common = ("--dtype", "bfloat16", "--skip-tokenizer-init", "--mem-fraction-static", "0.9",
              "--max-total-tokens", "12288", "--cuda-graph-max-bs-decode", "4", "--cuda-graph-max-bs-prefill", "512",
              "--log-level", "info")
    name, env = f"{arch}-{backend}", PAGED_ENV if backend == "flashinfer-paged" else {}
    backend = backend.removesuffix("-paged")
    sender = Server(f"{name}-a", str(model), port, work, plugin=True, backend=backend, extra=common, env=env, config={
        "model": f"{name}-a", "export_bind": f"tcp://127.0.0.1:{zmq}", "announce_bind": f"tcp://127.0.0.1:{zmq + 1}",
        "data_plane": "cuda_ipc", "import_chunk_tokens": 512})
    receiver = Server(f"{name}-b", str(model), port + 1, work, plugin=True, backend=backend, extra=common, env=env,
                      config={
        "model": f"{name}-b", "data_plane": "cuda_ipc", "fetch_timeout_s": 30.0, "min_foreign_tokens": 16,
        "import_chunk_tokens": 512,
        "peers": [{"model": f"{name}-a", "fetch": f"tcp://127.0.0.1:{zmq}",
                   "announce": f"tcp://127.0.0.1:{zmq + 1}"}]})
    return sender, receiver


def generate(server: Server, ids: list, plan: str, new_tokens: int, start: int) -> dict:
    body = {"input_ids": ids, "return_logprob": True, "logprob_start_len": start, "sampling_params": {
        "max_new_tokens": new_tokens, "temperature": 0, "custom_params": {"droidspeak_plan": plan}}}
    r = post(server.url + "/generate", body, timeout=600)
    meta = r["meta_info"]
    system = meta.get("droidspeak_system") or [None]  # response_info.py: a one-element list
    reason = meta.get("droidspeak_reason") or [None]
    return {"ids": r["output_ids"], "cached": meta.get("cached_tokens"), "system": system[0], "reason": reason[0],
            "input_logprobs": [lp[0] for lp in meta.get("input_token_logprobs") or [] if lp[0] is not None]}


def foreign(got: dict) -> bool:
    """The request's context came from the sender (imported, or adopted from an import),
    not from a fallback's own prefill (meta_info droidspeak_system, response_info.py)."""
    return got["system"] in (DROIDSPEAK, CACHEBLEND) and (got["cached"] or 0) >= CONTEXT_LEN - 1


def max_abs_diff(a: dict, b: dict) -> float:
    return max(abs(x - y) for x, y in zip(a["input_logprobs"], b["input_logprobs"]))


def check_pair(sender: Server, receiver: Server, rng: random.Random) -> list[dict]:
    rows = []
    for c in range(NUM_CONTEXTS):
        ctx = [rng.randrange(3, VOCAB) for _ in range(CONTEXT_LEN)]
        suffix = [rng.randrange(3, VOCAB) for _ in range(SUFFIX_LEN)]
        post(sender.url + "/generate", {"input_ids": ctx, "sampling_params": {"max_new_tokens": 1}}, timeout=600)
        time.sleep(0.5)  # the announcement crosses PUB/SUB
        ref = generate(receiver, ctx + suffix, "off", NEW_TOKENS, CONTEXT_LEN)  # its own full prefill
        forced = ctx + suffix + ref["ids"]  # teacher forcing: every plan scores the reference's tokens
        ref_tf = generate(receiver, forced, "off", 1, CONTEXT_LEN)  # the context from its own radix cache
        flush(receiver)  # else its native copy of the context would serve the plans' requests
        fresh_tf = generate(receiver, forced, "off", 1, CONTEXT_LEN)  # no prefix: the control
        flush(receiver)
        rows.append({"context": c, "plan": "radix", "cached": fresh_tf["cached"], "tf_cached": ref_tf["cached"],
                     "reused": (ref_tf["cached"] or 0) >= CONTEXT_LEN - 1 and not fresh_tf["cached"],
                     "greedy_same": None, "max_tf_dlogp": max_abs_diff(fresh_tf, ref_tf), "ref_cached": ref["cached"]})
        for plan in PLANS:
            free = generate(receiver, ctx + suffix, plan, NEW_TOKENS, CONTEXT_LEN)
            tf = generate(receiver, forced, plan, 1, CONTEXT_LEN)
            diff = max_abs_diff(tf, ref_tf)
            flush(receiver)  # a fallback's own prefill must not serve the next plan's requests
            rows.append({"context": c, "plan": plan, "cached": free["cached"], "tf_cached": tf["cached"],
                         "reused": foreign(free) and foreign(tf), "system": free["system"],
                         "reason": free["reason"], "tf_reason": tf["reason"],
                         "greedy_same": free["ids"] == ref["ids"], "max_tf_dlogp": diff,
                         "ref_cached": ref["cached"]})
    return rows


def main() -> None:
    out = Path(os.environ.get("OUT", "/tmp/out"))
    work = Path("/tmp/ds-exact")
    work.mkdir(parents=True, exist_ok=True)
    archs = os.environ.get("DS_ARCHS", ",".join(ARCHS)).split(",")
    backends = os.environ.get("DS_BACKENDS", ",".join(BACKENDS)).split(",")
    models = {arch: make_model(arch, work / "models" / arch) for arch in archs}
    pairs = {(a, b): start_pair(a, b, i, models[a], work) for i, (a, b) in
             enumerate((a, b) for a in archs for b in backends)}
    result = {"date": time.strftime("%Y-%m-%d"), "command": "bash scripts/gpu/engine_exactness.sh",
              "plans": PLANS, "context_len": CONTEXT_LEN, "tolerance_nats": TF_TOLERANCE, "dims": DIMS, "rows": []}
    try:
        wait_healthy([s for pair in pairs.values() for s in pair], timeout=540)
        for (arch, backend), (sender, receiver) in pairs.items():
            try:
                rows = check_pair(sender, receiver, random.Random(7))
                metrics = receiver.metrics()
                fallbacks = metric_sum(metrics, "sglang:droidspeak_fallbacks_total")
                reasons = [line for line in metrics.splitlines() if line.startswith("sglang:droidspeak_fallbacks_total")]
            except Exception as exc:  # one broken pair must not hide the others
                rows, fallbacks, reasons = [{"error": repr(exc), "log": receiver.tail(30)}], None, []
            result["rows"] += [{"arch": arch, "backend": backend, "fallbacks": fallbacks, **r} for r in rows]
            result.setdefault("fallback_reasons", {})[f"{arch}/{backend}"] = reasons
            print(f"[{time.strftime('%X')}] {arch}/{backend} done", flush=True)
    except Exception as exc:
        result["error"] = repr(exc)
        print("ERROR", repr(exc), flush=True)
    finally:
        for pair in pairs.values():
            for server in pair:
                server.stop()
        (out / "engine-exactness.json").write_text(json.dumps(result, indent=1))
    summarize(result)


def expects_reuse(plan: str) -> bool:
    """Every plan imports the context except one recomputing every layer: the receiver serves
    that as its own normal prefill (plan/system_points.py: FULL_PREFILL), no fetch."""
    return plan != f"0:{ALL_LAYERS}"


def summarize(result: dict) -> None:
    print(f"\n{'arch':8} {'backend':10} {'plan':6} {'reused':6} {'greedy':7} {'max tf |dlogp|':>15}")
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['arch']:8} {r['backend']:10} ERROR {r['error'][:200]}")
            continue
        print(f"{r['arch']:8} {r['backend']:10} {r['plan']:6} {str(r['reused']):6} {str(r['greedy_same']):7} "
              f"{r['max_tf_dlogp']:15.4f}  {r.get('reason') or ''}")
    ok = [r for r in result["rows"] if "error" not in r and r["plan"] != "radix"]
    passed = all(r["reused"] == expects_reuse(r["plan"]) and r["max_tf_dlogp"] <= TF_TOLERANCE and not r["fallbacks"]
                 for r in ok)
    print(f"plan rows {len(ok)}, each reused as expected (0:{ALL_LAYERS} is a normal prefill) and within "
          f"{TF_TOLERANCE} nats: {passed}, "
          f"greedy equal {sum(r['greedy_same'] for r in ok)}/{len(ok)}; error: {result.get('error')}")
    for key in sorted({(r["arch"], r["backend"]) for r in result["rows"] if r.get("plan") == "radix"}):
        worst = max(r["max_tf_dlogp"] for r in result["rows"] if r.get("plan") == "radix" and (r["arch"], r["backend"]) == key)
        print(f"radix control {key[0]}/{key[1]}: own prefix hit vs no prefix, max tf |dlogp| {worst:.4f}")


if __name__ == "__main__":
    sys.exit(main())
