"""A runtime's data plane (``data_plane`` setting): its sender and receiver, and the
dispatch of the planes' control frames, through transfer/planes/ only.

    role                  gets
    sender (export_bind)  the zmq sender (every request may fall back to it) and, on
                          another plane, that plane's sender
    receiver (peers)      the configured plane's receiver (it uses zmq per peer where
                          its plane does not work)

A plane this process cannot run (``PlaneUnavailable``: no library) leaves this server on
zmq, with one warning. ``backend`` is a stand-in the CPU tests pass (None: the plane's own).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional

from sglang_droidspeak.transfer.fetch import UnexpectedFrame
from sglang_droidspeak.transfer.planes import registry
from sglang_droidspeak.transfer.planes.base import PlaneContext, PlaneReceiver, PlaneSender, PlaneUnavailable

logger = logging.getLogger(__name__)


@dataclass
class PlaneSet:
    """``senders``: plane name -> its sender; ``receiver``: the fetching side (or None)."""

    senders: dict[str, PlaneSender] = field(default_factory=dict)
    receiver: Optional[PlaneReceiver] = None

    def on_control(self, msg: Any) -> Any:
        """The answer to a plane's control frame (FetchServer.poll's ``on_control``)."""
        for sender in self.senders.values():
            if isinstance(msg, sender.controls):
                return sender.accept(msg)
        plane = registry.spec_of_frame(msg)
        answer = plane.refuse(msg) if plane is not None else None
        if answer is None:
            raise UnexpectedFrame(msg.kind)
        return answer

    def bytes_out(self) -> int:
        return sum(sender.num_bytes_out for sender in self.senders.values())

    def close(self) -> None:
        for part in (*self.senders.values(), self.receiver):
            if part is not None:
                part.close()


def build_planes(settings: Any, context: PlaneContext, server: Any, client: Any) -> PlaneSet:
    """The plane objects for a runtime with FetchServer ``server`` / FetchClient ``client``."""
    zmq = registry.spec("zmq")
    name = settings.data_plane
    try:
        plane = registry.spec(name)
        sender = plane.build_sender(context) if server is not None else None
        receiver = plane.build_receiver(context) if client is not None else None
    except PlaneUnavailable as exc:
        logger.warning("droidspeak: data_plane %s unavailable (%s); using zmq", name, exc)
        name, plane, sender, receiver = "zmq", zmq, None, None
    planes = PlaneSet()
    if server is not None:
        planes.senders["zmq"] = zmq.build_sender(context)
        if sender is not None and name != "zmq":
            planes.senders[name] = sender
    if client is not None:
        planes.receiver = receiver if name != "zmq" else zmq.build_receiver(context)
    return planes
