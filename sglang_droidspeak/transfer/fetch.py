"""The fetch exchange over ZMQ: one request, a stream of chunks, one terminal message.

    receiver (DEALER)                         sender (ROUTER)
    FetchRequest            ------------->    FetchServer.poll(handler)
                            <-------------    LayerChunk * n   (E first, then K/V by layer)
                            <-------------    FetchDone(n) | FetchError(code)

On the cuda_ipc plane the receiver may first send an ``IpcPoolOffer`` on the same socket
(no reply; ZMQ keeps the order): the server hands it to ``on_offer``. On the nccl plane it
first sends an ``NcclPairOffer`` and waits for the answer (``FetchClient.ask``): what
``on_nccl_offer`` returns, or FetchError(nccl_unavailable); an NcclSendStart during a
fetch goes to the client's ``on_start``. Every frame is ``wire.encode``d (HMAC, timestamp,
nonce); what does not decode (or is stale or replayed) is dropped by the server and ends
the client's fetch with ``FetchFailed``; answers are bound to the request's own id. The
server never blocks: ``poll`` drains what is queued, so it runs on SGLang's scheduler
thread between batches. With ``pacing`` (transfer/pacing.py) it sleeps before each frame
to keep to a link rate, holding the scheduler thread that long. No SGLang imports.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Optional

import zmq

from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.drops import DropLog
from sglang_droidspeak.transfer.frames import FetchDone, FetchError, FetchRequest, LayerChunk, Message, WireError
from sglang_droidspeak.transfer.frames_ipc import IpcPoolOffer
from sglang_droidspeak.transfer.frames_nccl import NcclPairAccept, NcclPairOffer, NcclSendStart
from sglang_droidspeak.transfer.pacing import PacerPolicy
from sglang_droidspeak.transfer.replay import ReplayGuard

logger = logging.getLogger(__name__)
Handler = Callable[[FetchRequest], Iterable[Message]]
OfferHandler = Callable[[IpcPoolOffer], None]
NcclOfferHandler = Callable[[NcclPairOffer], Message]  # -> NcclPairAccept | FetchError


class FetchFailed(RuntimeError):
    """The fetch ended without FetchDone; ``code`` is a FetchError code or 'timeout'/'protocol'."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class FetchServer:
    """A ROUTER answering FetchRequests with what ``handler`` yields; frames over the header
    limit disconnect their peer (MAXMSGSIZE); stale or replayed ones drop (``drops``)."""

    def __init__(self, bind: str, secret: bytes, context: Optional[zmq.Context] = None,
                 limits: wire.WireLimits = wire.WireLimits(), pacing: Optional[PacerPolicy] = None,
                 replay: Optional[ReplayGuard] = None, on_drop: Optional[Callable[[str], None]] = None):
        self.secret, self.limits = secret, limits
        self.pacing = pacing if pacing is not None else PacerPolicy()
        self.replay = replay if replay is not None else ReplayGuard()
        self.drops = DropLog("a fetch-socket frame", on_drop, log=logger)
        self.socket = (context or zmq.Context.instance()).socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, limits.max_header_bytes)
        self.socket.bind(bind)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.num_served = 0

    @property
    def num_dropped(self) -> int:
        return self.drops.total

    def poll(self, handler: Handler, max_requests: int = 16, on_offer: Optional[OfferHandler] = None,
             on_nccl_offer: Optional[NcclOfferHandler] = None) -> int:
        """Answer up to ``max_requests`` queued requests without blocking; returns how many.

        IpcPoolOffers go to ``on_offer`` (dropped when None), NcclPairOffers to
        ``on_nccl_offer`` (refused when None); neither counts as a request.
        """
        served = 0
        while served < max_requests:
            try:
                identity, *frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = self._decode(frames, on_offer is not None)
            if isinstance(msg, IpcPoolOffer):
                self._take_offer(msg, on_offer)
            elif isinstance(msg, NcclPairOffer):
                self._answer_nccl_offer(identity.bytes, msg, on_nccl_offer)
            elif msg is not None:
                self._answer(identity.bytes, msg, handler)
                served += 1
        return served

    def _take_offer(self, offer: IpcPoolOffer, on_offer: OfferHandler) -> None:
        try:
            on_offer(offer)
        except Exception:  # the handler's bug must not kill the scheduler
            logger.exception("droidspeak: IPC offer handler failed")

    def _answer_nccl_offer(self, identity: bytes, offer: NcclPairOffer,
                           on_nccl_offer: Optional[NcclOfferHandler]) -> None:
        answer: Message = FetchError(offer.channel_id, "nccl_unavailable", "this sender is not on the nccl plane")
        if on_nccl_offer is not None:
            try:
                answer = on_nccl_offer(offer)
            except Exception as exc:  # the handler's bug must not kill the scheduler
                logger.exception("droidspeak: NCCL offer handler failed")
                answer = FetchError(offer.channel_id, "nccl_unavailable", str(exc)[:200])
        self.socket.send_multipart([identity, *wire.encode(answer, self.secret)])

    def _decode(self, frames, offers: bool = False) -> Optional[FetchRequest | IpcPoolOffer | NcclPairOffer]:
        try:
            msg = wire.decode([f.buffer for f in frames], self.secret, self.limits, self.replay)
        except WireError as exc:
            self.drops.drop(exc.reason, str(exc))
            return None
        if (offers and isinstance(msg, IpcPoolOffer)) or isinstance(msg, NcclPairOffer):
            return msg
        if not isinstance(msg, FetchRequest):
            self.drops.drop("unexpected", f"a {msg.kind} on the fetch socket")
            return None
        return msg

    def _answer(self, identity: bytes, request: FetchRequest, handler: Handler) -> None:
        try:
            pacer = self.pacing.for_request(request.link_gbps)
            for msg in handler(request):
                frames = wire.encode(msg, self.secret)
                if pacer is not None:
                    pacer.consume(sum(len(frame) for frame in frames))
                self.socket.send_multipart([identity, *frames], copy=False)
            self.num_served += 1
        except Exception as exc:  # the handler's bug must not kill the scheduler
            logger.exception("droidspeak: fetch handler failed")
            error = FetchError(request.request_id, "internal", str(exc)[:200])
            self.socket.send_multipart([identity, *wire.encode(error, self.secret)])

    def close(self) -> None:
        self.socket.close(0)


