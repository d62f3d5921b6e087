"""Custom attention masks for EngineForward segments (scattered token recompute, blend_mask.py).

An EXTEND segment normally attends causally: its query i of n sees the p prefix slots and
extend slots [0, i]. A masked segment brings its own rows instead. The server's kernels
take such a mask where SGLang itself uses one (speculative verification); SGLang 0.5.17
plans no mask for a plain EXTEND, so ``install`` adds it to the metadata of the engine's
own backend instance after ``init_forward_metadata``:

    backend            how the mask gets in                             refused when
    triton             forward_metadata.custom_mask + mask_indptr,      deterministic mode (its
                       extend_attention_fwd with skip_prefix_custom_    unified kernel), DCP
                       mask=False (its default ignores the mask over
                       the prefix)
    flashinfer, paged  prefill_wrappers[0] planned again with           ragged (the default:
                       custom_mask (fa2 packs it; a wrapper runs        its ragged wrapper takes
                       MaskMode.CUSTOM while a mask is planned)         no mask; blends run on a
                                                                        paged-only twin)
    any                -                                                sliding-window layers: the
                                                                        kernels' windows count KV
                                                                        list entries, not positions

Mask layout, both kernels (page size 1): per segment a row-major [n_i, p_i + n_i] bool
block, prefix columns first, blocks concatenated; mask_indptr = cumsum(n_i * (p_i + n_i)).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, Optional, Sequence

import torch

from sglang_droidspeak.sglang.engine_forward import EngineSegment, _has_sliding_window

MASK_BACKENDS = ("triton", "flashinfer")


def unsupported(engine: Any) -> Optional[str]:
    """Why ``engine``'s backend cannot run masked segments (None: it can)."""
    name, backend = engine.backend_name, engine.backend
    if name not in MASK_BACKENDS:
        return f"attention backend {name!r} takes no custom mask here (masks: {', '.join(MASK_BACKENDS)})"
    if _has_sliding_window(engine.model):
        return "sliding-window layers: the kernels' windows count KV list entries, not positions"
    if name == "triton" and (getattr(backend, "enable_deterministic", False) or getattr(backend, "dcp_size", 1) > 1):
        return "triton in deterministic or DCP mode (kernels without a prefix mask)"
    if name == "flashinfer" and not getattr(backend, "use_paged", False):
        return "flashinfer's ragged prefill takes no custom mask (its paged-only twin does)"
    return None


def mask_lens(segments: Sequence[EngineSegment]) -> list[tuple[int, int]]:
    """(n_i, p_i + n_i) per segment: each block's rows and columns."""
    return [(int(seg.token_ids.shape[0]), int(seg.slots.shape[0])) for seg in segments]


def install(engine: Any, segments: Sequence[EngineSegment], mask: torch.Tensor) -> None:
    """Put ``mask`` (the flattened blocks, see the module docstring) into the metadata that
    ``engine.backend.init_forward_metadata`` just planned for ``segments``."""
    reason = unsupported(engine)
    if reason is not None:
        raise RuntimeError(reason)
    lens = mask_lens(segments)
    if mask.numel() != sum(rows * cols for rows, cols in lens):
        raise ValueError(f"mask has {mask.numel()} entries for blocks {lens}")
    flat = mask.reshape(-1).to(device=engine.device, dtype=torch.bool)
    INSTALLERS[engine.backend_name](engine.backend, segments, lens, flat)


def _indptr(sizes, dtype, device) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(sizes)], dtype=dtype, device=device)


def _install_triton(backend: Any, segments, lens, mask: torch.Tensor) -> None:
    mask_indptr = _indptr([rows * cols for rows, cols in lens], torch.int64, mask.device)
    backend.forward_metadata = dataclasses.replace(backend.forward_metadata, custom_mask=mask, mask_indptr=mask_indptr)
    fwd = backend.extend_attention_fwd
    if not (isinstance(fwd, functools.partial) and fwd.keywords.get("skip_prefix_custom_mask") is False):
        backend.extend_attention_fwd = functools.partial(fwd, skip_prefix_custom_mask=False)  # this instance only


def _install_flashinfer(backend: Any, segments, lens, mask: torch.Tensor) -> None:
    if backend.forward_metadata.use_ragged:
        raise RuntimeError("flashinfer planned its ragged path: no custom mask")
    up, device = backend.indices_updater_prefill, mask.device
    kv_indices = torch.cat([seg.slots for seg in segments]).to(device=device, dtype=torch.int32)
    backend.forward_metadata.prefill_wrappers[0].begin_forward(
        _indptr([rows for rows, _ in lens], torch.int32, device), _indptr([cols for _, cols in lens], torch.int32, device),
        kv_indices, up.kv_last_page_len[:len(lens)], up.num_qo_heads, up.num_kv_heads, up.head_dim, 1,
        q_data_type=up.q_data_type, kv_data_type=up.data_type, custom_mask=mask, non_blocking=True)


INSTALLERS = {"triton": _install_triton, "flashinfer": _install_flashinfer}
