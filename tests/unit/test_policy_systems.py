"""The latency model of a BlendPlan and the policy's choice among systems.

Setup as test_policy.py: L = 4, n = 8, m = 2, 0.25 ms per layer-token, 1 ms fixed, KV
62500 B per layer-token (every layer's K/V of 8 tokens: 2 ms on the 1e6 B/ms link),
full prefill 11 ms. BlendPlans (t = round(R * n) tokens, S = select layer):

    plan            t  select ms  recompute ms  suffix  compute  transfer  pipelined  serial
    blend:0@1       0  0          0             2       2        2         5          5
    blend:0.25@1    2  2          2             2       6        2         7          9
    blend:0.5@2     4  4          4             2       10       2         11         13
    blend:1@1       8  0          8             2       10       2         13         13

The DroidSpeak frontier (test_policy.FRONTIER): P0..P4 = [0, k) for k = 0..4, drops
0.625, 0.375, 0.25, 0.125, 0; compute 2, 4, 6, 8, 10 ms; pipelined totals 5, 5, 7, 9, 11.
"""

import pytest

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.latency import LatencyEstimate, LatencyModelError
from sglang_droidspeak.plan.layer_plan import LayerGroup
from sglang_droidspeak.plan.policy import (
    FULL_PREFILL_FASTER, HYBRID_NOT_SERVED, IDLE_MOST, QUEUED_FEWEST, SLO_UNREACHABLE, Decision, choose_plan, servable,
)
from sglang_droidspeak.plan.profile import FrontierPoint
from sglang_droidspeak.plan.system_points import HybridPlan
from test_policy import FRONTIER, L, M, N, _choose, _model

CB1 = BlendPlan(L, 0.25, 1)  # budget 1 layer


def _cb(plan, drop):
    return FrontierPoint(plan, 0.875 - drop, drop)


@pytest.mark.parametrize("plan, pipelined, serial", [
    (BlendPlan(L, 0.0), LatencyEstimate(2.0, 2.0, 5.0), 5.0),
    (CB1, LatencyEstimate(6.0, 2.0, 7.0), 9.0),
    (BlendPlan(L, 0.5, 2), LatencyEstimate(10.0, 2.0, 11.0), 13.0),
    (BlendPlan(L, 1.0), LatencyEstimate(10.0, 2.0, 13.0), 13.0),
])
def test_blend_prediction_table(plan, pipelined, serial):
    assert _model().predict(plan, N, M, L) == pipelined
    assert _model(pipelined=False).predict(plan, N, M, L) == LatencyEstimate(*pipelined[:2], serial)


def test_blend_transfer_is_every_layers_kv_and_no_e():
    # a slower link: 2 Gbit/s -> 8 ms of K/V; the 2 ms selection hides under it, the recompute does not
    assert _model(link_gbps=2.0).predict(CB1, N, M, L) == LatencyEstimate(6.0, 8.0, 1 + 8 + 2 + 2)
    with pytest.raises(LatencyModelError, match="num_layers"):
        _model().predict(BlendPlan(8, 0.25), N, M, L)
    with pytest.raises(LatencyModelError, match="field 'plan' must be a LayerPlan or a BlendPlan"):
        _model().predict(HybridPlan(L, LayerGroup(0, 1), 1), N, M, L)


def test_idle_serves_cacheblend_when_it_is_better_within_the_slo():
    # within SLO 8: P1 (drop .375), P2 (.25), CB1 (.125, 7 ms) -> CB1
    d = _choose(frontier=FRONTIER + (_cb(CB1, 0.125),), queue_len=0, slo=8.0)
    assert d == Decision(CB1, IDLE_MOST, LatencyEstimate(6.0, 2.0, 7.0))


