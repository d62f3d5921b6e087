"""``IpcPoolOffer``: a receiver shares its KV pool's CUDA buffers with a sender on one GPU.

The cuda_ipc data plane ("sender push"): once per peer, the receiver sends this offer on
the fetch socket (no reply). It carries, for every layer's K and V buffer of the receiver's
pool, what ``torch.multiprocessing.reductions.reduce_tensor`` would carry for a CUDA tensor
(the fields of ``UntypedStorage._share_cuda_()`` plus the tensor's offset / shape / stride),
as typed fields, never pickled. A FetchRequest with ``offer_id`` then asks the sender to
copy K/V straight into ``dst_slots`` of these buffers (backend.py opens them).

    field                 type               meaning
    offer_id              str                new per shared pool (a uuid)
    receiver_model        str                the offering server's model
    device_uuid           str                the GPU's UUID; the sender must be on it too
    dtype                 str (DTYPES)       element type of every buffer
    num_layers            int                >= 1; buffers are K0, V0, K1, V1, ...
    k_shape, v_shape      tuple[int, ...]    rank 3: [num_slots + page_size, heads, dim]
    k_stride, v_stride    tuple[int, ...]    rank 3, in elements
    handles               tuple[bytes, ...]  CUDA IPC memory handle (allocator's format)
    storage_sizes         tuple[int, ...]    bytes of each storage
    storage_offsets       tuple[int, ...]    bytes of the storage into its allocation
    tensor_offsets        tuple[int, ...]    elements of the tensor into its storage
    ref_counter_handles   tuple[bytes, ...]  torch's shared ref-counter file name
    ref_counter_offsets   tuple[int, ...]    slot in that file
    event_handles         tuple[bytes, ...]  CUDA IPC event handle (64 bytes; unused if no sync)
    event_sync_required   tuple[int, ...]    0 | 1
    e_shape, e_stride     tuple[int, ...]    () or rank 2: the E staging area [rows, hidden]
    pool_id               str                the offering pool, the same in every offer it
                                             makes ("": unknown): a newer offer replaces
                                             the older ones of its pool at the sender

Every per-buffer tuple has 2 * num_layers entries, one more (the last) with an E staging
area: the sender then writes E of a request's i-th E layer into its rows [i*n, (i+1)*n)
instead of sending it as chunks, when the area holds them all. The offer is rejected unless each
buffer's view (tensor offset + extent of shape/stride) lies inside its storage, so a
sender that opens it can never address memory past what the receiver shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sglang_droidspeak.transfer.schema import DTYPES, OversizedFrame, WireError, _Message

MAX_HANDLE_BYTES = 1024  # legacy handles are 65 bytes; expandable segments carry more
EVENT_HANDLE_BYTES = 64  # CUDA_IPC_HANDLE_SIZE
PER_BUFFER = ("handles", "storage_sizes", "storage_offsets", "tensor_offsets", "ref_counter_handles",
              "ref_counter_offsets", "event_handles", "event_sync_required")


def view_extent(shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Elements a strided view spans from its first element (0 for an empty view)."""
    if any(s == 0 for s in shape):
        return 0
    return 1 + sum((s - 1) * st for s, st in zip(shape, stride))


