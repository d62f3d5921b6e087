"""Prefix directory over ZMQ PUB/SUB: servers announce which prefixes they hold.

``Announcer`` publishes signed ``PrefixAnnounce`` messages on one bound socket;
``DirectoryListener`` subscribes to every peer's announcer and hands each valid announce
to a callback (typically ``RemotePrefixIndex.advertise`` / ``withdraw``).

Announcements are hints, not state: a subscriber misses whatever was published before
it connected (PUB/SUB "slow joiner") and while its queue was full, so a receiver must
treat a stale entry as an ordinary fetch miss.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional, Sequence

import zmq

from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.drops import DropLog, RateLimitedWarning
from sglang_droidspeak.transfer.frames import PrefixAnnounce
from sglang_droidspeak.transfer.replay import ReplayGuard
from sglang_droidspeak.transfer.schema import WireError
from sglang_droidspeak.transfer.wire import WireLimits

logger = logging.getLogger(__name__)

POLL_MS = 50  # listener poll timeout: close() returns within about this
MAX_BATCH = 256  # messages handled per poll wake-up before re-checking for close()
HEARTBEAT_IVL_MS = 1000  # a dead subscriber is dropped after HEARTBEAT_TIMEOUT_MS
HEARTBEAT_TIMEOUT_MS = 5000
SUBSCRIPTION_MAX_BYTES = 256  # XPUB: a subscriber only ever sends b"\x01" (subscribe to all)


class Announcer:
    """Publishes PrefixAnnounce messages on ``bind`` (e.g. "tcp://0.0.0.0:5600" or
    "tcp://127.0.0.1:*"; ``endpoint`` is the resolved address).

    The socket is an XPUB with XPUB_NODROP, which SUB peers see as a plain PUB: a full
    send queue then shows as a refused send instead of a silent drop. Consequence: one
    subscriber whose queue (``send_hwm`` messages plus its receive queue) is full makes
    ``publish`` return False for everyone until it drains or its heartbeat times out.
    Thread-safe.
    """

    def __init__(self, bind: str, secret: bytes, context: Optional[zmq.Context] = None,
                 send_hwm: int = 1000) -> None:
        wire._check_secret(secret)
        self._secret = secret
        self._lock = threading.Lock()
        self._closed = False
        self._socket = (context or zmq.Context.instance()).socket(zmq.XPUB)
        try:
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.setsockopt(zmq.SNDHWM, send_hwm)
            self._socket.setsockopt(zmq.XPUB_NODROP, 1)
            self._socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
            self._socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
            self._socket.setsockopt(zmq.MAXMSGSIZE, SUBSCRIPTION_MAX_BYTES)
            self._socket.bind(bind)
            self.endpoint: str = self._socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        except BaseException:
            self._socket.close(linger=0)
            raise

    def publish(self, msg: PrefixAnnounce) -> bool:
        """Queue ``msg`` for every connected subscriber without blocking.

        True: queued (not necessarily delivered; peers not yet subscribed never see it).
        False: some subscriber's queue is full, or the announcer is closed; nothing sent.
        Raises only TypeError for a ``msg`` that is not a PrefixAnnounce (a caller bug).
        """
        if type(msg) is not PrefixAnnounce:
            raise TypeError(f"publish needs a PrefixAnnounce, got {type(msg).__name__}")
        frames = wire.encode(msg, self._secret)
        with self._lock:
            if self._closed:
                return False
            try:
                self._drain_subscriptions()
                self._socket.send_multipart(frames, flags=zmq.NOBLOCK)
                return True
            except zmq.ZMQError:  # zmq.Again when a queue is full; anything else: hint lost
                return False

    def _drain_subscriptions(self) -> None:
        """XPUB queues (un)subscription notices for us; read them so they never pile up."""
        for _ in range(MAX_BATCH):
            try:
                self._socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def close(self) -> None:
        """Close the socket; idempotent. Later ``publish`` calls return False."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._socket.close(linger=0)

    def __enter__(self) -> "Announcer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class DirectoryListener:
    """A SUB socket subscribed to every endpoint in ``endpoints``, read by a daemon thread,
    or (``threaded=False``) by whoever calls ``poll()``: a server's scheduler tick, where no
    second Python thread has to win the GIL from SGLang's scheduler loop (docs/BENCHMARKS.md
    run 11: such threads waited 50-500 ms for a turn).

    Each received message is decoded with ``wire.decode(frames, secret, limits, replay)``;
    one that fails (bad MAC, garbage, wrong frame count, stale or replayed), is of another
    kind, or has more than ``limits.max_tokens`` token ids is dropped, counted in
    ``num_dropped`` (``drops.counts`` by reason, ``on_drop(reason)``) and logged at warning
    level (rate-limited per reason). Frames above ``limits.max_header_bytes`` never reach
    us (MAXMSGSIZE: ZMQ disconnects the peer). A valid one counts in ``num_received`` and is passed to
    ``on_announce`` on the listener thread; an exception from it is logged and counted in
    ``num_callback_errors`` and the thread goes on. ``close()`` returns within about
    POLL_MS plus the running callback (at once without a thread).
    """

    def __init__(self, endpoints: Sequence[str], secret: bytes,
                 on_announce: Callable[[PrefixAnnounce], None],
                 limits: WireLimits = WireLimits(),
                 context: Optional[zmq.Context] = None, replay: Optional[ReplayGuard] = None,
                 on_drop: Optional[Callable[[str], None]] = None, threaded: bool = True) -> None:
        wire._check_secret(secret)
        if isinstance(endpoints, str):
            raise TypeError("endpoints must be a sequence of endpoint strings, not one string")
        self._secret, self._limits, self._on_announce = secret, limits, on_announce
        self._replay = replay if replay is not None else ReplayGuard()
        self.drops = DropLog("a prefix directory message", on_drop, log=logger)
        self.num_received = 0
        self.num_callback_errors = 0
        self._warn_callback = RateLimitedWarning(log=logger)
        self._stop = threading.Event()
        self._socket = self._make_socket(context or zmq.Context.instance(), endpoints)
        self._thread: Optional[threading.Thread] = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name="droidspeak-directory", daemon=True)
            self._thread.start()

    @property
    def socket(self) -> zmq.Socket:
        """The SUB socket (e.g. for an idle sleeper's poller; read it only through ``poll``)."""
        return self._socket

    def poll(self) -> None:
        """Handle what has arrived, without blocking (``threaded=False`` only)."""
        if self._thread is not None:
            raise RuntimeError("a threaded DirectoryListener reads its socket on its own thread")
        if not self._stop.is_set():
            try:
                self._drain()
            except zmq.ZMQError as exc:  # e.g. the context was terminated under us
                logger.warning("prefix directory listener stopped: %s", exc)
                self.close()

    def _make_socket(self, context: zmq.Context, endpoints: Sequence[str]) -> zmq.Socket:
        socket = context.socket(zmq.SUB)
        try:
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.MAXMSGSIZE, self._limits.max_header_bytes)  # no payloads
            socket.setsockopt(zmq.SUBSCRIBE, b"")
            for endpoint in endpoints:
                socket.connect(endpoint)
        except BaseException:
            socket.close(linger=0)
            raise
        return socket

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._socket.poll(POLL_MS, zmq.POLLIN):
                    self._drain()
        except zmq.ZMQError as exc:  # e.g. the context was terminated under us
            logger.warning("prefix directory listener stopped: %s", exc)
        finally:
            self._socket.close(linger=0)

    def _drain(self) -> None:
        for _ in range(MAX_BATCH):
            if self._stop.is_set():
                return
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(frames)

    def _handle(self, frames: list[bytes]) -> None:
        try:
            msg = wire.decode(frames, self._secret, self._limits, self._replay)
        except WireError as exc:
            self.drops.drop(exc.reason, str(exc))
            return
        if type(msg) is not PrefixAnnounce:
            self.drops.drop("unexpected", f"expected prefix_announce, got {msg.kind}")
            return
        self.num_received += 1
        try:
            self._on_announce(msg)
        except Exception:
            self.num_callback_errors += 1
            self._warn_callback("on_announce raised; listener continues", exc_info=True)

    @property
    def num_dropped(self) -> int:
        return self.drops.total

    def close(self) -> None:
        """Stop the thread and join it (which closes the socket), or close the socket;
        idempotent."""
        already = self._stop.is_set()
        self._stop.set()
        if self._thread is None:
            if not already:
                self._socket.close(linger=0)
        elif threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> "DirectoryListener":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
