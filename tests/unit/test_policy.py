"""Latency model (exact formula values, fit, dict validation) and the online plan policy.

Setup shared by most tests: L = 4 layers, prefix n = 8, suffix m = 2, 0.25 ms per
layer-token, 1 ms fixed, KV 62500 B per layer-token, E 125000 B per token, 8 Gbit/s
(= 1e6 B/ms). Full prefill: 1 + 0.25 * 4 * 10 = 11 ms. Pipelined totals of the frontier:

    point  groups   k  drop   quality  prefix ms  transfer ms   total
    P0     -        0  0.625  0.25     0          2.0           5
    P1     [0,1)    1  0.375  0.5      2          1.5           5
    P2     [0,2)    2  0.25   0.625    4          1.0           7
    P3     [0,3)    3  0.125  0.75     6          0.5           9
    P4     [0,4)    4  0.0    0.875    8          0             11
"""

import pytest
import yaml

from sglang_droidspeak.plan.latency import (
    LatencyEstimate,
    LatencyModelError,
    PrefillLatencyModel,
    fit_line,
)
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.plan.policy import (
    FULL_PREFILL_FASTER,
    IDLE_MOST,
    NO_PLAN,
    QUEUED_FEWEST,
    SLO_UNREACHABLE,
    Decision,
    PolicyError,
    choose_plan,
)
from sglang_droidspeak.plan.profile import FrontierPoint

L, N, M = 4, 8, 2
FRONTIER = tuple(FrontierPoint(LayerPlan.contiguous(L, 0, k) if k else LayerPlan.full_reuse(L), q, 0.875 - q)
                 for k, q in enumerate((0.25, 0.5, 0.625, 0.75, 0.875)))


def _model(**kw) -> PrefillLatencyModel:
    fields = {"ms_per_layer_token": 0.25, "ms_fixed": 1.0, "kv_bytes_per_layer_token": 62500,
              "e_bytes_per_token": 125000, "link_gbps": 8.0, "pipelined": True}
    return PrefillLatencyModel(**{**fields, **kw})


def _choose(frontier=FRONTIER, queue_len=1, slo=8.0, max_drop=0.375, model=None, **kw) -> Decision:
    return choose_plan(frontier, queue_len=queue_len, latency_model=model or _model(), slo_ttft_ms=slo,
                       max_quality_drop=max_drop, prefix_len=N, suffix_len=M, num_layers=L, **kw)


# ---- latency model -------------------------------------------------------------------

def test_predict_middle_group_pipelined_and_not():
    plan = LayerPlan.contiguous(L, 1, 3)  # k=2, reused {0, 3}, E_1 needed: 250000 B/token -> 2 ms
    assert _model().predict(plan, N, M, L) == LatencyEstimate(6.0, 2.0, 1 + max(4, 2) + 2)
    assert _model(pipelined=False).predict(plan, N, M, L) == LatencyEstimate(6.0, 2.0, 1 + 6 + 2)


def test_predict_transfer_bound_pipeline_takes_max():
    plan = LayerPlan.contiguous(L, 1, 2)  # k=1, reused 3, E_1: 312500 B/token * 8 / 1e6 = 2.5 ms
    assert _model().predict(plan, N, M, L) == LatencyEstimate(4.0, 2.5, 1 + 2.5 + 2)
    assert _model(pipelined=False).predict(plan, N, M, L).total_ms == 1 + 4 + 2.5


def test_predict_frontier_table_and_full_prefill():
    totals = [_model().predict(p.plan, N, M, L).total_ms for p in FRONTIER]
    assert totals == [5.0, 5.0, 7.0, 9.0, 11.0]
    assert _model().full_prefill(N, M, L) == LatencyEstimate(10.0, 0.0, 11.0)
    assert _model().full_prefill_ms(N, M, L) == 11.0


def test_link_gbps_is_gigabits():
    assert _model(link_gbps=1.0).transfer_ms(LayerPlan.full_reuse(L), 1) == 4 * 62500 / 125000


def test_predict_rejects_mismatched_layers_and_bad_lengths():
    with pytest.raises(LatencyModelError, match="num_layers"):
        _model().predict(LayerPlan.full_reuse(8), N, M, L)
    with pytest.raises(LatencyModelError, match="prefix_len"):
        _model().predict(LayerPlan.full_reuse(L), -1, M, L)


def test_fit_recovers_constants_exactly_and_keeps_link():
    samples = [(x, 0.25 * x + 1.0) for x in (0, 8, 16, 32)]
    fitted = _model(ms_per_layer_token=9.0, ms_fixed=9.0, link_gbps=3.0).fit(samples)
    assert (fitted.ms_per_layer_token, fitted.ms_fixed, fitted.link_gbps) == (0.25, 1.0, 3.0)


def test_fit_negative_intercept_goes_through_origin():
    slope, intercept = fit_line([(2, 2.0), (4, 6.0)])  # free fit: 2x - 2
    assert intercept == 0.0 and slope == pytest.approx(28 / 20)


@pytest.mark.parametrize("samples", [[(4, 1.0)], [(4, 1.0), (4, 2.0)], [(1, 5.0), (2, 3.0)]])
def test_fit_rejects_degenerate_samples(samples):
    with pytest.raises(LatencyModelError, match="samples"):
        fit_line(samples)


def test_fit_flat_samples_clamp_to_min_slope_only_when_asked():
    flat = [(100, 5.0), (200, 4.0), (300, 4.5)]  # fixed costs dominate: slope < 0
    assert fit_line(flat, min_slope=1e-6) == (1e-6, 4.5)
    with pytest.raises(LatencyModelError, match="samples"):
        fit_line(flat)
    assert fit_line([(2, 2.0), (4, 6.0)], min_slope=1e-6)[0] == pytest.approx(28 / 20)  # steep: untouched