@dataclass(frozen=True)
class IpcPoolOffer(_Message):
    """Receiver -> sender: the CUDA IPC handles of every K/V buffer of its pool."""

    KIND: ClassVar[str] = "ipc_pool_offer"
    MAX_BIN_BYTES: ClassVar[int] = MAX_HANDLE_BYTES
    offer_id: str
    receiver_model: str
    device_uuid: str
    dtype: str
    num_layers: int
    k_shape: tuple[int, ...]
    k_stride: tuple[int, ...]
    v_shape: tuple[int, ...]
    v_stride: tuple[int, ...]
    handles: tuple[bytes, ...]
    storage_sizes: tuple[int, ...]
    storage_offsets: tuple[int, ...]
    tensor_offsets: tuple[int, ...]
    ref_counter_handles: tuple[bytes, ...]
    ref_counter_offsets: tuple[int, ...]
    event_handles: tuple[bytes, ...]
    event_sync_required: tuple[int, ...]
    e_shape: tuple[int, ...] = ()
    e_stride: tuple[int, ...] = ()
    pool_id: str = ""

    @property
    def num_buffers(self) -> int:
        """K0, V0, ..., K(L-1), V(L-1), then the E staging area where there is one."""
        return 2 * self.num_layers + (1 if self.e_shape else 0)

    @property
    def e_rows(self) -> int:
        return self.e_shape[0] if self.e_shape else 0

    def _check(self) -> None:
        self._nonempty("offer_id", "receiver_model", "device_uuid")
        self._dtypes("dtype")
        if self.num_layers < 1:
            raise WireError("IpcPoolOffer.num_layers must be >= 1")
        for name in ("k_shape", "k_stride", "v_shape", "v_stride"):
            if len(getattr(self, name)) != 3:
                raise WireError(f"IpcPoolOffer.{name} must have rank 3, got {getattr(self, name)[:8]}")
        if len(self.e_shape) not in (0, 2) or len(self.e_stride) != len(self.e_shape):
            raise WireError(f"IpcPoolOffer.e_shape/e_stride must both be empty or rank 2, got "
                            f"{self.e_shape[:8]}/{self.e_stride[:8]}")
        for name in PER_BUFFER:
            if len(getattr(self, name)) != self.num_buffers:
                raise WireError(f"IpcPoolOffer.{name} needs {self.num_buffers} entries (K and V of "
                                f"{self.num_layers} layers, then E's if offered), got {len(getattr(self, name))}")
        self._check_handles()
        self._check_views()

    def _check_handles(self) -> None:
        for name in ("handles", "ref_counter_handles"):
            if any(not 1 <= len(h) <= MAX_HANDLE_BYTES for h in getattr(self, name)):
                raise WireError(f"IpcPoolOffer.{name} entries must be 1..{MAX_HANDLE_BYTES} bytes")
        if any(flag not in (0, 1) for flag in self.event_sync_required):
            raise WireError("IpcPoolOffer.event_sync_required entries must be 0 or 1")
        for handle, sync in zip(self.event_handles, self.event_sync_required):
            if len(handle) > EVENT_HANDLE_BYTES or (sync and len(handle) != EVENT_HANDLE_BYTES):
                raise WireError(f"IpcPoolOffer.event_handles entries must be {EVENT_HANDLE_BYTES} bytes "
                                f"(at most, when event_sync_required is 0)")

    def _check_views(self) -> None:
        itemsize = DTYPES[self.dtype].itemsize
        for i in range(self.num_buffers):
            shape, stride = self.buffer_layout(i)
            end_bytes = (self.tensor_offsets[i] + view_extent(shape, stride)) * itemsize
            if end_bytes > self.storage_sizes[i]:
                raise WireError(f"IpcPoolOffer buffer {i}: view ends at byte {end_bytes}, past its "
                                f"{self.storage_sizes[i]}-byte storage")

    def check_limits(self, limits) -> None:
        if self.num_layers > limits.max_layers or \
                any(d > limits.max_dim for d in self.k_shape + self.v_shape + self.e_shape):
            raise OversizedFrame(f"IpcPoolOffer num_layers {self.num_layers} or shape exceeds limits")

    def buffer_layout(self, index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(shape, stride) of buffer ``index`` (even: K of layer index // 2, odd: V; index
        2 * num_layers: the E staging area)."""
        if index == 2 * self.num_layers:
            return self.e_shape, self.e_stride
        return (self.k_shape, self.k_stride) if index % 2 == 0 else (self.v_shape, self.v_stride)


MESSAGES: tuple[type, ...] = (IpcPoolOffer,)
ERROR_CODES = ("no_offer", "ipc_unavailable", "deadline")
