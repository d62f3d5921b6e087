"""sglang/planes.py: which plane objects a runtime gets (CPU; no plane is exercised here)."""

from __future__ import annotations

import sys
from types import SimpleNamespace

from sglang_droidspeak.sglang.planes import Planes, build_planes


def test_nccl_without_its_library_falls_back_to_zmq(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "sglang_droidspeak.sglang.nccl_channel", None)  # import -> ImportError
    settings = SimpleNamespace(data_plane="nccl")
    planes = build_planes(settings, "m", parts=None, num_layers=4, secret=b"s" * 16, server=object(),
                          client=object())
    assert planes == Planes()
    assert "data_plane nccl unavailable" in caplog.text


def test_zmq_and_roleless_servers_get_no_plane_objects():
    for plane, server, client in (("zmq", object(), object()), ("nccl", None, None)):
        assert build_planes(SimpleNamespace(data_plane=plane), "m", None, 4, None, server, client) == Planes()
