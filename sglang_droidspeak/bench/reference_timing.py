"""The timed part of ``droidspeak bench-reference``: receiver-side prefill per system, on CPU.

A system is named by its bench-prefill plan string and run as the quality study's System:

    plan        quality study system    receiver work timed (prefix, then the first token)
    "off"       receiver                its own full prefill of the context
    "reuse"     plan:reuse-all          the sender's KV as is (build_receiver_cache, no group)
    "0:k"       plan:[0, k)             layers [0, k) recomputed from its own embeddings
    "blend:R"   cacheblend:k, R = k/L   selection pass at layer 1, then the budget's tokens

The prefix comes from ``profiler.evaluate.system_prefix_kv`` (the function the quality
study scores), then ``ReferenceModel.generate(prefix, query, 1)`` gives the first token:
TTFT = prefix_ms + first_token_ms. The sender's prefill is an input, made before any timer.
Rounds interleave the systems in a seeded shuffled order (warm-up rounds discarded), so
drift and a neighbour's bursts on a shared CPU hit all of them alike.
"""

from __future__ import annotations

import gc
import random
import time
from typing import NamedTuple, Optional

import torch

from sglang_droidspeak.plan import LayerPlan
from sglang_droidspeak.profiler.evaluate import cacheblend_tokens, system_prefix_kv
from sglang_droidspeak.profiler.systems import RECEIVER, System, cacheblend_system, plan_system
from sglang_droidspeak.reference import ReferenceModel, SenderCache

FULL, REUSE = "off", "reuse"


class BenchSystem(NamedTuple):
    plan: str  # the bench-prefill plan string
    system: System  # what the quality study scores under that name
    recompute_tokens: Optional[int]  # CacheBlend-style: tokens recomputed after selection


class LengthRun(NamedTuple):
    samples: list[dict]  # in the order they were timed
    plans: list[str]  # the systems timed, in bench_systems order
    skipped: list[str]  # the systems not timed, with why


class Timed(NamedTuple):
    prefix_ms: float  # the prefix KV (system_prefix_kv)
    first_token_ms: float  # the query over that prefix, up to the first token

    @property
    def ttft_ms(self) -> float:
        return self.prefix_ms + self.first_token_ms


def blend_plan_name(k: int, num_layers: int) -> str:
    """"blend:R" with R = k / L written exactly (repr), so it parses back to the budget k / L."""
    return f"blend:{k / num_layers!r}"


def bench_systems(receiver: ReferenceModel, context_len: int) -> tuple[list[BenchSystem], list[str]]:
    """off, reuse, 0:k and blend:k/L for k in 1..L-1; the blend budgets CacheBlend's selection
    pass does not fit in (cacheblend_tokens is None) are skipped, with why."""
    num_layers = receiver.num_layers
    systems = [BenchSystem(FULL, RECEIVER, None),
               BenchSystem(REUSE, plan_system(LayerPlan.full_reuse(num_layers)), None)]
    systems += [BenchSystem(f"0:{k}", plan_system(LayerPlan(num_layers, ((0, k),))), None)
                for k in range(1, num_layers)]
    skipped = []
    for k in range(1, num_layers):
        tokens = cacheblend_tokens(receiver, k, context_len)
        if tokens is None:
            skipped.append(f"{blend_plan_name(k, num_layers)} (cacheblend:{k}) at {context_len} tokens: the budget "
                           f"of {k} layers does not cover CacheBlend's selection pass")
        else:
            systems.append(BenchSystem(blend_plan_name(k, num_layers), cacheblend_system(k), tokens))
    return systems, skipped


def token_ids(vocab_size: int, context_len: int, query_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(context, query): seeded ids in [1, vocab_size), the same for every system."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (context_len + query_len,), generator=generator)
    return ids[:context_len], ids[context_len:]


def sender_cache_for(sender: ReferenceModel, systems: list[BenchSystem], context: torch.Tensor) -> SenderCache:
    """The sender's prefill with E at every layer a plan recomputes from (none for [0, k))."""
    e_layers = sorted({l for s in systems if s.system.plan is not None for l in s.system.plan.e_layers()})
    return sender.prefill(context, e_layers=e_layers)


def time_system(receiver: ReferenceModel, system: System, context: torch.Tensor, query: torch.Tensor,
                sender_cache: SenderCache) -> Timed:
    """One receiver-side prefill of context + query under ``system`` (first token only)."""
    gc.collect()
    start = time.perf_counter()
    prefix = system_prefix_kv(receiver, system, context, sender_cache)
    middle = time.perf_counter()
    receiver.generate(prefix, query, 1)
    end = time.perf_counter()
    return Timed((middle - start) * 1e3, (end - middle) * 1e3)


def measure_length(sender: ReferenceModel, receiver: ReferenceModel, context_len: int, query_len: int,
                   repeats: int, warmup: int, seed: int) -> LengthRun:
    """Samples (bench-prefill format plus system, prefix_ms, first_token_ms, recompute_tokens)
    of every system at one context length."""
    systems, skipped = bench_systems(receiver, context_len)
    context, query = token_ids(receiver.config.vocab_size, context_len, query_len, seed)
    sender_cache = sender_cache_for(sender, systems, context)
    samples, order = [], random.Random(seed)
    for round_index in range(warmup + repeats):
        for s in order.sample(systems, len(systems)):
            timed = time_system(receiver, s.system, context, query, sender_cache)
            if round_index >= warmup:
                samples.append({"repeat": round_index - warmup, "length": context_len, "plan": s.plan,
                                "system": s.system.key, "ttft_ms": timed.ttft_ms, "prefix_ms": timed.prefix_ms,
                                "first_token_ms": timed.first_token_ms, "recompute_tokens": s.recompute_tokens})
    return LengthRun(samples, [s.plan for s in systems], skipped)
