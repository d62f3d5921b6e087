"""The data planes by name: adding a plane is one line here plus its own folder.

Each entry names a package holding ``frames.py`` (``MESSAGES``: its control-frame types,
``ERROR_CODES``: its FetchError codes) and ``plane.py`` (``PLANE``: a base.PlaneSpec).
``frames`` are loaded with the wire (every process decodes every plane's frames); a
plane's sender and receiver only when it is built.
"""

from __future__ import annotations

import importlib
from functools import lru_cache

PLANES: dict[str, str] = {  # the first is the default
    "zmq": "sglang_droidspeak.transfer.planes.zmq",
    "cuda_ipc": "sglang_droidspeak.transfer.planes.cuda_ipc",
    "nccl": "sglang_droidspeak.transfer.planes.nccl",
    "nixl": "sglang_droidspeak.transfer.planes.nixl",
}


def names() -> tuple[str, ...]:
    return tuple(PLANES)


@lru_cache(maxsize=None)
def frame_types() -> tuple[type, ...]:
    """Every plane's control-frame types (for the wire's kind table)."""
    return tuple(cls for package in PLANES.values()
                 for cls in importlib.import_module(f"{package}.frames").MESSAGES)


@lru_cache(maxsize=None)
def error_codes() -> tuple[str, ...]:
    return tuple(code for package in PLANES.values()
                 for code in importlib.import_module(f"{package}.frames").ERROR_CODES)


def spec(name: str):
    """The ``PlaneSpec`` of plane ``name`` (KeyError for an unknown name)."""
    return importlib.import_module(f"{PLANES[name]}.plane").PLANE


def spec_of_frame(msg: object):
    """The spec of the plane whose frames include ``type(msg)``, or None."""
    for name, package in PLANES.items():
        if type(msg) in importlib.import_module(f"{package}.frames").MESSAGES:
            return spec(name)
    return None
