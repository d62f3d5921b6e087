"""Candidate plans and the Pareto frontier (pure logic, exact values)."""

from sglang_droidspeak.plan import LayerPlan
from sglang_droidspeak.profiler.search import (
    ScoredPlan, candidate_plans, contiguous_plans, pareto_frontier, sensitivity_drops, sensitivity_plans,
    validated_frontier,
)


def test_contiguous_counts_and_grid():
    assert len(contiguous_plans(8, 1)) == 36
    plans = contiguous_plans(5, 2)  # grid 0, 2, 4, 5
    assert [p.to_list() for p in plans] == [[[0, 2]], [[0, 4]], [[0, 5]], [[2, 4]], [[2, 5]], [[4, 5]]]


def test_sensitivity_plans_reuse_exactly_one_layer():
    plans = sensitivity_plans(4)
    assert [p.reused_layers() for p in plans] == [(0,), (1,), (2,), (3,)]
    assert plans[1].to_list() == [[0, 1], [2, 4]] and plans[1].e_layers() == (2,)


def test_candidates_unique_with_baselines_first():
    plans = candidate_plans(8)
    assert plans[0].is_full_reuse and plans[1].is_full_prefill
    assert len(plans) == len(set(plans)) == 2 + 8 + 36 - 3  # [1,8), [0,7), [0,8) appear twice


def test_frontier_keeps_strict_improvements_only():
    L = 4
    scored = [
        ScoredPlan(LayerPlan.full_reuse(L), 0.30),
        ScoredPlan(LayerPlan.contiguous(L, 1, 2), 0.50),
        ScoredPlan(LayerPlan.contiguous(L, 0, 1), 0.45),
        ScoredPlan(LayerPlan.contiguous(L, 0, 2), 0.48),  # worse than a 1-layer plan: dropped
        ScoredPlan(LayerPlan(L, ((0, 1), (2, 3))), 0.90),  # two groups: not on the frontier
        ScoredPlan(LayerPlan.contiguous(L, 0, 3), 0.60),
        ScoredPlan(LayerPlan.full_prefill(L), 0.60),  # no strict gain over 3 layers: dropped
    ]
    frontier = pareto_frontier(scored)
    assert [(str(s.plan), s.quality) for s in frontier] == [("reuse-all", 0.30), ("[1, 2)", 0.50), ("[0, 3)", 0.60)]
    assert len(pareto_frontier(scored, contiguous_only=False)) == 3  # the 2-group plan wins at k=2
    assert str(pareto_frontier(scored, contiguous_only=False)[-1].plan) == "[0, 1)+[2, 3)"


def test_sensitivity_drops():
    L = 2
    scores = {LayerPlan.full_prefill(L): 1.0, LayerPlan.contiguous(L, 1, 2): 0.75, LayerPlan.contiguous(L, 0, 1): 0.5}
    assert sensitivity_drops(scores, L) == [0.25, 0.5]


def test_validated_frontier_drops_beaten_points_and_picks_nothing_new():
    L = 4
    reuse, g01, g12, g03, g13 = (LayerPlan.full_reuse(L), LayerPlan.contiguous(L, 0, 1), LayerPlan.contiguous(L, 1, 2),
                                 LayerPlan.contiguous(L, 0, 3), LayerPlan.contiguous(L, 1, 3))
    selected = [ScoredPlan(reuse, 0.5), ScoredPlan(g01, 0.75), ScoredPlan(g03, 0.875)]
    validation = {reuse: 0.5, g01: 0.375, g03: 0.625, g12: 0.9, g13: 0.95}  # g12, g13: never selected
    frontier = validated_frontier(selected, validation)
    assert frontier == [ScoredPlan(reuse, 0.5), ScoredPlan(g03, 0.625)]  # [0, 1) lost to full reuse
    assert validated_frontier(selected, {reuse: 0.5, g01: 0.75, g03: 0.875}) == selected
    tie = validated_frontier(selected, {reuse: 0.5, g01: 0.625, g03: 0.625})
    assert tie == [ScoredPlan(reuse, 0.5), ScoredPlan(g01, 0.625)]  # a tie is no gain
