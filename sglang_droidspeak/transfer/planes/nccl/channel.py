"""A per-pair tensor channel (the nccl data plane's transport) and its gloo CPU twin.

    PairChannel              what it does                                  blocks?
    begin_open()             rendezvous + communicator, in a thread        no
    wait_open(deadline, idle) until open, failed or ``deadline``           bounded
    send(t) / recv(t)        post one point-to-point op -> Pending         no (NCCL) /
                                                                           gloo: its own thread
    wait_all(ops, deadline)  until every op is done, else ChannelError     bounded
    close()                  tear down (also with ops still pending)       no

Rendezvous: rank 0 (the receiver) hosts a ``TCPStore`` on an ephemeral port and names it
in its NcclPairOffer; rank 1 connects, sets ``joined``; rank 0 waits for ``joined`` (at
most ``timeout_s``) before either end creates the communicator, so a sender that never
joins costs rank 0 one timed-out store wait, not a hung communicator init.

``GlooPairChannel`` implements the interface with torch.distributed's ``ProcessGroupGloo``
over that store (real sockets; CPU tensors). It stands in for ``NcclPairChannel``
(sglang/nccl_channel.py: SGLang's StatelessProcessGroup + PyNcclCommunicator), which needs
two GPUs. Imports no SGLang.
"""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist

JOINED_KEY = "joined"
POLL_S = 0.0005


class ChannelError(RuntimeError):
    """The channel could not open, an op failed, or it did not finish by its deadline."""


def store_rendezvous(store: Any, rank: int, timeout_s: float) -> None:
    """Rank 1 announces itself; rank 0 waits for it (ChannelError after ``timeout_s``)."""
    if rank == 1:
        store.set(JOINED_KEY, b"1")
        return
    try:
        store.wait([JOINED_KEY], timedelta(seconds=timeout_s))
    except Exception as exc:  # DistStoreError / RuntimeError on timeout
        raise ChannelError(f"the peer did not join within {timeout_s:.3g} s: {exc}") from exc


def listening_socket_fd(host: str) -> tuple[int, int]:
    """(fd, port) of a TCP socket listening on ``host`` only, ephemeral port; the caller
    owns the fd. TCPStore's own server socket would listen on every interface."""
    family, _, _, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(64)
        port = sock.getsockname()[1]
    except BaseException:
        sock.close()
        raise
    return sock.detach(), port


def host_store(host: str, timeout_s: float) -> Any:
    """Rank 0's TCPStore on an ephemeral port of ``host`` alone (``.port``); does not
    wait for the peer."""
    fd, port = listening_socket_fd(host)
    return dist.TCPStore(host, port, 2, True, timedelta(seconds=timeout_s), wait_for_workers=False,
                         master_listen_fd=fd)


def join_store(host: str, port: int, timeout_s: float) -> Any:
    return dist.TCPStore(host, port, 2, False, timedelta(seconds=timeout_s))


class PairChannel:
    """Base: the open-in-background state machine; subclasses implement ``_open``,
    ``send``, ``recv`` and ``_teardown``."""

    def __init__(self, channel_id: str, rank: int, timeout_s: float):
        self.channel_id, self.rank, self.peer_rank, self.timeout_s = channel_id, rank, 1 - rank, timeout_s
        self._opened = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.error: Optional[str] = None
        self.closed = False

    @property
    def is_open(self) -> bool:
        return self._opened.is_set() and self.error is None and not self.closed

    def begin_open(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._open_safely, daemon=True,
                                            name=f"droidspeak-pair-{self.channel_id[:8]}")
            self._thread.start()

    def _open_safely(self) -> None:
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - reported through wait_open
            self.error = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            self._opened.set()

    def wait_open(self, deadline: float, idle: Optional[Callable[[], None]] = None) -> None:
        """Until open (returns) or failed / ``deadline`` (time.monotonic) passed (raises)."""
        self.begin_open()
        while not self._opened.wait(0.002 if idle else max(deadline - time.monotonic(), 0)):
            if time.monotonic() >= deadline:
                raise ChannelError(f"channel {self.channel_id[:8]} not open by its deadline")
            if idle is not None:
                idle()
        if self.error is not None or self.closed:
            raise ChannelError(f"channel {self.channel_id[:8]} failed to open: {self.error or 'closed'}")

    def _open(self) -> None:
        raise NotImplementedError

    def send(self, tensor: torch.Tensor) -> Any:
        raise NotImplementedError

    def recv(self, tensor: torch.Tensor) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._teardown()

    def _teardown(self) -> None:
        pass