def test_dict_round_trip_through_yaml():
    model = _model(pipelined=False)
    assert PrefillLatencyModel.from_dict(yaml.safe_load(yaml.safe_dump(model.to_dict()))) == model
    data = model.to_dict()
    del data["pipelined"]
    assert PrefillLatencyModel.from_dict(data).pipelined is True


@pytest.mark.parametrize("field, value, message", [
    ("link_gbps", 0, "field 'link_gbps' must be > 0"),
    ("ms_fixed", -1.0, "field 'ms_fixed' must be >= 0"),
    ("ms_per_layer_token", "fast", "field 'ms_per_layer_token' must be a number"),
    ("kv_bytes_per_layer_token", True, "field 'kv_bytes_per_layer_token' must be a number"),
    ("e_bytes_per_token", float("nan"), "field 'e_bytes_per_token' must be finite"),
    ("pipelined", "yes", "field 'pipelined' must be a bool"),
    ("bandwidth", 1.0, r"unknown field 'bandwidth'; known: ms_per_layer_token"),
])
def test_from_dict_names_bad_field(field, value, message):
    with pytest.raises(LatencyModelError, match=message):
        PrefillLatencyModel.from_dict({**_model().to_dict(), field: value})


def test_from_dict_missing_field_and_not_mapping():
    data = _model().to_dict()
    del data["e_bytes_per_token"]
    with pytest.raises(LatencyModelError, match="missing field 'e_bytes_per_token'"):
        PrefillLatencyModel.from_dict(data)
    with pytest.raises(LatencyModelError, match="mapping"):
        PrefillLatencyModel.from_dict([1, 2])


# ---- policy --------------------------------------------------------------------------

def test_queued_takes_fewest_layers_within_slo():
    d = _choose(queue_len=3, slo=8.0)
    assert d == Decision(FRONTIER[1].plan, QUEUED_FEWEST, LatencyEstimate(4.0, 1.5, 5.0))


def test_idle_takes_most_layers_within_slo():
    assert _choose(queue_len=0, slo=8.0)[:2] == (FRONTIER[2].plan, IDLE_MOST)
    assert _choose(queue_len=0, slo=9.0)[:2] == (FRONTIER[3].plan, IDLE_MOST)


def test_idle_choosing_full_prefill_point_returns_none():
    assert _choose(queue_len=0, slo=100.0) == Decision(None, IDLE_MOST, LatencyEstimate(10.0, 0.0, 11.0))


@pytest.mark.parametrize("queue_len", [0, 5])
def test_slo_unreachable_falls_back_to_fewest_layers(queue_len):
    d = _choose(queue_len=queue_len, slo=4.0)
    assert (d.plan, d.reason, d.predicted.total_ms) == (FRONTIER[1].plan, SLO_UNREACHABLE, 5.0)


def test_slow_link_full_prefill_faster():
    d = _choose(frontier=FRONTIER[:4], model=_model(link_gbps=0.25), slo=100.0)
    assert d == Decision(None, FULL_PREFILL_FASTER, LatencyEstimate(10.0, 0.0, 11.0))


@pytest.mark.parametrize("queue_len", [0, 3])
def test_slow_link_with_a_full_prefill_point_says_full_prefill_faster(queue_len):
    # seen on the H200 (2026-11-28): only the point recomputing every layer beat full prefill,
    # and the queued branch picked it under the label "queued: fewest layers"
    d = _choose(model=_model(link_gbps=0.25), slo=100.0, queue_len=queue_len)
    assert d == Decision(None, FULL_PREFILL_FASTER, LatencyEstimate(10.0, 0.0, 11.0))


def test_half_speed_link_drops_slow_points_even_when_queued():
    # 0.5 Gbit/s: P1 = 27 ms, P2 = 19 ms exceed the 11 ms full prefill; P3 = 1 + max(6, 8) + 2
    d = _choose(frontier=FRONTIER[:4], model=_model(link_gbps=0.5), slo=100.0, queue_len=2)
    assert d == Decision(FRONTIER[3].plan, QUEUED_FEWEST, LatencyEstimate(8.0, 8.0, 11.0))


def test_no_plan_within_quality_bound():
    assert _choose(max_drop=0.1, frontier=FRONTIER[:4]) == Decision(None, NO_PLAN, LatencyEstimate(10.0, 0.0, 11.0))
    assert _choose(frontier=()).reason == NO_PLAN
    assert _choose(accuracy_target=0.9).reason == NO_PLAN


def test_accuracy_target_filters_candidates():
    assert _choose(accuracy_target=0.625)[:2] == (FRONTIER[2].plan, QUEUED_FEWEST)


def test_full_quality_overrides_stored_drop():
    # drops against 1.0: P3 0.25, P2 0.375 -> only P3 and P4 within 0.25
    assert _choose(max_drop=0.25, slo=10.0, full_quality=1.0)[:2] == (FRONTIER[3].plan, QUEUED_FEWEST)
    assert _choose(max_drop=0.25, slo=10.0)[:2] == (FRONTIER[2].plan, QUEUED_FEWEST)


@pytest.mark.parametrize("kw, name", [
    ({"queue_len": -1}, "queue_len"), ({"slo": 0.0}, "slo_ttft_ms"), ({"max_drop": -0.1}, "max_quality_drop"),
    ({"frontier": (FrontierPoint(LayerPlan.full_reuse(8), 0.5, 0.1),)}, r"profile_frontier\[0\]"),
])
def test_choose_plan_rejects_bad_arguments(kw, name):
    with pytest.raises(PolicyError, match=name):
        _choose(**kw)
