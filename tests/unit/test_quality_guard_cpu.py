"""The live quality guard inside the receiver (tests/unit/two_servers.py: real pools, tree, ZMQ,
imports over SGLang's own Req and RadixCache.cache_finished_req).

The pair's profile promises agreement 0.98 for its plan [1, 3). Shadow requests go to a local
HTTP server (shadow_server.py) standing in for the receiver's own /generate, since SGLang
cannot serve on a CPU: "lying" answers agree with every second reused output token (live
agreement 0.5), "honest" with all of them.
"""

from __future__ import annotations

import random
from array import array

import pytest
import torch

from cpu_sglang import require_cpu_sglang

require_cpu_sglang()

from sglang.srt.managers.schedule_batch import FINISH_ABORT, FINISH_LENGTH, Req  # noqa: E402
from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams  # noqa: E402
from sglang.srt.mem_cache.radix_cache import RadixKey  # noqa: E402
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402

from shadow_server import shadow_server  # noqa: E402
from sglang_droidspeak.identity import fingerprint_from_config  # noqa: E402
from sglang_droidspeak.plan import FrontierPoint, LayerPlan, ModelRef, Profile, save_profile  # noqa: E402
from sglang_droidspeak.sglang.response_info import response_info  # noqa: E402
from sglang_droidspeak.sglang.quality_guard import (GUARD_REASON, QualityGuard, ShadowEndpoint,  # noqa: E402
                                                   profile_bound)
from two_servers import (CountingMetrics, NUM_LAYERS, announce_and_wait, import_and_match, leak_free,  # noqa: E402
                         tiny_pair_models, two_servers)

CONTEXT = list(range(20, 52))  # 32 tokens
SUFFIX = [3, 4]
OUTPUT = [9, 10, 11, 12]
PLAN = LayerPlan.contiguous(NUM_LAYERS, 1, 3)
MIN_CHECKS = 3


class GuardCounting(CountingMetrics):
    def __init__(self):
        super().__init__()
        self.guard_checks, self.guard_trips, self.guard_agreements = [], [], []

    def record_guard_check(self, sender, outcome):
        self.guard_checks.append((sender, outcome))

    def record_guard_trip(self, sender):
        self.guard_trips.append(sender)

    def observe_guard_agreement(self, sender, agreement):
        self.guard_agreements.append((sender, agreement))


def receiver_settings(tmp_path):
    fp = fingerprint_from_config({"num_hidden_layers": NUM_LAYERS, "hidden_size": 64, "num_attention_heads": 4,
                                  "num_key_value_heads": 2, "vocab_size": 128, "model_type": "llama",
                                  "architectures": ["LlamaForCausalLM"]}, '{"model": {}}')
    save_profile(Profile(ModelRef("coder-a", fp), ModelRef("coder-b", fp), NUM_LAYERS, "lcc", "agreement", 1.0,
                         0.5, (FrontierPoint(PLAN, 0.98, 0.02),)), tmp_path / "coder-a__coder-b.yaml")
    return {"profiles_dir": str(tmp_path), "max_quality_drop": 0.05, "guard_fraction": 1.0,
            "guard_window": 8, "guard_min_checks": MIN_CHECKS, "guard_margin": 0.1}


def guard_on(b, url):
    b.metrics = b.runtime.metrics = GuardCounting()
    settings = b.runtime.settings
    guard = QualityGuard(settings, "coder-b", b.metrics, ShadowEndpoint(url), profile_bound(settings, "coder-b"),
                         rng=random.Random(0))
    b.runtime.set_guard(guard)
    return guard


def greedy(tokens, **sampling):
    return Req(f"g-{random.random()}", "", array("q", tokens),
               SamplingParams(max_new_tokens=len(OUTPUT), temperature=0.0, **sampling))


def serve(side, req, finish=FINISH_LENGTH(len(OUTPUT))):
    """SGLang's lifecycle on the tree (test_cross_model_cpu.run_request): match (+ import), lock,
    slots for the rest, 'decode' OUTPUT, then SGLang's cache_finished_req on our tree."""
    match = import_and_match(side, req)
    req.req_pool_idx, req.output_ids, req.priority = None, array("q"), 0
    req.inflight_middle_chunks, req.kv_committed_len = 0, 0
    side.tree.inc_lock_ref(match.last_device_node)
    req.last_node, req.prefix_indices, req.cache_protected_len = (
        match.last_device_node, match.device_indices, len(match.device_indices))
    pool = side.tree.req_to_token_pool
    pool.alloc([req])
    total = len(req.origin_input_ids) + len(OUTPUT)
    new_slots = side.allocator.alloc(total - len(match.device_indices))
    pool.write((req.req_pool_idx, slice(0, total)), torch.cat([match.device_indices, new_slots]).to(torch.int32))
    req.output_ids = array("q", OUTPUT)
    req.finished_reason = finish
    side.tree.cache_finished_req(req, kv_len_to_handle=total - 1)
    side.allocator.free(new_slots[-1:])  # the last token's KV is never computed
    pool.free(req)
    return match


@pytest.fixture
def pair():
    return tiny_pair_models(same=True)


