"""Test helper: a CPU stand-in for CUDA IPC (``transfer.cuda_ipc.CudaIpc``).

CUDA IPC cannot run without a GPU, so "sharing" a pool here registers its in-process K/V
tensors under the offer id, and "opening" an offer maps that id back to them. Everything
around it is the real code: the IpcPoolOffer frame and its checks, the wire, the fetch
sockets, the sender's checks and its copy, the receiver's fallbacks. The real share/open
runs in tests/gpu/test_cuda_ipc_gpu.py.
"""

from __future__ import annotations

import uuid

from sglang_droidspeak.transfer.planes.cuda_ipc.backend import IpcUnavailable
from sglang_droidspeak.transfer.planes.cuda_ipc.frames import IpcPoolOffer


class CpuIpc:
    """``device_uuid`` / ``share_pool`` / ``open_pool`` over a ``registry`` both sides share."""

    def __init__(self, registry: dict, gpu_uuid: str = "GPU-cpu-stand-in", rows: int | None = None):
        self.registry, self.gpu_uuid, self.rows = registry, gpu_uuid, rows  # rows: offer fewer (tests)
        self.num_shared = self.num_opened = 0
        self.fail_share = False

    def device_uuid(self, device) -> str:
        return self.gpu_uuid

    def share_pool(self, receiver_model: str, kv_pool, num_layers: int, e_stage=None, pool_id="") -> IpcPoolOffer:
        if self.fail_share:
            raise IpcUnavailable("stand-in: this pool cannot be shared")
        k_buffers = [kv_pool.get_key_buffer(layer) for layer in range(num_layers)]  # [slots, heads, dim]
        v_buffers = [kv_pool.get_value_buffer(layer) for layer in range(num_layers)]
        offer_id = uuid.uuid4().hex
        self.registry[offer_id] = (k_buffers, v_buffers, e_stage)
        self.num_shared += 1
        return offer_for(offer_id, receiver_model, self.gpu_uuid, k_buffers[0], num_layers, self.rows, e_stage,
                         pool_id)

    def open_pool(self, offer: IpcPoolOffer, device):
        if offer.offer_id not in self.registry:
            raise IpcUnavailable(f"stand-in: unknown offer {offer.offer_id}")
        self.num_opened += 1
        return self.registry[offer.offer_id]


def offer_for(offer_id, receiver_model, gpu_uuid, buffer, num_layers, rows=None, e_stage=None,
              pool_id="") -> IpcPoolOffer:
    """An offer whose per-buffer fields describe ``buffer`` (K and V alike; then ``e_stage``,
    where given) with fake handles."""
    shape = (rows if rows is not None else buffer.shape[0], *buffer.shape[1:])
    stride, n = tuple(buffer.stride()), 2 * num_layers + (e_stage is not None)
    nbytes = max(buffer.untyped_storage().nbytes(), 0 if e_stage is None else e_stage.untyped_storage().nbytes())
    e_layout = ((), ()) if e_stage is None else (tuple(e_stage.shape), tuple(e_stage.stride()))
    return IpcPoolOffer(
        offer_id, receiver_model, gpu_uuid, str(buffer.dtype).removeprefix("torch."), num_layers,
        shape, stride, shape, stride,
        handles=tuple(b"h%d" % i for i in range(n)), storage_sizes=(nbytes,) * n, storage_offsets=(0,) * n,
        tensor_offsets=(0,) * n, ref_counter_handles=(b"/torch_refcount",) * n, ref_counter_offsets=(0,) * n,
        event_handles=(b"\0" * 64,) * n, event_sync_required=(0,) * n, e_shape=e_layout[0], e_stride=e_layout[1],
        pool_id=pool_id)
