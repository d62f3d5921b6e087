"""LayerPlan rules: contiguous disjoint groups inside [0, num_layers)."""

import pytest

from sglang_droidspeak.plan import LayerGroup, LayerPlan, PlanError


def test_two_groups():
    plan = LayerPlan(8, ((0, 2), (5, 7)))
    assert plan.recomputed_layers() == (0, 1, 5, 6)
    assert plan.reused_layers() == (2, 3, 4, 7)
    assert plan.e_layers() == (5,)
    assert plan.num_recomputed_layers == 4 and plan.recompute_fraction == 0.5
    assert [plan.is_recomputed(l) for l in range(8)] == [True, True, False, False, False, True, True, False]
    assert str(plan) == "[0, 2)+[5, 7)" and plan.to_list() == [[0, 2], [5, 7]]


def test_special_plans():
    assert LayerPlan.full_reuse(4).is_full_reuse and LayerPlan.full_reuse(4).e_layers() == ()
    full = LayerPlan.full_prefill(4)
    assert full.is_full_prefill and full.groups == (LayerGroup(0, 4),) and full.e_layers() == ()
    assert LayerPlan.contiguous(4, 1, 3).e_layers() == (1,)


@pytest.mark.parametrize("groups,msg", [
    (((0, 3), (2, 4)), r"groups\[1\].*overlaps"),
    (((2, 4), (0, 1)), r"groups\[1\].*precedes"),
    (((3, 3),), r"groups\[0\].*empty"),
    (((0, 9),), r"groups\[0\].*outside"),
    (((-1, 2),), r"groups\[0\].*outside"),
])
def test_bad_groups(groups, msg):
    with pytest.raises(PlanError, match=msg):
        LayerPlan(8, groups)


def test_bad_num_layers():
    with pytest.raises(PlanError, match="num_layers"):
        LayerPlan(0)
