"""Validation examples: the profile's points scored again on examples that chose none of them.

The frontier keeps, per layer count, the best of many candidate plans on the selection
examples, so each of its qualities is a maximum over noisy estimates (a winner's curse).
With ``ProfileConfig.validate_examples`` = v > 0 the profiler scores exactly what it chose
(the frontier, full reuse among it, the CacheBlend-style points) and the receiver again on
v other examples; the profile then records those qualities (``quality``, ``quality_drop``,
``receiver_quality``, ``full_reuse_quality``: all on one set), each point's selection score
as ``selection_quality``, and ``search.validated_frontier`` decides which points stay.

    set         examples of build_task(seed=config.seed), in its order
    selection   the first num_examples (the same as without validation)
    validation  the next validate_examples whose prompt no selection example has
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence

from sglang_droidspeak.plan import FrontierPoint
from sglang_droidspeak.plan.profile import Validation
from sglang_droidspeak.plan.profile_systems import points_from_scores
from sglang_droidspeak.profiler.search import ScoredPlan, validated_frontier
from sglang_droidspeak.profiler.systems import RECEIVER, System, plan_system
from sglang_droidspeak.tasks import TaskExample, build_task

Score = Callable[[list[System]], Mapping[str, float]]  # systems -> mean metric by system key


class Measured(NamedTuple):
    """What a profile records, as mean scores on one example set."""

    examples: int
    receiver: float
    frontier: list[ScoredPlan]  # full reuse first
    systems: dict[str, float]  # "cacheblend:<k>" -> quality

    @property
    def full_reuse(self) -> float:
        return self.frontier[0].quality


def example_sets(build: Callable[[int], list[TaskExample]], num_examples: int,
                 validate_examples: int) -> tuple[list[TaskExample], list[TaskExample]]:
    """(selection, validation) from ``build(n)``, whose first examples do not depend on n
    (build_task): the first ``num_examples``, then the next ``validate_examples`` whose prompt
    no selection example has (built further while some are skipped)."""
    total = num_examples + validate_examples
    while True:
        examples = build(total)
        selection = examples[:num_examples]
        taken = {e.prompt_ids for e in selection}
        validation = [e for e in examples[num_examples:] if e.prompt_ids not in taken]
        if len(validation) >= validate_examples:
            return selection, validation[:validate_examples]
        total += validate_examples - len(validation)


def task_example_sets(config: Any, tokenizer: Any, corpus: Any) -> tuple[list[TaskExample], list[TaskExample]]:
    """``example_sets`` of a ProfileConfig's task, split and seed."""
    def build(n: int) -> list[TaskExample]:
        return build_task(config.dataset, tokenizer, split=config.split, num_examples=n,
                          context_len=config.context_len, query_len=config.query_len, seed=config.seed, corpus=corpus)

    return example_sets(build, config.num_examples, config.validate_examples)


def checked_validation(selection: Sequence[TaskExample], validation: Sequence[TaskExample] | None,
                       validate_examples: int) -> list[TaskExample]:
    """``validation`` (None = none) if it has ``validate_examples`` examples, none sharing a
    prompt with ``selection``; else ValueError naming the field."""
    validation = list(validation or [])
    if len(validation) != validate_examples:
        raise ValueError(f"validation_examples: {len(validation)} given, validate_examples is {validate_examples}")
    shared = {e.prompt_ids for e in selection} & {e.prompt_ids for e in validation}
    if shared:
        raise ValueError(f"validation_examples: {len(shared)} share a prompt with the selection examples")
    return validation


def validate(selected: Measured, blends: list[System], validation_examples: int,
             score: Score) -> tuple[Measured, dict[str, float]]:
    """The receiver and ``selected``'s points (``blends``: its CacheBlend-style systems) scored
    by ``score`` on the validation examples: (the validated Measured, every mean by key)."""
    means = dict(score([RECEIVER] + [plan_system(s.plan) for s in selected.frontier] + blends))
    plans = {s.plan: means[plan_system(s.plan).key] for s in selected.frontier}
    frontier = validated_frontier(selected.frontier, plans)
    return Measured(validation_examples, means[RECEIVER.key], frontier, {b.key: means[b.key] for b in blends}), means


def profile_fields(selected: Measured, validated: Measured | None, seed: int, num_layers: int) -> dict[str, Any]:
    """Profile's measured fields: ``selected``'s, or ``validated``'s with the selection scores
    kept beside them (``selection_quality``, ``Validation``)."""
    final = validated or selected
    chosen = {s.plan: s.quality for s in selected.frontier} if validated else {}
    rq = final.receiver
    validation = None if validated is None else Validation(
        validated.examples, seed, selected.examples, selected.receiver, selected.full_reuse)
    return dict(
        receiver_quality=rq, full_reuse_quality=final.full_reuse, validation=validation,
        frontier=tuple(FrontierPoint(s.plan, s.quality, rq - s.quality, chosen.get(s.plan)) for s in final.frontier),
        systems=points_from_scores(final.systems, rq, num_layers, selected.systems if validated else None),
    )
