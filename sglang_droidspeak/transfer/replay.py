"""Replay protection for signed messages: a timestamp window and a cache of seen nonces.

Every frame ``wire.encode`` writes carries ``ts`` (the sender's wall clock, ms since the
epoch) and ``nonce`` (16 random bytes) inside the MAC. A receiver that faces the network
(FetchServer, DirectoryListener) passes its ``ReplayGuard`` to ``wire.decode``, which calls
``check`` after the MAC verified:

    ts older than now - window_s             StaleMessage   (a frame recorded earlier)
    ts newer than now + window_s             StaleMessage   (a clock far ahead, or forged)
    nonce seen within the window             ReplayedMessage
    max_entries nonces of the last window    ReplayedMessage("replay cache full") for
                                             new ones: the guard fails closed, it never
                                             forgets a nonce that is still inside the window

Memory: at most ``max_entries`` nonces (about 140 bytes each: 9 MiB at the default).
Clocks of peers must agree within ``window_s`` (NTP does far better). Not thread-safe:
each receiving thread owns its guard. docs/ROBUSTNESS.md has what a replayed or stolen
frame can and cannot do.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

from sglang_droidspeak.transfer.schema import ReplayedMessage, StaleMessage

NONCE_LEN = 16
DEFAULT_WINDOW_S = 30.0
DEFAULT_MAX_ENTRIES = 1 << 16


def now_ms() -> int:
    """The timestamp ``wire.encode`` writes: wall-clock milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class ReplayGuard:
    """Accepts each (ts, nonce) once, and only while ts is within ``window_s`` of now."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock_ms: Callable[[], int] = now_ms):
        if not window_s > 0 or max_entries < 1:
            raise ValueError(f"window_s must be > 0 and max_entries >= 1, got {window_s!r}, {max_entries!r}")
        self.window_ms, self.max_entries, self._clock_ms = int(window_s * 1000), max_entries, clock_ms
        self._seen: OrderedDict[bytes, int] = OrderedDict()  # nonce -> ts, in arrival order

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, ts: int, nonce: bytes) -> None:
        """Record ``nonce``; StaleMessage or ReplayedMessage if the message must be dropped."""
        now = self._clock_ms()
        if ts < now - self.window_ms or ts > now + self.window_ms:
            raise StaleMessage(f"timestamp {(ts - now) / 1000:+.1f} s from now is outside the "
                               f"{self.window_ms / 1000:g} s window")
        self._forget_older_than(now - self.window_ms)
        if nonce in self._seen:
            raise ReplayedMessage("nonce already seen: a replayed message")
        if len(self._seen) >= self.max_entries:
            raise ReplayedMessage(f"replay cache full ({self.max_entries} messages in {self.window_ms / 1000:g} s)")
        self._seen[nonce] = ts

    def _forget_older_than(self, oldest_ms: int) -> None:
        """Drop nonces from the front while their ts is out of the window (a replay of them
        is stale anyway). Arrival order is close to ts order; one late straggler only
        delays forgetting, it never forgets a nonce still inside the window."""
        while self._seen:
            nonce, ts = next(iter(self._seen.items()))
            if ts >= oldest_ms:
                return
            del self._seen[nonce]
