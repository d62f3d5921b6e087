"""CUDA IPC for the cuda_ipc data plane: share a KV pool's buffers, open a peer's.

    receiver (owns the pool)                          sender (same GPU, other process)
    CudaIpc.share_pool(model, kv_pool, num_layers,
                       e_stage)
        -> IpcPoolOffer  ---- fetch socket ---->     CudaIpc.open_pool(offer, device)
                                                         -> ([K_0..K_{n-1}], [V_0..V_{n-1}],
                                                             E staging area or None)

``share_pool`` calls ``UntypedStorage._share_cuda_()`` on each layer's K and V buffer (what
``torch.multiprocessing`` does for a CUDA tensor) and puts the result in typed frame fields;
``open_pool`` rebuilds each buffer with ``torch.multiprocessing.reductions
.rebuild_cuda_tensor`` (cudaIpcOpenMemHandle underneath). Nothing is pickled. A process
cannot open its own handles: both ends must be different processes on one GPU, which the
sender checks by comparing ``device_uuid``s. ``CudaIpc`` is the backend the runtime uses;
CPU tests inject a stand-in with the same three methods. Imports no SGLang.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Optional, Sequence

import torch

from sglang_droidspeak.transfer.planes.cuda_ipc.frames import IpcPoolOffer
from sglang_droidspeak.transfer.schema import DTYPES


def now_ms() -> int:
    """The plane's clock for ``FetchRequest.deadline_ms``: CLOCK_MONOTONIC in ms, which every
    process of one host shares (and one GPU implies one host)."""
    return int(time.monotonic() * 1000)


class IpcUnavailable(RuntimeError):
    """This pool cannot be shared, or that offer cannot be opened, over CUDA IPC."""


def device_uuid(device: Any) -> str:
    """The UUID of the GPU behind ``device`` ("" for a non-CUDA device)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return ""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return str(torch.cuda.get_device_properties(index).uuid)


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise IpcUnavailable(f"KV dtype {name} is not in the wire whitelist {tuple(DTYPES)}")
    return name


def _uniform_layout(buffers: Sequence[torch.Tensor], what: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    layouts = {(tuple(b.shape), tuple(b.stride()), b.dtype, b.device) for b in buffers}
    if len(layouts) != 1:
        raise IpcUnavailable(f"{what} buffers differ in shape/stride/dtype/device across layers")
    shape, stride, _, device = layouts.pop()
    if len(shape) != 3 or torch.device(device).type != "cuda":
        raise IpcUnavailable(f"{what} buffers must be rank-3 CUDA tensors, got {shape} on {device}")
    return shape, stride


def share_buffer(tensor: torch.Tensor) -> tuple:
    """The per-buffer offer fields of one CUDA tensor (see frames.PER_BUFFER)."""
    (_device, handle, storage_size, storage_offset, ref_handle, ref_offset, event_handle,
     event_sync) = tensor.untyped_storage()._share_cuda_()
    if handle is None or event_handle is None:
        raise IpcUnavailable("an empty storage has no CUDA IPC handle")
    return (bytes(handle), int(storage_size), int(storage_offset), int(tensor.storage_offset()),
            bytes(ref_handle), int(ref_offset), bytes(event_handle), int(bool(event_sync)))


def share_pool(receiver_model: str, kv_pool: Any, num_layers: int,
               e_stage: Optional[torch.Tensor] = None, pool_id: str = "") -> IpcPoolOffer:
    """An offer of every layer's K and V buffer of ``kv_pool`` (SGLang's MHATokenToKVPool),
    and of ``e_stage`` [rows, hidden] (the E staging area) where given; ``pool_id`` names
    the pool across its offers."""
    k_buffers = [kv_pool.get_key_buffer(layer) for layer in range(num_layers)]  # [slots, heads, dim] each
    v_buffers = [kv_pool.get_value_buffer(layer) for layer in range(num_layers)]
    k_shape, k_stride = _uniform_layout(k_buffers, "K")
    v_shape, v_stride = _uniform_layout(v_buffers, "V")
    if k_buffers[0].dtype != v_buffers[0].dtype or k_buffers[0].device != v_buffers[0].device:
        raise IpcUnavailable("K and V buffers differ in dtype or device")
    try:
        buffers = [b for pair in zip(k_buffers, v_buffers) for b in pair] + ([e_stage] if e_stage is not None else [])
        records = [share_buffer(b) for b in buffers]  # K0, V0, K1, ..., then E
    except Exception as exc:  # e.g. memory from an allocator without IPC support
        if isinstance(exc, IpcUnavailable):
            raise
        raise IpcUnavailable(f"cannot share the KV pool over CUDA IPC: {exc}") from exc
    columns = [tuple(column) for column in zip(*records)]
    e_layout = ((), ()) if e_stage is None else (tuple(e_stage.shape), tuple(e_stage.stride()))
    return IpcPoolOffer(uuid.uuid4().hex, receiver_model, device_uuid(k_buffers[0].device),
                        _dtype_name(k_buffers[0].dtype), num_layers, k_shape, k_stride, v_shape, v_stride,
                        *columns, *e_layout, pool_id)


def open_buffer(offer: IpcPoolOffer, index: int, device_index: int) -> torch.Tensor:
    """Buffer ``index`` of ``offer`` (K of layer index // 2 when even, else V), mapped here."""
    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    shape, stride = offer.buffer_layout(index)
    return rebuild_cuda_tensor(
        torch.Tensor, torch.Size(shape), stride, offer.tensor_offsets[index], torch.UntypedStorage,
        DTYPES[offer.dtype], device_index, offer.handles[index], offer.storage_sizes[index],
        offer.storage_offsets[index], False, offer.ref_counter_handles[index], offer.ref_counter_offsets[index],
        offer.event_handles[index], bool(offer.event_sync_required[index]))


def open_pool(offer: IpcPoolOffer, device: Any) -> tuple[list, list, Optional[torch.Tensor]]:
    """(K buffers, V buffers, the E staging area or None) of the offered pool, one K and V
    per layer, mapped on ``device``."""
    device = torch.device(device)
    if device.type != "cuda":
        raise IpcUnavailable(f"CUDA IPC needs a CUDA device, this pool is on {device}")
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        buffers = [open_buffer(offer, i, index) for i in range(offer.num_buffers)]
    except Exception as exc:  # cudaIpcOpenMemHandle failed: other GPU, same process, driver
        raise IpcUnavailable(f"cannot open {offer.receiver_model}'s KV pool: {exc}") from exc
    kv = buffers[:2 * offer.num_layers]
    return kv[0::2], kv[1::2], buffers[-1] if offer.e_shape else None


class CudaIpc:
    """The real backend: what the runtime calls on both sides of the cuda_ipc plane."""

    device_uuid = staticmethod(device_uuid)
    share_pool = staticmethod(share_pool)
    open_pool = staticmethod(open_pool)
