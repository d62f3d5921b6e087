"""Which plans the profiler scores, and the Pareto frontier over them.

Candidates for num_layers = L and granularity g (bounds on multiples of g, or L):

    kind          plans                                         count (L=8, g=1)
    ------------  --------------------------------------------  ----------------
    baselines     full reuse (), full prefill [0, L)             2
    sensitivity   reuse only layer l: [0, l) + [l+1, L)          L        = 8
    contiguous    every [s, e), s < e, s, e on the grid          L(L+1)/2 = 36

The frontier keeps, in order of num_recomputed_layers, each plan that scores strictly
better than every plan with fewer recomputed layers. With validation examples
(``validated_frontier``) the plans it kept are scored again on those, and the same rule
is applied to those scores alone: no plan is picked on the validation set, some drop out.
"""

from __future__ import annotations

from typing import Iterable, Mapping, NamedTuple

from sglang_droidspeak.plan import LayerPlan


class ScoredPlan(NamedTuple):
    plan: LayerPlan
    quality: float


def sensitivity_plans(num_layers: int) -> list[LayerPlan]:
    """Plan l reuses only layer l and recomputes every other layer."""
    plans = []
    for l in range(num_layers):
        groups = tuple(g for g in ((0, l), (l + 1, num_layers)) if g[0] < g[1])
        plans.append(LayerPlan(num_layers, groups))
    return plans


def contiguous_plans(num_layers: int, granularity: int = 1) -> list[LayerPlan]:
    if granularity not in (1, 2):
        raise ValueError(f"granularity must be 1 or 2, got {granularity}")
    grid = sorted(set(range(0, num_layers, granularity)) | {num_layers})
    return [LayerPlan.contiguous(num_layers, s, e) for i, s in enumerate(grid) for e in grid[i + 1:]]


def candidate_plans(num_layers: int, granularity: int = 1) -> list[LayerPlan]:
    """Every plan the profiler scores, baselines first, without duplicates."""
    plans = [LayerPlan.full_reuse(num_layers), LayerPlan.full_prefill(num_layers)]
    plans += sensitivity_plans(num_layers) + contiguous_plans(num_layers, granularity)
    return list(dict.fromkeys(plans))


def pareto_frontier(scored: Iterable[ScoredPlan], contiguous_only: bool = True) -> list[ScoredPlan]:
    """Best plan per layer count, kept only if it beats every cheaper kept plan.

    Ties at one layer count go to the plan listed first. With ``contiguous_only`` the
    multi-group sensitivity plans are left out (they cost extra E transfers).
    """
    best: dict[int, ScoredPlan] = {}
    for item in scored:
        if contiguous_only and len(item.plan.groups) > 1:
            continue
        k = item.plan.num_recomputed_layers
        if k not in best or item.quality > best[k].quality:
            best[k] = item
    frontier: list[ScoredPlan] = []
    for k in sorted(best):
        if not frontier or best[k].quality > frontier[-1].quality:
            frontier.append(best[k])
    return frontier


def validated_frontier(selected: Iterable[ScoredPlan], validation: Mapping[LayerPlan, float]) -> list[ScoredPlan]:
    """The frontier over the ``selected`` frontier's plans scored on the validation examples.

    Rule: keep, in order of num_recomputed_layers, each selected plan whose validation score
    is strictly higher than that of every kept plan with fewer recomputed layers (the
    selection rule, on validation scores). Full reuse, the cheapest, always stays; a plan
    whose validation score does not beat a cheaper one's is dropped, never replaced by
    another plan of its size (that would be a max over noisy estimates again).
    """
    return pareto_frontier(ScoredPlan(s.plan, validation[s.plan]) for s in selected)


def sensitivity_drops(scores: Mapping[LayerPlan, float], num_layers: int) -> list[float]:
    """Quality lost by reusing only layer l, relative to full prefill."""
    full = scores[LayerPlan.full_prefill(num_layers)]
    return [full - scores[p] for p in sensitivity_plans(num_layers)]