def test_a_lying_profile_trips_the_guard_and_the_pair_prefills_normally(tmp_path, pair, caplog):
    with shadow_server("lying") as server, two_servers(*pair, receiver_settings(tmp_path)) as (a, b):
        guard = guard_on(b, server.url)
        announce_and_wait(a, b, CONTEXT)
        for i in range(MIN_CHECKS):
            req = greedy(CONTEXT + SUFFIX)
            match = serve(b, req)
            # served over foreign KV: the import's 32 tokens, then the derived prefix the first
            # request's cache_finished_req extended (SGLang matches at most input_len - 1)
            assert len(match.device_indices) == len(CONTEXT) + (i > 0)
            assert b.tree.tag_of(match.last_device_node).plan == str(PLAN)
            with caplog.at_level("WARNING"):
                guard.drain()
            assert guard.blocks("coder-a") == (i == MIN_CHECKS - 1)
        # the first request imported (REMOTE), the next two adopted the derived KV
        assert [h[0] for h in b.metrics.hits] == ["remote", "derived", "derived"]
        assert b.metrics.guard_checks == [("coder-a", "checked")] * MIN_CHECKS
        assert b.metrics.guard_agreements == [("coder-a", 0.5)] * MIN_CHECKS
        assert b.metrics.guard_trips == ["coder-a"]
        assert "quality guard tripped for coder-a -> coder-b: live agreement 0.500 over the last 3 checks, " \
               "below the profile's bound 0.980 - margin 0.100" in caplog.text
        body = dict(server.bodies[0])
        del body["rid"]
        assert body == {"input_ids": CONTEXT + SUFFIX + OUTPUT,
                        "sampling_params": {"max_new_tokens": 1, "temperature": 0.0,
                                            "custom_params": {"droidspeak_plan": "off"}},
                        "return_logprob": True, "logprob_start_len": len(CONTEXT + SUFFIX) - 1,
                        "top_logprobs_num": 1}
        # tripped: neither the derived KV nor the remote prefix is used any more
        after = greedy(CONTEXT + SUFFIX)
        match = serve(b, after)
        assert len(match.device_indices) == 0 and after.extra_key is None
        # counted once per request (SGLang matches a waiting request again), and told in meta_info
        b.tree.match_prefix(MatchPrefixParams(key=RadixKey(after.origin_input_ids), req=after))
        assert response_info(after) == {"droidspeak_system": "full_prefill", "droidspeak_plan": "none",
                                        "droidspeak_reason": "quality_guard"}
        other = greedy([t + 40 for t in CONTEXT] + SUFFIX)
        announce_and_wait(a, b, other.origin_input_ids[:len(CONTEXT)])
        assert len(serve(b, other).device_indices) == 0
        assert b.metrics.fallbacks == ["quality_guard"] * 2  # the derived prefix, then the remote one
        assert a.runtime.export_server.num_served == 1  # not even tried
        # a hit found just before the trip (the tree's lookup raced it): the plan choice refuses it
        b.runtime.guard_blocks = lambda sender: False
        raced = greedy([t + 60 for t in CONTEXT] + SUFFIX)
        announce_and_wait(a, b, raced.origin_input_ids[:len(CONTEXT)])
        assert len(serve(b, raced).device_indices) == 0
        assert b.metrics.fallbacks == ["quality_guard"] * 3 and a.runtime.export_server.num_served == 1
        del b.runtime.guard_blocks
        choice = b.runtime.chooser.choose("coder-a", PLAN, False, len(CONTEXT), 2, 0)
        assert (choice.plan, choice.reason) == (None, GUARD_REASON)
        # a request that forces its plan is the client's choice: still served over foreign KV
        forced = greedy(CONTEXT + SUFFIX, custom_params={"droidspeak_plan": "1:3"})
        assert len(serve(b, forced).device_indices) == len(CONTEXT) + 1
        guard.drain()
        assert len(server.bodies) == MIN_CHECKS  # nothing checked after the trip, nor forced requests
        assert leak_free(b)


def test_an_honest_profile_keeps_the_pair(tmp_path, pair):
    with shadow_server("honest") as server, two_servers(*pair, receiver_settings(tmp_path)) as (a, b):
        guard = guard_on(b, server.url)
        announce_and_wait(a, b, CONTEXT)
        for i in range(MIN_CHECKS + 2):
            assert len(serve(b, greedy(CONTEXT + SUFFIX)).device_indices) == len(CONTEXT) + (i > 0)
            guard.drain()
        assert b.metrics.guard_agreements == [("coder-a", 1.0)] * (MIN_CHECKS + 2)
        assert b.metrics.guard_trips == [] and not guard.blocks("coder-a")
        assert b.runtime.chooser.choose("coder-a", PLAN, False, len(CONTEXT), 2, 0).plan == PLAN
        assert leak_free(b)


def test_sampled_aborted_and_native_requests_are_not_checked(tmp_path, pair):
    with shadow_server("lying") as server, two_servers(*pair, receiver_settings(tmp_path)) as (a, b):
        guard = guard_on(b, server.url)
        announce_and_wait(a, b, CONTEXT)
        sampled = Req("s", "", array("q", CONTEXT + SUFFIX), SamplingParams(max_new_tokens=4, temperature=0.7))
        assert len(serve(b, sampled).device_indices) == len(CONTEXT)
        assert len(serve(b, greedy(CONTEXT + SUFFIX), FINISH_ABORT()).device_indices) == len(CONTEXT) + 1
        assert len(serve(b, greedy(CONTEXT + SUFFIX, custom_params={"droidspeak_plan": "off"})).device_indices) == 0
        guard.drain()
        assert server.bodies == [] and b.metrics.guard_checks == []
        assert leak_free(b)
