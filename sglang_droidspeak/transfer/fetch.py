"""The fetch exchange over ZMQ, sender side: one request, a stream of chunks, one terminal message.

    receiver (DEALER)                         sender (ROUTER)
    FetchRequest            ------------->    FetchServer.poll(handler)
                            <-------------    LayerChunk * n   (E first, then K/V by layer)
                            <-------------    FetchDone(n) | FetchError(code)

The receiver's side is fetch_client.py (FetchClient). A data plane's control frames
(transfer/planes/) share the socket: the server hands each to ``on_control`` and sends
back what it returns (nothing for a pool offer, the accept for a channel offer). Every
frame is ``wire.encode``d (HMAC, timestamp, nonce); what does not decode (or is stale or
replayed) is dropped by the server; answers are bound to the request's own id. The
server never blocks: ``poll`` drains what is queued, so it runs on SGLang's scheduler
thread between batches. A handler that must wait for the GPU (the sender's E on demand)
yields ``PENDING``: its answer is parked and resumed at a later ``poll``, so the scheduler
is not held meanwhile. With ``pacing`` (transfer/pacing.py) it sleeps before each frame
to keep to a link rate, holding the scheduler thread that long. No SGLang imports.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator, Optional

import zmq

from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.drops import DropLog
from sglang_droidspeak.transfer.frames import MESSAGE_TYPES, FetchError, FetchRequest, Message
from sglang_droidspeak.transfer.pacing import PacerPolicy
from sglang_droidspeak.transfer.replay import ReplayGuard
from sglang_droidspeak.transfer.schema import WireError

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
