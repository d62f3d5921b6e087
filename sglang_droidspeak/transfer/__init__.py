"""Transfer of a cached prefix's KV / E cache between servers: typed, authenticated wire."""

from sglang_droidspeak.transfer.frames import (
    DTYPES,
    ERROR_CODES,
    FetchDone,
    FetchError,
    FetchRequest,
    LayerChunk,
    Message,
    OversizedFrame,
    PrefixAnnounce,
    ReplayedMessage,
    StaleMessage,
    Unauthenticated,
    WireError,
)
from sglang_droidspeak.transfer.replay import ReplayGuard
from sglang_droidspeak.transfer.wire import WireLimits, decode, encode

__all__ = [
    "DTYPES", "ERROR_CODES", "FetchDone", "FetchError", "FetchRequest", "LayerChunk", "Message", "OversizedFrame",
    "PrefixAnnounce", "ReplayGuard", "ReplayedMessage", "StaleMessage", "Unauthenticated", "WireError",
    "WireLimits", "decode", "encode",
]
