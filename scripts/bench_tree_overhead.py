"""CPU cost the droidspeak radix cache adds per request, against SGLang's own RadixCache.

    python3 scripts/bench_tree_overhead.py [--num-requests 2000] [--prompt-len 1024]

The GPU no-overhead benchmark (scripts/gpu/overhead.sh) cannot resolve 2%: its rounds
spread by about 20% on the lent H200. This measures the part of a request the plugin
changes, on SGLang 0.5.17's real tree, KV pool and allocator (CPU): the scheduler's
match_prefix + lock, and cache_finished_req, for requests that share 3/4 of their prompt
with an earlier one, with no cross-model traffic (the plugin's "no roles" server).
Prints microseconds per request for stock and plugin, alternating 5 rounds each.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from array import array
from types import SimpleNamespace

from sglang_droidspeak.sglang.cpu_import import prepare_cpu_sglang

prepare_cpu_sglang()

import torch  # noqa: E402
from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator  # noqa: E402
from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.cache_init_params import CacheInitParams  # noqa: E402
from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey  # noqa: E402

from sglang_droidspeak.sglang.radix_cache import DroidSpeakRadixCache  # noqa: E402


def make_tree(plugin: bool, pool_size: int, max_len: int):
    kv_pool = MHATokenToKVPool(size=pool_size, page_size=1, dtype=torch.float16, head_num=1, head_dim=1,
                               layer_num=1, device="cpu", enable_memory_saver=False)
    allocator = TokenToKVPoolAllocator(pool_size, torch.float16, "cpu", kv_pool, need_sort=False)
    req_pool = ReqToTokenPool(size=4, max_context_len=max_len, device="cpu", enable_memory_saver=False)
    params = CacheInitParams(False, req_pool, allocator, 1)
    tree = DroidSpeakRadixCache(params, model="m", plan_lookup=lambda s, r: None) if plugin else RadixCache(params)
    return tree, allocator, req_pool


def serve(tree, allocator, req_pool, tokens: list[int]) -> None:
    """What the scheduler does around one request: match + lock, allocate, then cache it."""
    req = SimpleNamespace(origin_input_ids=array("q", tokens), output_ids=array("q"), extra_key=None,
                          req_pool_idx=None, inflight_middle_chunks=0, kv_committed_len=0, priority=0,
                          sampling_params=SimpleNamespace(custom_params=None), rid="r")
    match = tree.match_prefix(MatchPrefixParams(key=RadixKey(req.origin_input_ids, None), req=req))
    tree.inc_lock_ref(match.last_device_node)
    req.last_node, req.prefix_indices = match.last_device_node, match.device_indices
    req.cache_protected_len = len(match.device_indices)
    req_pool.alloc([req])
    new_slots = allocator.alloc(len(tokens) - len(match.device_indices))
    req_pool.write((req.req_pool_idx, slice(0, len(tokens))), torch.cat([match.device_indices, new_slots]).int())
    tree.cache_finished_req(req, kv_len_to_handle=len(tokens))
    req_pool.free(req)


def workload(num_requests: int, prompt_len: int, seed: int) -> list[list[int]]:
    rng, prompts = random.Random(seed), []
    for i in range(num_requests):
        shared = prompts[rng.randrange(i)][: 3 * prompt_len // 4] if i else []
        prompts.append(shared + [rng.randrange(2048) for _ in range(prompt_len - len(shared))])
    return prompts


def time_round(plugin: bool, prompts: list[list[int]]) -> float:
    tree, allocator, req_pool = make_tree(plugin, pool_size=sum(map(len, prompts)) + 1, max_len=len(prompts[0]))
    start = time.perf_counter()
    for tokens in prompts:
        serve(tree, allocator, req_pool, tokens)
    return 1e6 * (time.perf_counter() - start) / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=2000)
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = workload(args.num_requests, args.prompt_len, seed=0)
    times = {"stock": [], "plugin": []}
    for _ in range(args.rounds):
        for name in times:
            times[name].append(time_round(name == "plugin", prompts))
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name:>6}: median {med[name]:8.1f} us/request  rounds {[round(x, 1) for x in t]}")
    print(f"plugin - stock: {med['plugin'] - med['stock']:+.1f} us/request ({med['plugin'] / med['stock'] - 1:+.1%})")


if __name__ == "__main__":
    main()
