"""Build each side of the configured data plane (``data_plane`` setting) for one runtime.

    data_plane   sender (has export_bind)       receiver (has peers)
    zmq          -                              -
    cuda_ipc     IpcExporter (ipc_export.py)    IpcFetcher (ipc_import.py)
    nccl         NcclExporter (nccl_export.py)  NcclFetcher (nccl_import.py)

The backends default to the GPU ones (CudaIpc; NcclPairBackend, which imports SGLang's
NCCL wrappers only when the nccl plane is configured); CPU tests pass stand-ins.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

from sglang_droidspeak.sglang.ipc_export import IpcExporter
from sglang_droidspeak.sglang.ipc_import import IpcFetcher
from sglang_droidspeak.sglang.nccl_export import NcclExporter
from sglang_droidspeak.sglang.nccl_import import NcclFetcher, NcclLayout
from sglang_droidspeak.transfer.cuda_ipc import CudaIpc

logger = logging.getLogger(__name__)
NCCL_OPEN_TIMEOUT_S = 30.0  # the pair rendezvous (store wait); transfers are bounded per fetch


@dataclass(frozen=True)
class Planes:
    ipc_export: Optional[IpcExporter] = None
    ipc_fetch: Optional[IpcFetcher] = None
    nccl_export: Optional[NcclExporter] = None
    nccl_fetch: Optional[NcclFetcher] = None


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def build_planes(settings: Any, model: str, parts: Any, num_layers: int, secret: Optional[bytes],
                 server: Any, client: Any, ipc_backend: Any = None, nccl_backend: Any = None,
                 pacing: Any = None) -> Planes:
    """The plane objects for a runtime with FetchServer ``server`` / FetchClient ``client``;
    ``pacing`` (transfer/pacing.PacerPolicy) paces the sender's cuda_ipc copies like its
    ZMQ stream."""
    if settings.data_plane == "cuda_ipc":
        backend = ipc_backend if ipc_backend is not None else CudaIpc()
        return Planes(ipc_export=IpcExporter(backend, parts.kv_pool, pacing=pacing) if server else None,
                      ipc_fetch=IpcFetcher(backend, client, model, parts.kv_pool, num_layers) if client else None)
    if settings.data_plane != "nccl" or not (server or client):
        return Planes()
    if nccl_backend is None:
        try:
            from sglang_droidspeak.sglang.nccl_channel import NcclPairBackend
        except ImportError as exc:  # e.g. no NCCL library: this server moves K/V over ZMQ
            logger.warning("droidspeak: data_plane nccl unavailable (%s); using zmq", exc)
            return Planes()
        nccl_backend = NcclPairBackend(secret, NCCL_OPEN_TIMEOUT_S)
    k_cache = parts.kv_pool.get_key_buffer(0)  # [slots, kv_heads, head_dim]
    layout = NcclLayout(model, settings.nccl_host, _dtype_name(k_cache.dtype), tuple(k_cache.shape[1:]),
                        parts.hidden_size, _dtype_name(parts.dtype), k_cache.device)
    return Planes(
        nccl_export=NcclExporter(nccl_backend, parts.kv_pool, model, parts.hidden_size, settings.fetch_timeout_s)
        if server else None,
        nccl_fetch=NcclFetcher(nccl_backend, client, layout) if client else None)
