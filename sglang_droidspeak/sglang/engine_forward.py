"""Layer slices of the served model, run by SGLang's own forward and attention backend.

A recompute (receiver: layers [s, e) from E_s) or an E computation (sender: layers
[0, s), reading E) is an EXTEND forward of the served model over a prefix, through the
model's own ``forward_split_prefill`` (the split-prefill path SGLang's models provide):
the model's layer code brings its q/k norms, biases, sliding windows and soft caps, and
a private instance of the server's attention backend (flashinfer, triton, torch_native)
does the attention and writes K/V through the normal KV-pool save path at the segment's
slots. The private backend keeps its metadata (and, for flashinfer, its workspace) apart
from the scheduler's batches.

One forward runs several segments (imports that are ready together) as one batch:

    segment i            tokens            attends over (layer l in [s, e))
    prefix_len p_i       [p_i, p_i + n_i)  K/V of slots[0 : p_i + n_i], written by earlier
                                           chunks of the same prefix (prefix) or by this
                                           forward (the chunk itself)

State between slices: ``forward_batch.hidden_states`` and ``.residual``; E entering
layer l is ``hidden_states + residual`` (``hidden_states`` where the model keeps no
separate residual). A slice from E_s primes the batch with ``(0, 0)`` (embeddings and any
model-specific state, such as Gemma 3's position embeddings), then replaces the hidden
state with E_s and drops the residual: a decoder layer called with ``residual=None``
takes its input as the whole hidden state.

    tensor            shape
    token_ids         [n_i] int64          per segment (the chunk's tokens)
    slots             [p_i + n_i] int64    per segment, from position 0
    e_start           [n_i, hidden]        per segment, when start > 0
    returned E        [sum n_i, hidden]    entering ``end`` (None when end == num_layers)
"""

from __future__ import annotations

import threading
from typing import Any, NamedTuple, Optional, Sequence

import torch

BACKENDS = ("flashinfer", "triton", "torch_native")
# SGLang's forward context is one module-level global (model_executor/forward_context.py):
# one forward at a time per process. A server has one scheduler thread, so this lock is
# never contended there; CPU tests run two "servers" in one process.
_FORWARD_LOCK = threading.Lock()


class EngineSegment(NamedTuple):
    token_ids: torch.Tensor  # [n] int64, on the device
    slots: torch.Tensor  # [prefix_len + n] int64 KV slots from position 0
    prefix_len: int = 0  # tokens before this chunk (their K/V for [s, e) already written)
    e_start: Optional[torch.Tensor] = None  # [n, hidden] E entering ``start``; None: start at 0
    positions: Optional[torch.Tensor] = None  # [n] int64 rotary positions; None: prefix_len + arange(n)


def engine_unsupported(model: Any, backend_name: str, tp_size: int = 1, pp_size: int = 1,
                       flashinfer_paged: bool = False) -> Optional[str]:
    """Why this server's model cannot run layer slices through the engine (None: it can).

    Sliding-window models on flashinfer need its paged-only prefill
    (``SGLANG_FLASHINFER_USE_PAGED=1``, ``flashinfer_paged``): SGLang 0.5.17's ragged
    prefill applies no window to a prefix-free extend and the window to one with a prefix,
    so any prefix hit, the server's own radix cache included, moves Gemma 2's outputs there
    (docs/BENCHMARKS.md, "Sliding windows on flashinfer").
    """
    if tp_size != 1 or pp_size != 1:
        return f"tensor/pipeline parallelism {tp_size}/{pp_size} (only 1/1 is supported)"
    if not hasattr(model, "forward_split_prefill"):
        return f"{type(model).__name__} has no forward_split_prefill"
    if backend_name not in BACKENDS:
        return f"attention backend {backend_name!r} (supported: {', '.join(BACKENDS)})"
    if backend_name == "flashinfer" and not flashinfer_paged and _has_sliding_window(model):
        return ("sliding-window attention on flashinfer's ragged prefill, which drops the window without a "
                "prefix (start the server with SGLANG_FLASHINFER_USE_PAGED=1, or use triton)")
    return None


