"""The cuda_ipc plane (two servers on one GPU): the receiver offers its KV pool's CUDA IPC
handles (frames.IpcPoolOffer) and an E staging area's, the sender copies K/V into its slots
and E into the staging area (sender.py). backend.CudaIpc shares and opens the buffers (a stand-in on the CPU)."""

from __future__ import annotations

from sglang_droidspeak.transfer.planes.base import PlaneContext, PlaneSpec
from sglang_droidspeak.transfer.planes.cuda_ipc.backend import CudaIpc
from sglang_droidspeak.transfer.planes.cuda_ipc.receiver import IpcFetcher
from sglang_droidspeak.transfer.planes.cuda_ipc.sender import IpcExporter


def _backend(ctx: PlaneContext):
    return ctx.backend if ctx.backend is not None else CudaIpc()


PLANE = PlaneSpec(
    "cuda_ipc",
    build_sender=lambda ctx: IpcExporter(_backend(ctx), ctx.kv_pool, pacing=ctx.pacing),
    build_receiver=lambda ctx: IpcFetcher(_backend(ctx), ctx.client, ctx.model, ctx.kv_pool, ctx.num_layers,
                                          ctx.hidden_size, ctx.e_dtype),
    unavailable_code="ipc_unavailable")
