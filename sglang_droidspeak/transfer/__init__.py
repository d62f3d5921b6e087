"""Transfer of a cached prefix's KV / E cache between servers: typed, authenticated wire.

The names below load on first use (PEP 562), so importing a light submodule (the plane
registry, for the settings' ``data_plane`` choices) does not import torch.
"""

from importlib import import_module

_HOMES = {
    **{name: "frames" for name in ("ERROR_CODES", "FetchDone", "FetchError", "FetchRequest", "LayerChunk", "Message",
                                   "PrefixAnnounce")},
    **{name: "schema" for name in ("DTYPES", "OversizedFrame", "ReplayedMessage", "StaleMessage", "Unauthenticated",
                                   "WireError")},
    "ReplayGuard": "replay", "WireLimits": "wire", "decode": "wire", "encode": "wire",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
