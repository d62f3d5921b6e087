"""The zmq plane: E and K/V as LayerChunks on the fetch socket (host staging, HMAC-signed).

The universal fallback: every sender answers it, and every other plane's receiver uses it
for a peer that cannot take its own plane.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch

from sglang_droidspeak.transfer.frames import FetchDone, FetchError, FetchRequest, Message
from sglang_droidspeak.transfer.planes.base import KvSink, PlaneReceiver, PlaneSender, PlaneSpec
from sglang_droidspeak.transfer.planes.chunks import e_chunks, kv_chunks


class ZmqSender(PlaneSender):
    def __init__(self, kv_pool: Any):
        self.kv_pool = kv_pool

    def refusal(self, request: FetchRequest) -> Optional[FetchError]:
        return None

    def export(self, request: FetchRequest, slots: torch.Tensor, e: dict) -> Iterator[Message]:
        num_chunks = 0
        for chunk in (*e_chunks(request, e), *kv_chunks(request, slots, self.kv_pool)):
            yield chunk
            num_chunks += 1
        yield FetchDone(request.request_id, num_chunks)


class ZmqReceiver(PlaneReceiver):
    def __init__(self, client: Any):
        self.client = client

    def fetch(self, endpoint: str, request: FetchRequest, sink: KvSink, timeout_s: float,
              idle: Optional[Callable[[], None]] = None) -> FetchDone:
        return self.client.fetch(endpoint, request, sink, timeout_s, idle)


PLANE = PlaneSpec("zmq", lambda ctx: ZmqSender(ctx.kv_pool), lambda ctx: ZmqReceiver(ctx.client))
