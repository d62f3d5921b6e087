"""LayerPlan: which layers a receiver recomputes; every other layer reuses the sender's KV.

A plan is a sorted tuple of disjoint, non-empty, half-open groups [start, end) over
layers 0..num_layers-1. Example for num_layers = 8 and groups ((0, 2), (5, 7)):

    layer      0  1  2  3  4  5  6  7
    action     R  R  .  .  .  R  R  .      R = recompute, . = reuse sender KV
    E needed   -        -     E_5          a group starting at 0 uses the receiver's
                                           own embeddings; others need the sender's E_s

``groups == ()`` is full reuse; ``((0, num_layers),)`` is full prefill.
"""

from __future__ import annotations

from dataclasses import dataclass


class PlanError(ValueError):
    """A plan that breaks the rules above (names the offending field)."""


@dataclass(frozen=True, order=True)
class LayerGroup:
    start: int
    end: int

    @property
    def num_layers(self) -> int:
        return self.end - self.start

    def __str__(self) -> str:
        return f"[{self.start}, {self.end})"


@dataclass(frozen=True)
class LayerPlan:
    num_layers: int
    groups: tuple[LayerGroup, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.num_layers, int) or self.num_layers <= 0:
            raise PlanError(f"num_layers must be a positive int, got {self.num_layers!r}")
        groups = tuple(g if isinstance(g, LayerGroup) else LayerGroup(*g) for g in self.groups)
        object.__setattr__(self, "groups", groups)
        prev_end = 0
        for i, g in enumerate(groups):
            if not (isinstance(g.start, int) and isinstance(g.end, int)):
                raise PlanError(f"groups[{i}] bounds must be ints, got {g}")
            if not 0 <= g.start < g.end <= self.num_layers:
                raise PlanError(f"groups[{i}] = {g} is empty or outside [0, {self.num_layers})")
            if g.start < prev_end:
                raise PlanError(f"groups[{i}] = {g} overlaps or precedes the group before it")
            prev_end = g.end

    @classmethod
    def full_reuse(cls, num_layers: int) -> "LayerPlan":
        return cls(num_layers, ())

    @classmethod
    def full_prefill(cls, num_layers: int) -> "LayerPlan":
        return cls(num_layers, (LayerGroup(0, num_layers),))

    @classmethod
    def contiguous(cls, num_layers: int, start: int, end: int) -> "LayerPlan":
        return cls(num_layers, (LayerGroup(start, end),))

    @property
    def num_recomputed_layers(self) -> int:
        return sum(g.num_layers for g in self.groups)

    @property
    def recompute_fraction(self) -> float:
        return self.num_recomputed_layers / self.num_layers

    def recomputed_layers(self) -> tuple[int, ...]:
        return tuple(l for g in self.groups for l in range(g.start, g.end))

    def reused_layers(self) -> tuple[int, ...]:
        recomputed = set(self.recomputed_layers())
        return tuple(l for l in range(self.num_layers) if l not in recomputed)

    def is_recomputed(self, layer: int) -> bool:
        return any(g.start <= layer < g.end for g in self.groups)

    def e_layers(self) -> tuple[int, ...]:
        """Layers whose sender E cache (hidden state entering the layer) is needed."""
        return tuple(g.start for g in self.groups if g.start > 0)

    @property
    def is_full_reuse(self) -> bool:
        return not self.groups

    @property
    def is_full_prefill(self) -> bool:
        return self.num_recomputed_layers == self.num_layers

    def to_list(self) -> list[list[int]]:
        return [[g.start, g.end] for g in self.groups]

    def __str__(self) -> str:
        return "reuse-all" if not self.groups else "+".join(str(g) for g in self.groups)
