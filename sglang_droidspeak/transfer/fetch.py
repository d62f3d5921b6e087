"""The fetch exchange over ZMQ: one request, a stream of chunks, one terminal message.

    receiver (DEALER)                         sender (ROUTER)
    FetchRequest            ------------->    FetchServer.poll(handler)
                            <-------------    LayerChunk * n   (E first, then K/V by layer)
                            <-------------    FetchDone(n) | FetchError(code)

A data plane's control frames (transfer/planes/) share the socket: the receiver may
``send`` one that gets no answer (a pool offer; ZMQ keeps the order) or ``ask`` one and
wait for the answer naming it (a channel offer); the server hands each to ``on_control``
and sends back what it returns. Any other frame during a fetch goes to the client's
``on_start`` (a plane's "sends follow" notice). Every frame is ``wire.encode``d (HMAC, timestamp,
nonce); what does not decode (or is stale or replayed) is dropped by the server and ends
the client's fetch with ``FetchFailed``; answers are bound to the request's own id. The
server never blocks: ``poll`` drains what is queued, so it runs on SGLang's scheduler
thread between batches. A handler that must wait for the GPU (the sender's E on demand)
yields ``PENDING``: its answer is parked and resumed at a later ``poll``, so the scheduler
is not held meanwhile. With ``pacing`` (transfer/pacing.py) it sleeps before each frame
to keep to a link rate, holding the scheduler thread that long. No SGLang imports.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Iterator, Optional

import zmq

from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.drops import DropLog
from sglang_droidspeak.transfer.errors import FetchFailed  # noqa: F401 - re-exported
from sglang_droidspeak.transfer.frames import (
    MESSAGE_TYPES, FetchDone, FetchError, FetchRequest, LayerChunk, Message, WireError)
from sglang_droidspeak.transfer.pacing import PacerPolicy
from sglang_droidspeak.transfer.replay import ReplayGuard

logger = logging.getLogger(__name__)
Handler = Callable[[FetchRequest], Iterable[Message]]
ControlHandler = Callable[[Message], Optional[Message]]  # a plane's control frame -> its answer


PENDING = object()  # yielded by a handler: not ready, resume this answer at a later poll


class UnexpectedFrame(LookupError):
    """Raised by an ``on_control`` that takes no frame of this kind: the frame is dropped."""


def _is_control(msg: Message) -> bool:
    return type(msg) not in MESSAGE_TYPES.values()


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
        self._parked: list[tuple[bytes, FetchRequest, Iterator[Message], object]] = []  # answers at PENDING

    @property
    def num_dropped(self) -> int:
        return self.drops.total

    def poll(self, handler: Handler, max_requests: int = 16, on_control: Optional[ControlHandler] = None) -> int:
        """Answer up to ``max_requests`` queued requests without blocking; returns how many.

        A data plane's control frame goes to ``on_control`` (not a request); what it
        returns is sent back; UnexpectedFrame from it (or no handler) drops the frame.
        """
        parked, self._parked = self._parked, []
        for identity, request, answer, pacer in parked:
            self._drive(identity, request, answer, pacer)
        served = 0
        while served < max_requests:
            try:
                identity, *frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = self._decode(frames)
            if msg is not None and _is_control(msg):
                self._take_control(identity.bytes, msg, on_control)
            elif msg is not None:
                self._answer(identity.bytes, msg, handler)
                served += 1
        return served

    def _take_control(self, identity: bytes, msg: Message, on_control: Optional[ControlHandler]) -> None:
        try:
            if on_control is None:
                raise UnexpectedFrame(msg.kind)
            answer = on_control(msg)
        except UnexpectedFrame:
            self.drops.drop("unexpected", f"a {msg.kind} on the fetch socket")
            return
        except Exception:  # the handler's bug must not kill the scheduler
            logger.exception("droidspeak: %s handler failed", msg.kind)
            return
        if answer is not None:
            self.socket.send_multipart([identity, *wire.encode(answer, self.secret)])

    def _decode(self, frames) -> Optional[Message]:
        try:
            msg = wire.decode([f.buffer for f in frames], self.secret, self.limits, self.replay)
        except WireError as exc:
            self.drops.drop(exc.reason, str(exc))
            return None
        if not isinstance(msg, FetchRequest) and not _is_control(msg):
            self.drops.drop("unexpected", f"a {msg.kind} on the fetch socket")
            return None
        return msg

    def _answer(self, identity: bytes, request: FetchRequest, handler: Handler) -> None:
        try:
            pacer = self.pacing.for_request(request.link_gbps)
            answer = iter(handler(request))
        except Exception as exc:  # the handler's bug must not kill the scheduler
            self._fail(identity, request, exc)
            return
        self._drive(identity, request, answer, pacer)

    def _drive(self, identity: bytes, request: FetchRequest, answer: Iterator[Message], pacer) -> None:
        """Send what ``answer`` yields until it ends, or park it at PENDING."""
        try:
            for msg in answer:
                if msg is PENDING:
                    self._parked.append((identity, request, answer, pacer))
                    return
                frames = wire.encode(msg, self.secret)
                if pacer is not None:
                    pacer.consume(sum(len(frame) for frame in frames))
                self.socket.send_multipart([identity, *frames], copy=False)
            self.num_served += 1
        except Exception as exc:  # the handler's bug must not kill the scheduler
            self._fail(identity, request, exc)

    def _fail(self, identity: bytes, request: FetchRequest, exc: Exception) -> None:
        logger.exception("droidspeak: fetch handler failed")
        error = FetchError(request.request_id, "internal", str(exc)[:200])
        self.socket.send_multipart([identity, *wire.encode(error, self.secret)])

    @property
    def num_parked(self) -> int:
        return len(self._parked)

    def close(self) -> None:
        for _, _, answer, _ in self._parked:
            getattr(answer, "close", lambda: None)()  # its finally blocks release what it holds
        self._parked = []
        self.socket.close(0)


class FetchClient:
    """Fetches from sender endpoints; one DEALER per endpoint, reused across fetches."""

    def __init__(self, secret: bytes, context: Optional[zmq.Context] = None,
                 limits: wire.WireLimits = wire.WireLimits()):
        self.secret, self.limits = secret, limits
        self.context = context or zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket] = {}

    def send(self, endpoint: str, msg: Message) -> None:
        """Send one control frame that gets no answer (a pool offer) ahead of the next fetch."""
        self._socket(endpoint).send_multipart(wire.encode(msg, self.secret))

    def ask(self, endpoint: str, msg: Message, timeout_s: float,
            idle: Optional[Callable[[], None]] = None) -> Optional[Message]:
        """Send control frame ``msg`` and return the answer naming it (the value of its
        ``REPLY_FIELD`` as the answer's ``channel_id``/``request_id``/...: a plane's accept or a
        FetchError); None after ``timeout_s``."""
        reply_to = getattr(msg, msg.REPLY_FIELD)
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
            if _is_control(answer) and getattr(answer, msg.REPLY_FIELD, None) == reply_to:
                return answer
            if isinstance(answer, FetchError) and answer.request_id == reply_to:
                return answer

    def fetch(self, endpoint: str, request: FetchRequest, on_chunk: Callable[[LayerChunk], None],
              timeout_s: float, idle: Optional[Callable[[], None]] = None,
              on_start: Optional[Callable[[Message], None]] = None) -> FetchDone:
        """Send ``request``, pass each chunk to ``on_chunk``; raise FetchFailed unless done.

        ``idle`` runs every few ms while waiting (e.g. to answer our own peers' fetches,
        so two servers fetching from each other do not deadlock until the timeout).
        ``on_start`` receives a plane's control frame naming this request (the nccl plane's
        NcclSendStart; without it: a protocol error).
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
            elif _is_control(msg) and on_start is not None:
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
