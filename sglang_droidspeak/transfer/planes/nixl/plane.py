"""The nixl plane (servers on any hosts): NIXL's UCX backend (RDMA, NVLink, TCP; the
transport UCX picks, docs/PLANES.md) writes E and the reused layers' K/V from the sender's
registered pool straight into the receiver's registered slots, one WRITE per layer with a
notification. The receiver's offer (frames.NixlPoolOffer: its agent's metadata) travels on
the HMAC-signed fetch socket. Without NIXL the server uses zmq.
"""

from __future__ import annotations

from sglang_droidspeak.transfer.planes.base import PlaneContext, PlaneSpec
from sglang_droidspeak.transfer.planes.nixl.agent import Agent, _nixl
from sglang_droidspeak.transfer.planes.nixl.receiver import NixlFetcher
from sglang_droidspeak.transfer.planes.nixl.sender import NixlExporter


def _factory(ctx: PlaneContext):
    if ctx.backend is not None:  # tests: an agent factory
        return ctx.backend
    _nixl()  # PlaneUnavailable now, not at the first fetch
    return Agent


PLANE = PlaneSpec(
    "nixl",
    build_sender=lambda ctx: NixlExporter(ctx.kv_pool, ctx.model, ctx.num_layers, ctx.fetch_timeout_s,
                                          _factory(ctx)),
    build_receiver=lambda ctx: NixlFetcher(ctx.client, ctx.model, ctx.kv_pool, ctx.num_layers, ctx.hidden_size,
                                           ctx.e_dtype, _factory(ctx)),
    unavailable_code="nixl_unavailable")
