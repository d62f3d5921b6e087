"""The fetch exchange over ZMQ, receiver side: ``FetchClient`` (the exchange and its
sender, FetchServer: fetch.py).

    call     sends                          waits for
    send     a plane's control frame        nothing (a pool offer; ZMQ keeps the order)
    ask      a plane's control frame        the answer naming it (a channel offer's accept)
                                            or a FetchError; None after the timeout
                                            or a bad frame
    fetch    FetchRequest                   LayerChunks (to ``on_chunk``), then FetchDone;
                                            a plane's frame naming the request goes to
                                            ``on_start`` (its "sends follow" notice)

A frame that does not decode, a timeout or a FetchError ends a fetch with ``FetchFailed``;
answers to an earlier, abandoned request are skipped. A fetch that ends other than
cleanly (timeout, protocol error, ``on_chunk`` raising) closes its endpoint's socket, so
what is left of that stream never reaches the next exchange. No SGLang imports.
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Optional

import zmq

from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.errors import FetchFailed
from sglang_droidspeak.transfer.fetch import _is_control
from sglang_droidspeak.transfer.frames import FetchDone, FetchError, FetchRequest, LayerChunk, Message
from sglang_droidspeak.transfer.schema import WireError


class ExchangeTimes(NamedTuple):
    """Where one fetch exchange's time went (ms after the request was sent; ``sent_ms`` is
    CLOCK_MONOTONIC, which every process of a host shares, to line up with the sender's log)."""

    sent_ms: float
    first_ms: float  # the first answer frame decoded (-1: none)
    done_ms: float  # the terminal frame decoded (-1: none)
    num_chunks: int
    chunk_ms: float  # spent inside ``on_chunk``

    def log_text(self) -> str:
        return (f"sent at {self.sent_ms:.1f} (monotonic), first answer +{self.first_ms:.1f}, "
                f"done +{self.done_ms:.1f}, {self.num_chunks} chunks taking {self.chunk_ms:.1f}")


class FetchClient:
    """Fetches from sender endpoints; one DEALER per endpoint, reused across fetches.
    ``last_exchange`` holds the latest fetch's ExchangeTimes (also a failed one's)."""

    def __init__(self, secret: bytes, context: Optional[zmq.Context] = None,
                 limits: wire.WireLimits = wire.WireLimits()):
        self.secret, self.limits = secret, limits
        self.context = context or zmq.Context.instance()
        self._sockets: dict[str, zmq.Socket] = {}
        self.last_exchange: Optional[ExchangeTimes] = None

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
        sent, sent_mono = time.perf_counter(), time.monotonic()
        deadline, num_chunks, stamps, chunk_s = sent_mono + timeout_s, 0, {}, 0.0
        try:
            while True:
                msg = self._recv(socket, deadline, idle)
                if msg is None:
                    raise FetchFailed("timeout", f"no answer from {endpoint} within {timeout_s:.3g} s")
                stamps.setdefault("first", time.perf_counter())
                if getattr(msg, "request_id", None) != request.request_id:
                    continue  # a late answer to an earlier, abandoned request
                if isinstance(msg, LayerChunk):
                    began = time.perf_counter()
                    try:
                        on_chunk(msg)
                    finally:
                        chunk_s += time.perf_counter() - began
                    num_chunks += 1
                elif _is_control(msg) and on_start is not None:
                    on_start(msg)
                elif isinstance(msg, (FetchError, FetchDone)):
                    stamps["done"] = time.perf_counter()
                    if isinstance(msg, FetchDone) and msg.num_chunks != num_chunks:
                        raise FetchFailed("protocol", f"{num_chunks} chunks arrived, sender says {msg.num_chunks}")
                    return msg
                else:
                    raise FetchFailed("protocol", f"unexpected {msg.kind}")
        finally:
            ms = {k: 1e3 * (t - sent) for k, t in stamps.items()}
            self.last_exchange = ExchangeTimes(1e3 * sent_mono, ms.get("first", -1.0), ms.get("done", -1.0),
                                               num_chunks, 1e3 * chunk_s)

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