def wait_all(ops: Sequence[Any], deadline: float, idle: Optional[Callable[[], None]] = None) -> None:
    """Until every op's ``done()`` is true; ChannelError when one failed or at ``deadline``."""
    pending = list(ops)
    while pending:
        try:
            pending = [op for op in pending if not op.done()]
        except Exception as exc:  # noqa: BLE001 - the transport's error, whatever its type
            raise ChannelError(f"a channel op failed: {type(exc).__name__}: {exc}"[:300]) from exc
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise ChannelError(f"{len(pending)} channel op(s) not done by the deadline")
        if idle is not None:
            idle()
        time.sleep(POLL_S)


class GlooWork:
    """A posted gloo op. Gloo's send/recv progress only inside ``Work.wait()``, so a thread
    waits on it (as NCCL progresses on the GPU); ``done()`` raises if the op failed (peer
    gone, or gloo's own timeout, ``timeout_s`` of the channel)."""

    def __init__(self, work: Any):
        self.work, self.error = work, None
        self._finished = threading.Event()
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        try:
            self.work.wait()
        except Exception as exc:  # noqa: BLE001 - reported through done()
            self.error = exc
        finally:
            self._finished.set()

    def done(self) -> bool:
        if not self._finished.is_set():
            return False
        if self.error is not None:
            raise ChannelError(f"gloo op failed: {self.error}")
        return True


class GlooPairChannel(PairChannel):
    """The CPU twin: ProcessGroupGloo over the pair's TCPStore (stands in for NCCL)."""

    def __init__(self, channel_id: str, rank: int, timeout_s: float, store_host: str = "127.0.0.1",
                 store_port: int = 0):
        super().__init__(channel_id, rank, timeout_s)
        self.store_host = store_host
        self.store = host_store(store_host, timeout_s) if rank == 0 else None
        self.store_port = self.store.port if rank == 0 else store_port
        self.group: Any = None

    def _open(self) -> None:
        store = self.store if self.store is not None else join_store(self.store_host, self.store_port, self.timeout_s)
        store_rendezvous(store, self.rank, self.timeout_s)
        prefixed = dist.PrefixStore(f"gloo/{self.channel_id}", store)
        self.group = dist.ProcessGroupGloo(prefixed, self.rank, 2, timedelta(seconds=self.timeout_s))

    def send(self, tensor: torch.Tensor) -> GlooWork:
        return self._post(lambda group: group.send([tensor.contiguous()], self.peer_rank, 0))

    def recv(self, tensor: torch.Tensor) -> GlooWork:
        return self._post(lambda group: group.recv([tensor], self.peer_rank, 0))

    def _post(self, start: Callable[[Any], Any]) -> GlooWork:
        try:
            work = GlooWork(start(self.group))
        except Exception as exc:  # noqa: BLE001 - e.g. the peer reset the connection
            raise ChannelError(f"gloo op failed: {exc}"[:300]) from exc
        self._works = [w for w in getattr(self, "_works", []) if not w._finished.is_set()] + [work]
        return work

    def _teardown(self) -> None:
        """Fail what is still pending, then drop the group (a gloo group destroyed while a
        thread still waits on one of its ops would abort the process)."""
        if self.group is not None:
            try:
                self.group.abort()
            except Exception:  # noqa: BLE001 - best effort; gloo's timeout ends them anyway
                pass
        for work in getattr(self, "_works", []):
            work._finished.wait(self.timeout_s + 1)
        self.group = self.store = None


class GlooPairBackend:
    """Makes the receiver's (``host``) and the sender's (``join``) end of a gloo channel."""

    def __init__(self, gpu_uuid: str = "", timeout_s: float = 5.0):
        self.gpu_uuid, self.timeout_s = gpu_uuid, timeout_s
        self.num_hosted = self.num_joined = 0

    def device_uuid(self, device: Any) -> str:
        return self.gpu_uuid

    def host(self, channel_id: str, store_host: str, device: Any) -> GlooPairChannel:
        self.num_hosted += 1
        return GlooPairChannel(channel_id, 0, self.timeout_s, store_host)

    def join(self, channel_id: str, store_host: str, store_port: int, rank: int, device: Any) -> GlooPairChannel:
        self.num_joined += 1
        return GlooPairChannel(channel_id, rank, self.timeout_s, store_host, store_port)
