"""The real nccl-plane channel: SGLang's StatelessProcessGroup + PyNcclCommunicator.

    rank 0 (receiver)                                rank 1 (sender)
    TCPStore on an ephemeral port (host_store)       TCPStore client (join_store)
    wait for "joined" (<= timeout_s)                 set "joined"
    PyNcclCommunicator(_PairGroup, device): ncclGetUniqueId, store the 128 raw bytes + an
    HMAC over (channel id, bytes); rank 1 checks the MAC; both ncclCommInitRank
    send / recv: ncclSend / ncclRecv on the channel's own CUDA stream; each op records an
    event, ``done()`` = event.query()
    close: ncclCommAbort (ops still pending end), then the store goes

``_PairGroup`` overrides ``StatelessProcessGroup.broadcast_obj`` (the one method
PyNcclCommunicator's init calls) so the unique id crosses the store as raw bytes with a
MAC, never pickled: the store's port is reachable by anyone on the network. The channel
stream waits on the caller's current stream before every op, so a gather that fills a
send buffer (or an allocation a recv overwrites) is ordered before the op.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import hmac
from typing import Any

import torch
from sglang.srt.distributed.device_communicators.pynccl import PyNcclCommunicator
from sglang.srt.distributed.device_communicators.pynccl_wrapper import ncclUniqueId
from sglang.srt.distributed.utils import StatelessProcessGroup

from sglang_droidspeak.transfer.planes.cuda_ipc.backend import device_uuid
from sglang_droidspeak.transfer.planes.nccl.channel import (
    ChannelError, PairChannel, host_store, join_store, store_rendezvous)

UNIQUE_ID_KEY = "nccl_unique_id"
UNIQUE_ID_BYTES = 128


@dataclasses.dataclass
class _PairGroup(StatelessProcessGroup):
    """A StatelessProcessGroup whose broadcast carries only an authenticated ncclUniqueId."""

    secret: bytes = b""
    channel_id: str = ""

    def _mac(self, raw: bytes) -> bytes:
        return hmac.new(self.secret, self.channel_id.encode() + raw, hashlib.sha256).digest()

    def broadcast_obj(self, obj: Any, src: int) -> Any:
        if self.rank == src:
            raw = bytes(obj.internal)  # [128] bytes
            self.store.set(UNIQUE_ID_KEY, raw + self._mac(raw))
            return obj
        value = bytes(self.store.get(UNIQUE_ID_KEY))
        raw, mac = value[:UNIQUE_ID_BYTES], value[UNIQUE_ID_BYTES:]
        if len(raw) != UNIQUE_ID_BYTES or not hmac.compare_digest(mac, self._mac(raw)):
            raise RuntimeError("the NCCL unique id in the pair store is not authentic")
        unique_id = ncclUniqueId()
        ctypes.memmove(ctypes.addressof(unique_id), raw, UNIQUE_ID_BYTES)
        return unique_id


class CudaEventOp:
    """A posted NCCL op: done once the event recorded after it on the channel stream is."""

    def __init__(self, event: torch.cuda.Event, tensor: torch.Tensor):
        self.event, self.tensor = event, tensor  # keeps the buffer alive until done

    def done(self) -> bool:
        return self.event.query()


def cuda_device(device: Any) -> torch.device:
    device = torch.device(device)
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


class NcclPairChannel(PairChannel):
    """One end of a two-rank NCCL communicator, opened through the pair's TCPStore."""

    def __init__(self, channel_id: str, rank: int, timeout_s: float, device: Any, secret: bytes,
                 store_host: str, store_port: int = 0):
        super().__init__(channel_id, rank, timeout_s)
        self.device, self.secret, self.store_host = cuda_device(device), secret, store_host
        self.store = host_store(store_host, timeout_s) if rank == 0 else None
        self.store_port = self.store.port if rank == 0 else store_port
        self.comm: Any = None
        self.stream: Any = None

    def _open(self) -> None:
        store = self.store if self.store is not None else join_store(self.store_host, self.store_port, self.timeout_s)
        self.store = store
        store_rendezvous(store, self.rank, self.timeout_s)
        group = _PairGroup(rank=self.rank, world_size=2, store=store, secret=self.secret,
                           channel_id=self.channel_id)
        with torch.cuda.device(self.device):
            comm = PyNcclCommunicator(group, self.device)
            if not comm.available:
                raise RuntimeError("NCCL library not available")
            comm.disabled = False  # SGLang enables it per CUDA graph; this channel always
            self.stream = torch.cuda.Stream(self.device)
        comm._resolve_stream = lambda: self.stream  # every op on our stream, whatever the caller's
        self.comm = comm

    def _post(self, tensor: torch.Tensor, op: str) -> CudaEventOp:
        if self.comm is None:
            raise ChannelError(f"channel {self.channel_id[:8]} is closed")
        try:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.device(self.device):
                getattr(self.comm, op)(tensor, self.peer_rank)  # ncclSend / ncclRecv on self.stream
                event = torch.cuda.Event()
                event.record(self.stream)
        except Exception as exc:  # noqa: BLE001 - NCCL_CHECK's RuntimeError, an async error
            raise ChannelError(f"NCCL {op} failed: {exc}"[:300]) from exc
        return CudaEventOp(event, tensor)

    def send(self, tensor: torch.Tensor) -> CudaEventOp:
        return self._post(tensor.contiguous(), "send")

    def recv(self, tensor: torch.Tensor) -> CudaEventOp:
        return self._post(tensor, "recv")

    def _teardown(self) -> None:
        comm, self.comm = self.comm, None
        if comm is not None:
            abort = getattr(comm.nccl.lib, "ncclCommAbort", None)  # not in SGLang's wrapper list
            if abort is not None:
                abort(comm.comm)  # ends ops a dead peer will never match
        self.store = None


class NcclPairBackend:
    """The GPU backend of the nccl plane; ``GlooPairBackend`` is its CPU twin."""

    def __init__(self, secret: bytes, timeout_s: float):
        self.secret, self.timeout_s = secret, timeout_s

    device_uuid = staticmethod(device_uuid)

    def host(self, channel_id: str, store_host: str, device: Any) -> NcclPairChannel:
        return NcclPairChannel(channel_id, 0, self.timeout_s, device, self.secret, store_host)

    def join(self, channel_id: str, store_host: str, store_port: int, rank: int, device: Any) -> NcclPairChannel:
        return NcclPairChannel(channel_id, rank, self.timeout_s, device, self.secret, store_host, store_port)
