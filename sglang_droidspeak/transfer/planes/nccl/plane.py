"""The nccl plane (servers on different GPUs): one pair channel per (receiver, sender),
opened through a TCPStore the receiver hosts (frames.NcclPairOffer); E and K/V move on it.

The GPU backend (sglang/nccl_channel.NcclPairBackend: SGLang's PyNcclCommunicator) is
imported only when the plane is built; without its library the server uses zmq. CPU tests
pass channel.GlooPairBackend. A server not on this plane refuses a pair offer at once.
"""

from __future__ import annotations

from sglang_droidspeak.transfer.frames import FetchError
from sglang_droidspeak.transfer.planes.base import PlaneContext, PlaneSpec, PlaneUnavailable
from sglang_droidspeak.transfer.planes.nccl.frames import NcclPairOffer
from sglang_droidspeak.transfer.planes.nccl.receiver import NcclFetcher, NcclLayout
from sglang_droidspeak.transfer.planes.nccl.sender import NcclExporter

OPEN_TIMEOUT_S = 30.0  # the pair rendezvous (store wait); transfers are bounded per fetch


def _backend(ctx: PlaneContext):
    if ctx.backend is not None:
        return ctx.backend
    try:
        from sglang_droidspeak.sglang.nccl_channel import NcclPairBackend
    except ImportError as exc:  # e.g. no NCCL library
        raise PlaneUnavailable(str(exc)) from exc
    return NcclPairBackend(ctx.secret, OPEN_TIMEOUT_S)


def _dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _receiver(ctx: PlaneContext) -> NcclFetcher:
    k_cache = ctx.kv_pool.get_key_buffer(0)  # [slots, kv_heads, head_dim]
    layout = NcclLayout(ctx.model, ctx.host, _dtype_name(k_cache.dtype), tuple(k_cache.shape[1:]),
                        ctx.hidden_size, _dtype_name(ctx.e_dtype), k_cache.device)
    return NcclFetcher(_backend(ctx), ctx.client, layout)


def _refuse(msg) -> FetchError | None:
    if isinstance(msg, NcclPairOffer):
        return FetchError(msg.channel_id, "nccl_unavailable", "this sender is not on the nccl plane")
    return None


PLANE = PlaneSpec(
    "nccl",
    build_sender=lambda ctx: NcclExporter(_backend(ctx), ctx.kv_pool, ctx.model, ctx.hidden_size,
                                          ctx.fetch_timeout_s),
    build_receiver=_receiver,
    refuse=_refuse,
    unavailable_code="nccl_unavailable")