@pytest.mark.parametrize("drop", [0.25, 0.3])
def test_idle_keeps_droidspeak_when_cacheblend_is_not_better(drop):
    # equal drop (0.25 = P2's): the tie goes to DroidSpeak; a worse drop loses outright
    d = _choose(frontier=FRONTIER + (_cb(CB1, drop),), queue_len=0, slo=8.0)
    assert d == Decision(FRONTIER[2].plan, IDLE_MOST, LatencyEstimate(6.0, 1.0, 7.0))


def test_idle_cacheblend_over_the_slo_is_not_served():
    d = _choose(frontier=FRONTIER + (_cb(CB1, 0.125),), queue_len=0, slo=6.0)
    assert d[:2] == (FRONTIER[1].plan, IDLE_MOST)


def test_queued_serves_cacheblend_when_it_is_the_cheapest_within_the_bound():
    # bound 0.125: DroidSpeak needs [0, 3) (8 ms of compute); CacheBlend meets it with 6 ms
    d = _choose(frontier=FRONTIER + (_cb(CB1, 0.125),), queue_len=2, slo=10.0, max_drop=0.125)
    assert d == Decision(CB1, QUEUED_FEWEST, LatencyEstimate(6.0, 2.0, 7.0))


def test_queued_keeps_the_cheaper_droidspeak_point_even_at_worse_quality():
    d = _choose(frontier=FRONTIER + (_cb(CB1, 0.125),), queue_len=2, slo=10.0)
    assert d == Decision(FRONTIER[1].plan, QUEUED_FEWEST, LatencyEstimate(4.0, 1.5, 5.0))


def test_queued_tie_in_compute_and_drop_goes_to_droidspeak():
    blend0 = BlendPlan(L, 0.0)  # compute 2 ms = P0's, drop 0.625 = P0's
    d = _choose(frontier=(_cb(blend0, 0.625),) + FRONTIER, queue_len=1, slo=10.0, max_drop=0.625)
    assert d == Decision(FRONTIER[0].plan, QUEUED_FEWEST, LatencyEstimate(2.0, 2.0, 5.0))


def test_slo_unreachable_takes_the_cheapest_compute_across_systems():
    d = _choose(frontier=(FRONTIER[3], _cb(CB1, 0.125)), queue_len=0, slo=4.0, max_drop=0.125)
    assert d == Decision(CB1, SLO_UNREACHABLE, LatencyEstimate(6.0, 2.0, 7.0))


def test_blend_that_recomputes_every_token_is_a_normal_prefill():
    # blend:1 predicts 13 ms > 11 ms full prefill: dropped, nothing else is left
    d = _choose(frontier=(_cb(BlendPlan(L, 1.0), 0.0),), slo=100.0)
    assert d == Decision(None, FULL_PREFILL_FASTER, LatencyEstimate(10.0, 0.0, 11.0))


def test_a_slow_link_drops_cacheblend_before_droidspeak():
    # 0.5 Gbit/s: CB1 = 1 + max(2, 32) + 2 + 2 = 37 ms > 11 ms; P3 = 1 + max(6, 8) + 2 = 11 ms is kept
    d = _choose(frontier=(FRONTIER[3], _cb(CB1, 0.0)), model=_model(link_gbps=0.5), slo=100.0, queue_len=0)
    assert d == Decision(FRONTIER[3].plan, IDLE_MOST, LatencyEstimate(8.0, 8.0, 11.0))


def test_hybrid_points_are_skipped_with_a_named_reason():
    hybrid = _cb(HybridPlan(L, LayerGroup(0, 1), 1), 0.0)  # the best point, and cheap: never served
    assert servable(FRONTIER + (hybrid,)) == (FRONTIER, ((hybrid, HYBRID_NOT_SERVED),))
    d = choose_plan(FRONTIER[1:3] + (hybrid,), queue_len=0, latency_model=_model(), slo_ttft_ms=8.0,
                    max_quality_drop=1.0, prefix_len=N, suffix_len=M, num_layers=L)
    assert d[:2] == (FRONTIER[2].plan, IDLE_MOST)
