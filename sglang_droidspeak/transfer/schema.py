"""What every transfer message is built on: the WireError family, field checks, DTYPES.

A message class (frames.py; a plane's own in transfer/planes/*/frames.py) is a frozen
dataclass over ``_Message``: on construction each field is checked against its
annotation, then the class's own ``_check``, so a message that exists is well-formed.
Anything else raises ``WireError``; its ``reason`` names the class for logs and metrics:

    error            reason           raised for
    WireError        malformed        a field of the wrong type or value, an unknown kind
    OversizedFrame   oversized        a frame or a field beyond ``WireLimits`` (wire.py)
    Unauthenticated  unauthenticated  a MAC that does not verify
    StaleMessage     stale            a timestamp outside the receiver's window (replay.py)
    ReplayedMessage  replayed         a nonce already seen inside that window

    annotation          accepts
    str, bytes, float   exactly that type
    int                 an int in [0, 2**63) (INT_LIMIT)
    tuple[int, ...]     a tuple of such ints
    tuple[bytes, ...]   a tuple of bytes

``DTYPES`` is the whitelist of element types a tensor travels as (name -> torch.dtype).
"""

from __future__ import annotations

from dataclasses import fields
from typing import ClassVar

import torch


class WireError(ValueError):
    """A message that is malformed, oversized, unauthenticated or of an unknown kind.

    ``reason`` names the class for logs and metrics: malformed (the default), oversized,
    unauthenticated, stale, replayed (the subclasses below) or unexpected (a well-formed
    message the socket does not take)."""

    reason = "malformed"


class OversizedFrame(WireError):
    """A frame or a field beyond ``WireLimits``."""

    reason = "oversized"


class Unauthenticated(WireError):
    """A MAC that does not verify: the wrong secret, or altered frames."""

    reason = "unauthenticated"


class StaleMessage(WireError):
    """A signed message whose timestamp is outside the receiver's window (replay.py)."""

    reason = "stale"


class ReplayedMessage(WireError):
    """A signed message whose nonce the receiver has already seen inside the window."""

    reason = "replayed"


INT_LIMIT = 1 << 63
DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float16", "bfloat16", "float32", "float8_e4m3fn")
    if hasattr(torch, name)
}


def _is_int(value: object) -> bool:
    return type(value) is int and 0 <= value < INT_LIMIT


def _check_field(cls_name: str, name: str, annotation: str, value: object) -> None:
    if annotation == "str":
        ok = type(value) is str
    elif annotation == "int":
        ok = _is_int(value)
    elif annotation == "float":
        ok = type(value) is float
    elif annotation == "bytes":
        ok = type(value) is bytes
    elif annotation == "tuple[int, ...]":
        ok = type(value) is tuple and all(_is_int(v) for v in value)
    elif annotation == "tuple[bytes, ...]":
        ok = type(value) is tuple and all(type(v) is bytes for v in value)
    else:  # pragma: no cover - a schema typo, not an input error
        raise TypeError(f"{cls_name}.{name}: unsupported annotation {annotation}")
    if not ok:
        want = {"int": "int in [0, 2**63)", "tuple[int, ...]": "tuple of ints in [0, 2**63)"}
        raise WireError(f"{cls_name}.{name} must be {want.get(annotation, annotation)}, "
                        f"got {type(value).__name__}")


def _check_ascending(cls_name: str, name: str, layers: tuple[int, ...]) -> None:
    if any(a >= b for a, b in zip(layers, layers[1:])):
        raise WireError(f"{cls_name}.{name} must be strictly ascending, got {layers[:16]}")


class _Message:
    """Base: checks every dataclass field against its annotation, then ``_check``."""

    KIND: ClassVar[str]
    VERSION: ClassVar[int] = 1
    HAS_PAYLOAD: ClassVar[bool] = False

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            _check_field(type(self).__name__, f.name, str(f.type), getattr(self, f.name))
        self._check()

    def _check(self) -> None:
        pass

    def _nonempty(self, *names: str) -> None:
        for name in names:
            if not getattr(self, name):
                raise WireError(f"{type(self).__name__}.{name} must be non-empty")

    def _dtypes(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) not in DTYPES:
                raise WireError(f"{type(self).__name__}.{name} {getattr(self, name)!r} not in whitelist {tuple(DTYPES)}")

    def check_limits(self, limits) -> None:
        """Raise OversizedFrame where a field exceeds ``limits`` (wire.WireLimits); the
        wire calls it after decoding. The base checks nothing."""

    @property
    def kind(self) -> str:
        return self.KIND