def _has_sliding_window(model: Any) -> bool:
    """Any attention layer of ``model`` with a sliding window (SGLang's RadixAttention field)."""
    return any((getattr(m, "sliding_window_size", None) or -1) > 0 for m in model.modules())


class EngineForward:
    """Runs layer slices of ``model`` over segments (see the module docstring).

    ``backend`` is an attention backend instance of our own (``from_model_runner`` makes
    one like the server's); ``req_to_token`` is the request pool's table, into which the
    caller writes each segment's slots at a row it holds until the forward has run.
    """

    def __init__(self, model: Any, backend: Any, req_to_token: torch.Tensor, num_layers: int, hidden_size: int,
                 dtype: torch.dtype, device: Any, backend_name: str = "torch_native"):
        self.model, self.backend, self.req_to_token = model, backend, req_to_token
        self.num_layers, self.hidden_size, self.dtype = num_layers, hidden_size, dtype
        self.device, self.backend_name = torch.device(device), backend_name
        self.new_backend: Optional[Any] = None  # () -> another backend like ``backend`` (twin())

    @classmethod
    def from_model_runner(cls, runner: Any) -> "EngineForward":
        config = runner.model_config.hf_text_config
        engine = cls(runner.model, runner._get_attention_backend(init_new_workspace=True),
                     runner.req_to_token_pool.req_to_token, config.num_hidden_layers, config.hidden_size,
                     runner.dtype, runner.device, runner.server_args.attention_backend)
        engine.new_backend = lambda: runner._get_attention_backend(init_new_workspace=True)
        return engine

    @property
    def max_segments(self) -> int:
        """Segments one forward may hold: the request pool's size (the backends size their
        per-request metadata buffers by it; ``req_to_token`` has one padding row more)."""
        return max(1, self.req_to_token.shape[0] - 1)

    def twin(self) -> "EngineForward":
        """The same model with an attention backend of its own (its own plan buffers and
        workspace), for launches on another stream: two streams must never share one
        backend's metadata buffers. Without a factory (CPU tests), this engine itself."""
        if self.new_backend is None:
            return self
        return EngineForward(self.model, self.new_backend(), self.req_to_token, self.num_layers, self.hidden_size,
                             self.dtype, self.device, self.backend_name)

    @torch.no_grad()
    def run(self, segments: Sequence[EngineSegment], rows: Sequence[int], start: int, end: int,
            capture: Sequence[int] = (), mask: Optional[torch.Tensor] = None) -> dict[int, torch.Tensor]:
        """Layers [start, end) over ``segments`` (row i of the request pool for segment i).

        Segments may share a row only where their slots are prefixes of one slot array
        (blend.py's runs): the row is written once, with the longest. Returns E entering
        each layer of ``capture`` (each in (start, end]; end only when end < num_layers)
        as [sum n_i, hidden] tensors. K/V of layers [start, end) land at each segment's
        slots; nothing else of the pool is written. ``mask``: a custom attention mask in
        place of causal (attention_mask.py: each segment's [n_i, p_i + n_i] bool block,
        flattened and concatenated), on backends that take one (``attention_mask.unsupported``).
        """
        with _FORWARD_LOCK:
            return self._run(segments, rows, start, end, capture, mask)[0]

    @torch.no_grad()
    def logits(self, segments: Sequence[EngineSegment], rows: Sequence[int]) -> torch.Tensor:
        """Every layer over ``segments`` (each from layer 0), then the model's logits processor:
        the next-token logits after each segment's last token, [num_segments, vocab]. K/V land
        at the segments' slots as in ``run``."""
        with _FORWARD_LOCK:
            return self._run(segments, rows, 0, self.num_layers, ())[1].next_token_logits

    def _run(self, segments, rows, start: int, end: int, capture: Sequence[int], mask=None):
        """(captured E, the last split's output: the logits processor's when end == num_layers)."""
        batch = self._extend_batch(segments, rows)
        self.backend.init_forward_metadata(batch)
        if mask is not None:
            from sglang_droidspeak.sglang.attention_mask import install

            install(self, segments, mask)
        ids, positions = batch.input_ids, batch.positions
        captured: dict[int, torch.Tensor] = {}
        with self._context():
            if start > 0:
                self.model.forward_split_prefill(ids, positions, batch, (0, 0))  # model-specific state
                batch.hidden_states = torch.cat([seg.e_start for seg in segments]).to(self.dtype)
                batch.residual = None
            layer, result = start, None
            for stop in sorted(set(capture) | {end}):
                result = self.model.forward_split_prefill(ids, positions, batch, (layer, stop))
                if stop in capture:
                    captured[stop] = _entering(batch)
                layer = stop
        return captured, result

    def _context(self):
        from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

        return forward_context(ForwardContext(attn_backend=self.backend))

    def _write_rows(self, segments: Sequence[EngineSegment], rows: Sequence[int], seq_lens: list[int]) -> None:
        """req_to_token[row, :seq_len] = slots, once per row (its longest segment)."""
        longest: dict[int, int] = {}  # row -> index of its longest segment
        for i, (seg, row, seq_len) in enumerate(zip(segments, rows, seq_lens)):
            if seg.slots.shape[0] != seq_len:
                raise ValueError(f"segment has {seg.slots.shape[0]} slots for {seq_len} positions")
            if row not in longest or seq_len > seq_lens[longest[row]]:
                longest[row] = i
        for row, i in longest.items():
            self.req_to_token[row, :seq_lens[i]] = segments[i].slots.to(self.req_to_token.dtype)

    def _extend_batch(self, segments: Sequence[EngineSegment], rows: Sequence[int]):
        from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardBatch, ForwardMode

        device = self.device
        prefix_lens = [seg.prefix_len for seg in segments]
        extend_lens = [int(seg.token_ids.shape[0]) for seg in segments]
        seq_lens = [p + n for p, n in zip(prefix_lens, extend_lens)]
        self._write_rows(segments, rows, seq_lens)
        out_cache_loc = torch.cat([seg.slots[p:] for seg, p in zip(segments, prefix_lens)])  # [sum n]
        positions = torch.cat([torch.arange(p, s, device=device) if seg.positions is None
                               else seg.positions.to(device) for seg, p, s in zip(segments, prefix_lens, seq_lens)])
        extend_start = torch.tensor([0] + extend_lens[:-1], device=device).cumsum(0)
        seq_lens_cpu = torch.tensor(seq_lens, dtype=torch.int64)
        return ForwardBatch(
            forward_mode=ForwardMode.EXTEND, batch_size=len(segments),
            input_ids=torch.cat([seg.token_ids for seg in segments]),
            req_pool_indices=torch.tensor(list(rows), dtype=torch.int64, device=device),
            seq_lens=seq_lens_cpu.to(device), out_cache_loc=out_cache_loc.to(torch.int64),
            seq_lens_sum=sum(seq_lens), seq_lens_cpu=seq_lens_cpu, positions=positions.to(torch.int64),
            extend_num_tokens=sum(extend_lens),
            extend_seq_lens=torch.tensor(extend_lens, dtype=torch.int32, device=device),
            extend_prefix_lens=torch.tensor(prefix_lens, dtype=torch.int32, device=device),
            extend_start_loc=extend_start.to(torch.int64), extend_prefix_lens_cpu=prefix_lens,
            extend_seq_lens_cpu=extend_lens, extend_logprob_start_lens_cpu=list(extend_lens),
            capture_hidden_mode=CaptureHiddenMode.NULL, num_token_non_padded_cpu=sum(extend_lens),
        )


def _entering(batch: Any) -> torch.Tensor:
    """E entering the next layer: hidden + residual (or hidden alone), [T, hidden]."""
    if batch.residual is None:
        return batch.hidden_states.clone()
    return batch.hidden_states + batch.residual
