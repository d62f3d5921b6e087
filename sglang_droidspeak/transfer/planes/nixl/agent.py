"""A thin wrapper over one NIXL agent (``nixl_agent`` of the nixl / nixl-cu13 / nixl-cu12
wheel, UCX backend): register memory once, exchange metadata, post WRITEs with a
notification, read notifications. Imports NIXL only when an agent is made; without it
``PlaneUnavailable`` (the server uses zmq). UCX picks the transport (``UCX_TLS``,
``UCX_NET_DEVICES``: docs/PLANES.md)."""

from __future__ import annotations

import importlib
from typing import Any, Sequence

import numpy as np
import torch

from sglang_droidspeak.transfer.planes.base import PlaneUnavailable

_MODULES = ("nixl._api", "nixl_cu13", "nixl_cu12")


def _nixl() -> Any:
    errors = []
    for name in _MODULES:
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise PlaneUnavailable("no NIXL package (pip install 'sglang-droidspeak[nixl]'): " + "; ".join(errors))


def mem_of(tensor: torch.Tensor) -> tuple[str, int]:
    """(NIXL memory type, device id) of a tensor."""
    return ("VRAM", tensor.device.index or 0) if tensor.is_cuda else ("DRAM", 0)


class Agent:
    def __init__(self, name: str):
        nixl = _nixl()
        self.name = name
        try:
            self.agent = nixl.nixl_agent(name, nixl.nixl_agent_config(backends=["UCX"]))
        except Exception as exc:  # noqa: BLE001 - no UCX plugin, no transport
            raise PlaneUnavailable(f"cannot start a NIXL agent: {exc}") from exc
        if "UCX" not in self.agent.backends:
            raise PlaneUnavailable("NIXL has no UCX backend here")
        self._regs: list = []

    def register(self, tensors: Sequence[torch.Tensor]) -> None:
        self._regs.append(self.agent.register_memory(list(tensors)))

    def metadata(self) -> bytes:
        return self.agent.get_agent_metadata()

    def add_peer(self, metadata: bytes) -> str:
        name = self.agent.add_remote_agent(metadata)
        return name.decode() if isinstance(name, bytes) else name

    def remove_peer(self, name: str) -> None:
        self.agent.remove_remote_agent(name)

    def write(self, local: np.ndarray, local_mem: str, remote: np.ndarray, remote_mem: str, peer: str,
              notif: bytes) -> Any:
        """Post one WRITE of ``local`` -> ``remote`` regions ([k, 3]: address, bytes, device);
        ``notif`` reaches the peer once it has landed."""
        handle = self.agent.initialize_xfer("WRITE", self.agent.get_xfer_descs(local, local_mem),
                                            self.agent.get_xfer_descs(remote, remote_mem), peer, notif)
        if self.agent.transfer(handle) == "ERR":
            raise RuntimeError("NIXL refused to post the write")
        return handle

    def state(self, handle: Any) -> str:
        """'DONE', 'PROC' or 'ERR'."""
        return self.agent.check_xfer_state(handle)

    def release(self, handle: Any) -> None:
        self.agent.release_xfer_handle(handle)

    def notifs(self) -> dict:
        return self.agent.get_new_notifs()

    def close(self) -> None:
        """Deregister everything: the peers' rkeys for it stop working."""
        for reg in self._regs:
            self.agent.deregister_memory(reg)
        self._regs.clear()
        self.agent = None
