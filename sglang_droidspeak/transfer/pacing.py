"""A sender-side link throttle: a token bucket that paces outgoing bytes to ``gbps``.

Setting ``throttle_gbps`` (the sender's) makes the FetchServer call ``consume(n)`` before
it sends each frame of n payload bytes, so the fallback (ZMQ) path looks like a link of
that speed for the bandwidth sweep (DroidSpeak's Fig. 20: 10, 25, 100 Gbit/s).

    state            meaning
    bytes_per_s      gbps * 1e9 / 8
    tokens           bytes that may go out now; refilled at bytes_per_s up to burst_bytes,
                     may go negative: a frame larger than the bucket waits for its debt
    consume(n)       refill by (now - last) * bytes_per_s, take n; if tokens < 0 sleep
                     -tokens / bytes_per_s (the sleep's own refill brings tokens back to 0)

So k frames of n bytes sent back to back from a full bucket take
max(0, (k * n - burst_bytes) / bytes_per_s) seconds, the link's time minus one burst.

Which pacer paces a request is the ``PacerPolicy``'s choice (FetchServer and the cuda_ipc
IpcExporter share one per server):

    request.link_gbps   allow_request_throttle   pacer
    0                   either                   the server's own (throttle_gbps; None: none)
    > 0                 true                     a fresh LinkPacer(link_gbps) for that request
    > 0                 false                    the server's own; the rate is ignored (one
                                                 warning per server)

The trade-off: the export runs on the sender's scheduler thread (FetchServer.poll from
the loop hook), so the pacing sleeps there, and the sender runs no batch meanwhile. The
sleep per request is bounded by what that request's bytes take on the emulated link
(the stream's send time is subtracted, the burst too), i.e. never longer than the fetch
itself would hold a real link: with 10 Gbit/s, 2.1 GB of 16K-token 8B K/V holds the
sender's scheduler for about 1.7 s. A benchmark knob, off by default; a production
throttle would pace on a sender thread of its own. That is also why a request's own
rate is honoured only with ``allow_request_throttle``: any peer holding the secret could
otherwise stall the sender's scheduler for as long as it likes (1 Gbit/s on 2 GB: 16 s).
``clock`` and ``sleep`` are injectable (tests check the arithmetic exactly, without
timing). No SGLang, no torch.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

BITS_PER_BYTE = 8
DEFAULT_BURST_BYTES = 1 << 20  # 1 MiB: a few frames' worth of slack, far below a 16K stream
logger = logging.getLogger(__name__)


class PacingError(ValueError):
    """A bad throttle rate or burst; the message names the field."""


class LinkPacer:
    def __init__(self, gbps: float, burst_bytes: int = DEFAULT_BURST_BYTES,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if isinstance(gbps, bool) or not isinstance(gbps, (int, float)) or not math.isfinite(gbps) or gbps <= 0:
            raise PacingError(f"throttle_gbps must be a finite number > 0, got {gbps!r}")
        if isinstance(burst_bytes, bool) or not isinstance(burst_bytes, int) or burst_bytes < 0:
            raise PacingError(f"burst_bytes must be an int >= 0, got {burst_bytes!r}")
        self.gbps, self.burst_bytes = float(gbps), burst_bytes
        self.bytes_per_s = self.gbps * 1e9 / BITS_PER_BYTE
        self.clock, self.sleep = clock, sleep
        self.tokens = float(burst_bytes)
        self.last = clock()
        self.num_bytes = 0
        self.slept_s = 0.0  # total pacing delay, for logs

    def delay_s(self, num_bytes: int) -> float:
        """Take ``num_bytes`` from the bucket; the seconds to wait before sending them."""
        now = self.clock()
        self.tokens = min(float(self.burst_bytes), self.tokens + (now - self.last) * self.bytes_per_s)
        self.last = now
        self.tokens -= num_bytes
        self.num_bytes += num_bytes
        return 0.0 if self.tokens >= 0 else -self.tokens / self.bytes_per_s

    def consume(self, num_bytes: int) -> float:
        """Wait until ``num_bytes`` may go out on the emulated link; returns the wait in seconds."""
        wait = self.delay_s(num_bytes)
        if wait > 0:
            self.sleep(wait)
            self.slept_s += wait
        return wait


class PacerPolicy:
    """The pacer for one request (see the module table); ``make_pacer(gbps)`` builds a
    request's own pacer (tests inject a fake clock through it)."""

    def __init__(self, server_pacer: Optional[LinkPacer] = None, allow_request_throttle: bool = False,
                 make_pacer: Callable[[float], LinkPacer] = LinkPacer):
        self.server_pacer, self.allow_request_throttle = server_pacer, allow_request_throttle
        self.make_pacer = make_pacer
        self._warned = False

    def for_request(self, link_gbps: float) -> Optional[LinkPacer]:
        """The pacer for a request asking for ``link_gbps`` (0: no rate of its own)."""
        if link_gbps <= 0:
            return self.server_pacer
        if self.allow_request_throttle:
            return self.make_pacer(link_gbps)
        if not self._warned:
            self._warned = True
            logger.warning("droidspeak: a peer asked for a %g Gbit/s link; ignoring request rates (this sender "
                           "has allow_request_throttle: false)", link_gbps)
        return self.server_pacer