class FetchClient:
    """Fetches from sender endpoints; one DEALER per endpoint, reused across fetches."""

    def __init__(self, secret: bytes, context: Optional[zmq.Context] = None,
                 limits: wire.WireLimits = wire.WireLimits()):
        self.secret, self.limits = secret, limits
        self.context = context or zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket] = {}

    def send(self, endpoint: str, msg: Message | IpcPoolOffer) -> None:
        """Send one message that gets no answer (an IpcPoolOffer) ahead of the next fetch."""
        self._socket(endpoint).send_multipart(wire.encode(msg, self.secret))

    def ask(self, endpoint: str, msg: NcclPairOffer, timeout_s: float,
            idle: Optional[Callable[[], None]] = None) -> Optional[NcclPairAccept | FetchError]:
        """Send ``msg`` and return the answer naming its channel; None after ``timeout_s``."""
        socket = self._socket(endpoint)
        socket.send_multipart(wire.encode(msg, self.secret))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                answer = self._recv(socket, deadline, idle)
            except FetchFailed:
                answer = None
            if answer is None:
                self._drop_socket(endpoint)  # a late answer must not reach the next exchange
                return None
            if isinstance(answer, (NcclPairAccept, FetchError)) and msg.channel_id in (
                    getattr(answer, "channel_id", None), getattr(answer, "request_id", None)):
                return answer

    def fetch(self, endpoint: str, request: FetchRequest, on_chunk: Callable[[LayerChunk], None],
              timeout_s: float, idle: Optional[Callable[[], None]] = None,
              on_start: Optional[Callable[[NcclSendStart], None]] = None) -> FetchDone:
        """Send ``request``, pass each chunk to ``on_chunk``; raise FetchFailed unless done.

        ``idle`` runs every few ms while waiting (e.g. to answer our own peers' fetches,
        so two servers fetching from each other do not deadlock until the timeout).
        ``on_start`` receives an NcclSendStart (nccl plane; without it: a protocol error).
        """
        socket = self._socket(endpoint)
        try:
            end = self._exchange(socket, endpoint, request, on_chunk, timeout_s, idle, on_start)
        except BaseException:
            # timeout, protocol error or on_chunk raising: the rest of that stream (late or
            # corrupt frames) would reach the next fetch on this socket, so never reuse it
            self._drop_socket(endpoint)
            raise
        if isinstance(end, FetchError):
            raise FetchFailed(end.code, end.message)  # the stream ended cleanly: keep the socket
        return end

    def _exchange(self, socket: zmq.Socket, endpoint: str, request: FetchRequest,
                  on_chunk: Callable[[LayerChunk], None], timeout_s: float,
                  idle: Optional[Callable[[], None]], on_start=None) -> FetchDone | FetchError:
        socket.send_multipart(wire.encode(request, self.secret))
        deadline, num_chunks = time.monotonic() + timeout_s, 0
        while True:
            msg = self._recv(socket, deadline, idle)
            if msg is None:
                raise FetchFailed("timeout", f"no answer from {endpoint} within {timeout_s:.3g} s")
            if getattr(msg, "request_id", None) != request.request_id:
                continue  # a late answer to an earlier, abandoned request
            if isinstance(msg, LayerChunk):
                on_chunk(msg)
                num_chunks += 1
            elif isinstance(msg, NcclSendStart) and on_start is not None:
                on_start(msg)
            elif isinstance(msg, FetchError):
                return msg
            elif isinstance(msg, FetchDone):
                if msg.num_chunks != num_chunks:
                    raise FetchFailed("protocol", f"{num_chunks} chunks arrived, sender says {msg.num_chunks}")
                return msg
            else:
                raise FetchFailed("protocol", f"unexpected {msg.kind}")

    def _recv(self, socket: zmq.Socket, deadline: float, idle) -> Optional[Message]:
        while True:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                return None
            if socket.poll(min(left_ms, 5 if idle else left_ms), zmq.POLLIN):
                frames = socket.recv_multipart(copy=False)
                try:
                    return wire.decode([f.buffer for f in frames], self.secret, self.limits)
                except WireError as exc:
                    raise FetchFailed("protocol", f"bad frame: {exc}") from exc
            if idle is not None:
                idle()

    def _socket(self, endpoint: str) -> zmq.Socket:
        if endpoint not in self._sockets:
            socket = self.context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.MAXMSGSIZE, self.limits.max_frame_bytes)  # a chunk's payload at most
            socket.connect(endpoint)
            self._sockets[endpoint] = socket
        return self._sockets[endpoint]

    def _drop_socket(self, endpoint: str) -> None:
        socket = self._sockets.pop(endpoint, None)
        if socket is not None:
            socket.close(0)

    def close(self) -> None:
        for endpoint in list(self._sockets):
            self._drop_socket(endpoint)
