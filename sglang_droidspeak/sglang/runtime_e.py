"""The sender's E on demand, and the engine warm-up, through the model's own forward.

E_s of a prefix (the hidden state entering layer s) is what a receiver needs to start a
group at s > 0. The sender does not keep it from its prefill (a capture inside SGLang's
breakable prefill CUDA graphs stored wrong rows: docs/SGLANG_INTEGRATION.md), so it
recomputes layers [0, max s) over the prefix when a FetchRequest names E layers:

    step        what
    scratch     n KV slots and a request-pool row of our own (evicting first when short);
                never the prefix's own slots, whose K/V other requests read
    forward     engine slices (0, s1), (s1, s2), ... on the compute stream, E read between,
                then an event
    wait        ``launch_e``: none; the export parks (``PendingE.ready``, FetchServer's
                PENDING) and resumes at a later scheduler tick once the event has passed,
                so the sender's scheduler keeps scheduling meanwhile. ``compute_e``: the
                CPU waits for the event (tests, tools)
    release     slots and row freed after the event (``PendingE.take`` / ``abandon``)

Groups starting at layer 0 need no E.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Optional

import torch

from sglang_droidspeak.sglang.engine_forward import EngineSegment
from sglang_droidspeak.sglang.import_job import PoolRow, record_event
from sglang_droidspeak.sglang.importer import allocate

logger = logging.getLogger(__name__)


def _hold(parts: Any, tree: Any, num_tokens: int) -> tuple[Any, PoolRow]:
    """n scratch KV slots and a request-pool row."""
    slots = allocate(parts, tree, num_tokens)
    row = PoolRow()
    if parts.req_to_token_pool.alloc([row]) is None:
        parts.allocator.free(slots)
        raise RuntimeError("no free request-pool row")
    return slots, row


def _free(parts: Any, slots: Any, row: PoolRow) -> None:
    parts.req_to_token_pool.free(row)
    parts.allocator.free(slots)


@contextlib.contextmanager
def scratch(parts: Any, tree: Any, num_tokens: int):
    """(slots, row) held for one engine forward; freed after the stream has run it."""
    slots, row = _hold(parts, tree, num_tokens)
    try:
        yield slots, row
    finally:
        if torch.cuda.is_available():
            torch.cuda.current_stream().synchronize()
        _free(parts, slots, row)


class PendingE:
    """E launched on the stream: ``ready()`` once its forward has run; ``take()`` then frees
    the scratch and gives {s: E_s [n, hidden]}. ``abandon()``: free it without the E (it
    waits for the forward first: the forward still writes the scratch slots)."""

    def __init__(self, e: dict, event: Any, release: Callable[[], None]):
        self.e, self.event, self._release = e, event, release

    def ready(self) -> bool:
        return self.event is None or self.event.query()

    def take(self) -> dict:
        self.abandon()
        return self.e

    def abandon(self) -> None:
        if self._release is not None:
            if self.event is not None:
                self.event.synchronize()
            self._release()
            self._release = None


def launch_e(parts: Any, tree: Any, token_ids, layers, stream: Optional[Any] = None) -> PendingE:
    """E entering each s in ``layers`` (0 < s < num_layers), launched, not waited for."""
    ids = torch.tensor([int(t) for t in token_ids], dtype=torch.int64, device=parts.device)
    slots, row = _hold(parts, tree, len(token_ids))
    release = lambda: _free(parts, slots, row)  # noqa: E731
    try:
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            captured = parts.engine.run([EngineSegment(ids, slots)], [row.req_pool_idx], 0, max(layers),
                                        capture=tuple(layers))
            event = record_event(stream)
    except BaseException:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        release()
        raise
    return PendingE(captured, event, release)


def compute_e(parts: Any, tree: Any, token_ids, layers, stream: Optional[Any] = None) -> dict:
    """{s: E_s [n, hidden]} for each s in ``layers``; the CPU waits for it."""
    return launch_e(parts, tree, token_ids, layers, stream).take()


def warm_up(parts: Any, tree: Any, num_layers: int, chunk_tokens: int) -> None:
    """Run the engine's forward once over the shapes an import uses: chunks of
    ``chunk_tokens`` from layer 0 and from an E (a later chunk attends over a prefix),
    through every layer. Without it the first long import pays kernel compilation and the
    allocator's growth (run 4: 825 ms). A failure only logs."""
    began = time.perf_counter()
    shapes = warm_up_shapes(chunk_tokens, parts.req_to_token_pool.req_to_token.shape[1])
    try:
        for tokens, prefix in shapes:
            _warm_one(parts, tree, num_layers, tokens, prefix)
        _warm_blend(parts, tree, num_layers, shapes[0][0])
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - a warm-up must not stop the server
        logger.warning("droidspeak: engine warm-up failed (the first import pays it): %r", exc)
        return
    logger.info("droidspeak: engine warmed up over %d-token chunks in %.1f ms", shapes[0][0],
                1e3 * (time.perf_counter() - began))


def warm_up_shapes(chunk_tokens: int, row_width: int) -> tuple[tuple[int, int], ...]:
    """(tokens, prefix_len) of the warm-up's two forwards: a chunk from position 0, then a
    chunk over a prefix of one chunk. Both fit a request-pool row of ``row_width``
    positions (the model's context + a few): SmolLM2's 8196-wide rows refused the 2 x 8192
    of the default chunk (H100 run 2026-12-06), which left the first import cold."""
    tokens = max(1, min(chunk_tokens, row_width // 2))
    return (tokens, 0), (tokens, tokens)


def _warm_one(parts: Any, tree: Any, num_layers: int, num_tokens: int, prefix_len: int) -> None:
    total = num_tokens + prefix_len
    ids = torch.zeros(num_tokens, dtype=torch.int64, device=parts.device)
    with scratch(parts, tree, total) as (slots, row):
        e = parts.engine.run([EngineSegment(ids, slots[:total], prefix_len)], [row.req_pool_idx], 0, 1,
                             capture=(1,))[1]
        parts.engine.run([EngineSegment(ids, slots[:total], prefix_len, e)], [row.req_pool_idx], 1, num_layers)


WARM_BLEND_EVERY = 4  # the warm-up's token recompute takes every 4th position


def _warm_blend(parts: Any, tree: Any, num_layers: int, num_tokens: int) -> None:
    """Token recompute once (the path a BlendPlan takes, on its exact engine): its kernels
    are variants of their own (a custom mask: flashinfer JIT-compiles one, triton another
    specialisation), which cost the first blend of a fresh H200 14 s, past its deadline
    (2026-12-06). Nothing where the backend takes no BlendPlans."""
    from sglang_droidspeak.sglang.blend import blend_unsupported, exact_engine, recompute_tokens

    if blend_unsupported(parts.engine) is not None:
        return
    ids = torch.zeros(num_tokens, dtype=torch.int64, device=parts.device)
    with scratch(parts, tree, num_tokens) as (slots, row):
        positions = list(range(WARM_BLEND_EVERY - 1, num_tokens, WARM_BLEND_EVERY))
        recompute_tokens(exact_engine(parts.engine), ids, slots[:num_tokens], row.req_pool_idx, positions,
                         num_layers)
