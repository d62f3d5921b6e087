"""The data-plane interface (after vLLM v1's KV connector: a sender side and a receiver side).

    side      object          runs on                what it does
    sender    PlaneSender     the scheduler thread   takes the plane's control frames
                                                     (``accept``: a pool offer, a channel
                                                     offer), checks a FetchRequest before
                                                     anything is sent (``refusal``), then
                                                     moves E and the reused layers' K/V
                                                     (``export``), ending the stream
    receiver  PlaneReceiver   the fetch worker       ``fetch``: one FetchRequest, the rows
                                                     land in the import's KV slots and E
                                                     buffers (a ``KvSink``), layer by layer

A plane is chosen by name (``data_plane`` in the settings / cluster YAML; registry.py) and
built from a ``PlaneContext``. A FetchRequest names its plane (``plane``) and carries the
plane's own fields (``session``: the plane's offer / channel / agent; ``dst_slots``; a
``deadline_ms``); the zmq plane needs none of them. Every plane keeps the same faults:
refusals come before any byte moves, a receiver that cannot use its plane for a peer uses
zmq for it, and anything else is a ``FetchFailed`` (errors.py): the request prefills
normally with that reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Protocol

import torch

from sglang_droidspeak.transfer.frames import FetchDone, FetchError, FetchRequest, LayerChunk, Message


class PlaneUnavailable(RuntimeError):
    """This process cannot run the plane (no library, no GPU): it uses zmq instead."""


class KvSink(Protocol):
    """Where a fetch's rows land (the receiver's import_receiver._Receiver).

    ``slots`` [n] are the import's KV slots, ``e`` maps each E layer to its [n, hidden]
    buffer, ``streams`` orders writes (the copy stream when pipelined). Rows arrive as
    ``sink(chunk)`` (a LayerChunk, in token order), ``put(what, layer, tensor)`` (all n
    rows at once) or ``landed(what, layer)`` (the plane wrote all n rows into the slots /
    ``e[layer]`` itself). Each call checks the plan (K/V only of reused layers) and raises
    ImportFailed("protocol") otherwise; a complete E_s starts group s's recompute.
    """

    slots: torch.Tensor
    e: dict
    streams: Any

    def __call__(self, chunk: LayerChunk) -> None: ...

    def put(self, what: str, layer: int, tensor: torch.Tensor) -> None: ...

    def landed(self, what: str, layer: int) -> None: ...


@dataclass(frozen=True)
class PlaneContext:
    """What a plane is built from. ``client`` (transfer.fetch_client.FetchClient) is the receiver's
    fetch socket (None on a sender-only server); ``host`` the address peers reach this
    server's plane listeners at (settings ``nccl_host``); ``backend`` a stand-in the tests
    pass (None: the plane's real one)."""

    model: str
    kv_pool: Any
    num_layers: int
    hidden_size: int
    e_dtype: torch.dtype
    fetch_timeout_s: float
    secret: Optional[bytes] = None
    client: Any = None
    pacing: Any = None
    host: str = "127.0.0.1"
    backend: Any = None


class PlaneSender(ABC):
    """The sender side. ``controls``: the control-frame types ``accept`` takes.
    ``num_bytes_out`` counts the bytes it moved outside LayerChunks (metrics)."""

    controls: tuple[type, ...] = ()
    num_bytes_out: int = 0

    def accept(self, msg: Message) -> Optional[Message]:
        """Take a control frame; return the answer to send back, or None (no answer)."""
        return None

    @abstractmethod
    def refusal(self, request: FetchRequest) -> Optional[FetchError]:
        """Why ``request`` cannot be served on this plane now; called before anything is sent."""

    @abstractmethod
    def export(self, request: FetchRequest, slots: torch.Tensor, e: dict) -> Iterator[Message]:
        """Move E (``e``: layer -> [n, hidden]) and K/V of the reused layers at ``slots`` [n];
        yield the messages for the fetch socket, the last one FetchDone or FetchError."""

    def close(self) -> None:
        pass


class PlaneReceiver(ABC):
    """The receiver side (one per runtime; used only from the fetch worker's thread)."""

    @abstractmethod
    def fetch(self, endpoint: str, request: FetchRequest, sink: KvSink, timeout_s: float,
              idle: Optional[Callable[[], None]] = None) -> FetchDone:
        """Fetch ``request`` from ``endpoint`` into ``sink``; FetchFailed unless it completes."""

    def prepare(self, endpoint: str) -> None:
        """Set up ahead of the first fetch from ``endpoint`` what that fetch would otherwise
        pay for (an offer the sender maps, a channel); called on the fetch worker's thread
        when the runtime starts. Best effort: the first fetch still does whatever is missing."""

    def close(self) -> None:
        pass


class OfferingReceiver(PlaneReceiver):
    """A receiver whose sender must hold its pool offer before a fetch (cuda_ipc, nixl). It has
    ``client`` (the FetchClient), ``offered`` (endpoints holding the current offer) and
    ``zmq_peers`` (endpoints that cannot take one), and makes its offer in ``_startup_offer``."""

    client: Any
    offered: set
    zmq_peers: set

    def _startup_offer(self) -> Optional[Message]:
        """The offer ``prepare`` sends (None: this receiver cannot make one)."""
        return None

    def prepare(self, endpoint: str) -> None:
        """Send the offer to ``endpoint`` now, so the sender takes it (maps the pool, adds the
        agent) before any import instead of during the first fetch."""
        offer = None if endpoint in self.zmq_peers else self._startup_offer()
        if offer is not None:
            self._send_offer(endpoint, offer)

    def _send_offer(self, endpoint: str, offer: Message) -> None:
        """``offer`` to ``endpoint`` unless it holds it already (a no_offer answer discards it)."""
        if endpoint not in self.offered:
            self.client.send(endpoint, offer)
            self.offered.add(endpoint)


@dataclass(frozen=True)
class PlaneSpec:
    """One plane: its name, how to build each side, the answer to one of its control
    frames at a server without its sender (``refuse``; None drops the frame), and the
    FetchError code for a request on it at such a server (``unavailable_code``: its
    receiver then uses zmq for that peer)."""

    name: str
    build_sender: Callable[[PlaneContext], Optional[PlaneSender]]
    build_receiver: Callable[[PlaneContext], Optional[PlaneReceiver]]
    refuse: Callable[[Message], Optional[Message]] = field(default=lambda msg: None)
    unavailable_code: str = "plane_unavailable"
