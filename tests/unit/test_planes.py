"""sglang/planes.py and transfer/planes/registry.py: which plane objects a runtime gets,
and how control frames are dispatched (CPU; the planes' transfers run elsewhere)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from sglang_droidspeak.sglang.planes import PlaneSet, build_planes
from sglang_droidspeak.transfer import wire
from sglang_droidspeak.transfer.fetch import UnexpectedFrame
from sglang_droidspeak.transfer.planes import registry
from sglang_droidspeak.transfer.planes.base import PlaneContext, PlaneReceiver, PlaneSender
from sglang_droidspeak.transfer.planes.cuda_ipc.sender import IpcExporter
from sglang_droidspeak.transfer.planes.nccl.frames import NcclPairOffer
from sglang_droidspeak.transfer.planes.zmq.plane import ZmqReceiver, ZmqSender

POOL = SimpleNamespace(device=torch.device("cpu"), get_key_buffer=lambda layer: torch.zeros(4, 2, 8))


def context(backend=None) -> PlaneContext:
    return PlaneContext("m", POOL, 4, 16, torch.float32, 1.0, b"s" * 16, client=object(), backend=backend)


def offer(channel_id="c1") -> NcclPairOffer:
    return NcclPairOffer(channel_id, "m", "127.0.0.1", 5000, 2, 0, "float32", (2, 8), 16, "float32", "")


def test_every_plane_is_registered_with_its_frames_and_error_codes():
    assert registry.names()[0] == "zmq" and set(registry.names()) >= {"zmq", "cuda_ipc", "nccl"}
    for name in registry.names():
        assert registry.spec(name).name == name
    assert {"ipc_pool_offer", "nccl_pair_offer", "nccl_send_start"} <= set(wire.KINDS)
    assert {"no_offer", "ipc_unavailable", "nccl_unavailable", "no_channel"} <= set(registry.error_codes())


def test_nccl_without_its_library_falls_back_to_zmq(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "sglang_droidspeak.sglang.nccl_channel", None)  # import -> ImportError
    planes = build_planes(SimpleNamespace(data_plane="nccl"), context(), server=object(), client=object())
    assert list(planes.senders) == ["zmq"] and isinstance(planes.senders["zmq"], ZmqSender)
    assert isinstance(planes.receiver, ZmqReceiver)
    assert "data_plane nccl unavailable" in caplog.text


def test_a_sender_keeps_zmq_beside_its_plane_and_a_roleless_server_gets_nothing():
    planes = build_planes(SimpleNamespace(data_plane="cuda_ipc"), context(backend=object()), object(), None)
    assert list(planes.senders) == ["zmq", "cuda_ipc"] and isinstance(planes.senders["cuda_ipc"], IpcExporter)
    assert planes.receiver is None
    assert build_planes(SimpleNamespace(data_plane="nccl"), context(), None, None) == PlaneSet()
    assert all(isinstance(s, PlaneSender) for s in planes.senders.values())
    assert isinstance(build_planes(SimpleNamespace(data_plane="zmq"), context(), None, object()).receiver,
                      PlaneReceiver)


def test_control_frames_go_to_their_planes_sender_or_get_the_planes_refusal():
    planes = build_planes(SimpleNamespace(data_plane="zmq"), context(), object(), None)
    refusal = planes.on_control(offer("c9"))  # no nccl sender here: refused at once, naming the channel
    assert (refusal.kind, refusal.request_id, refusal.code) == ("fetch_error", "c9", "nccl_unavailable")
    from cpu_ipc import offer_for

    with pytest.raises(UnexpectedFrame):  # an IPC offer gets no answer: dropped where no sender takes it
        planes.on_control(offer_for("o1", "m", "GPU-x", torch.zeros(4, 2, 8), 1))
