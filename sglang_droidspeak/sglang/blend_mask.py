"""Scattered token recompute as masked EXTEND forwards: the k selected tokens in a few
segments of many tokens each, not one segment per run (blend.py), on backends that take a
custom mask (attention_mask.py: triton, paged flashinfer).

A group is a range of the selected positions (sorted); it runs as one segment, through
every layer, one forward per group, in position order (a later group reads an earlier
group's recomputed K/V; no group reads a later one's slots). For the group with positions
g_0 < ... < g_{k-1} and m = g_{k-1} + 1 (n = 10, k = 3, g = 2 5 6, m = 7):

    KV list (slots)   the slots of positions [0, m) not in the group, in position order,
                      then the group's own slots:    0 1 3 4 | 2 5 6      (prefix_len = m - k)
    tokens            ids at g (rotary positions g, ``EngineSegment.positions``)
    mask [k, m]       row i (query at g_i) sees prefix column j  iff  pos_j < g_i
                                     and extend column c        iff  c <= i

                        0 1 3 4 | 2 5 6
              g = 2     1 1 0 0 | 1 0 0
              g = 5     1 1 1 1 | 1 1 0
              g = 6     1 1 1 1 | 1 1 1

Query g_i thus sees exactly the slots of positions <= g_i: the sender's K/V for positions
outside the selection, this forward's or an earlier group's recomputed K/V inside it, as
CacheBlend does (the extend's K/V are saved before the kernel reads, as for every extend).
A group's mask has k * m entries; ``mask_groups`` keeps each under ``MASK_BUDGET`` (the
mask is built per group, on the device, so its memory stays bounded) and splits the
selection into at least MIN_GROUPS groups (``group_tokens``), so the keys read stay near
causal's k * n / 2 even where the kernel skips no masked tile.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

from sglang_droidspeak.sglang.engine_forward import EngineSegment

MASK_BUDGET = 1 << 24  # mask entries (queries x keys) of one group: 16 MiB as bool
MIN_GROUPS, MIN_GROUP_TOKENS = 4, 256  # group_tokens


class MaskedGroup(NamedTuple):
    segment: EngineSegment  # the group's tokens over its KV list (module docstring)
    mask: torch.Tensor  # [k, m] bool


def mask_groups(positions: Sequence[int], budget: int = MASK_BUDGET,
                max_tokens: Optional[int] = None) -> list[tuple[int, int]]:
    """Index ranges [i, j) of ``positions`` (sorted ints), in order, each with at most
    ``max_tokens`` positions (None: no limit) and (j - i) * (positions[j - 1] + 1) <=
    ``budget`` (a single position always fits)."""
    groups: list[tuple[int, int]] = []
    start = 0
    for end in range(1, len(positions) + 1):
        size = end - start
        if size > 1 and (size * (positions[end - 1] + 1) > budget or (max_tokens and size > max_tokens)):
            groups.append((start, end - 1))
            start = end - 1
    if positions:
        groups.append((start, len(positions)))
    return groups


def group_tokens(num_tokens: int) -> int:
    """Tokens per group: a quarter of the selection, at least MIN_GROUP_TOKENS. Without
    tile skipping (flashinfer's custom mask) a group reads all k_g x m of its keys; G equal
    groups read (G + 1) / (2G) of k x n, 0.625 of it at G = 4 against causal's 0.5."""
    return max(MIN_GROUP_TOKENS, -(-num_tokens // MIN_GROUPS))


def masked_group(ids: torch.Tensor, slots: torch.Tensor, chosen: torch.Tensor) -> MaskedGroup:
    """The segment and mask of one group: ``chosen`` [k] sorted positions (a host tensor) of
    the prefix ``ids`` [n] at ``slots`` [n] (both on the device)."""
    device = slots.device
    k, m = int(chosen.shape[0]), int(chosen[-1]) + 1
    chosen = chosen.to(device)
    outside = torch.ones(m, dtype=torch.bool, device=device)
    outside[chosen] = False
    prefix_pos = torch.arange(m, device=device)[outside]  # [m - k]
    kv_slots = torch.cat([slots[prefix_pos], slots[chosen]])  # [m]
    sees_prefix = prefix_pos[None, :] < chosen[:, None]  # [k, m - k]
    sees_extend = torch.ones(k, k, dtype=torch.bool, device=device).tril()  # [k, k]
    segment = EngineSegment(ids[chosen], kv_slots, m - k, positions=chosen)
    return MaskedGroup(segment, torch.cat([sees_prefix, sees_extend], dim=1))


def recompute_masked(engine, ids, slots, row: int, positions: Sequence[int], num_layers: int,
                     budget: Optional[int] = None) -> int:
    """The tokens at ``positions`` through every layer, one masked forward per group
    (``mask_groups`` with ``budget``, default MASK_BUDGET, and ``group_tokens``); returns
    the number of forwards."""
    chosen = torch.tensor(list(positions), dtype=torch.int64)  # [k] on the host
    groups = mask_groups(positions, budget or MASK_BUDGET, group_tokens(len(positions)))
    for i, j in groups:
        group = masked_group(ids, slots, chosen[i:j])
        engine.run([group.segment], [row], 0, num_layers, mask=group.mask)
    return len(groups)
