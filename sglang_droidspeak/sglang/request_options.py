"""Per-request import options, from ``sampling_params.custom_params`` (next to ``droidspeak_plan``).

    key                     value                   meaning
    droidspeak_pipelined    "on" | "off" | true |   this request's import overlaps the recompute
                            false                   with the transfer (or not), whatever the
                                                    receiver's ``pipelined`` setting says
    droidspeak_link_gbps    a number > 0            ask the sender to pace this fetch to that link
                                                    rate (Gbit/s); a sender honours it only with
                                                    ``allow_request_throttle`` (transfer/pacing.py)
    droidspeak_import_mode  "async" | "eager" |     this request's import runs asynchronously,
                            "overlap" | "blocking"  yielding to decodes (async) or not (eager),
                                                    beside them on a second stream (overlap),
                                                    or inside the scheduler tick (the old
                                                    behaviour); the setting ``import_mode``

Absent keys keep the settings. A malformed value is ignored with a warning naming it; the
request still gets a correct answer (these options change timing, never results). One
server pair can so run a whole bandwidth sweep (bench-prefill). Imports no SGLang.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

PIPELINED_PARAM = "droidspeak_pipelined"
LINK_GBPS_PARAM = "droidspeak_link_gbps"
IMPORT_MODE_PARAM = "droidspeak_import_mode"
_PIPELINED_VALUES = {"on": True, "off": False, True: True, False: False}
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestOptions:
    pipelined: Optional[bool] = None  # None: the receiver's ``pipelined`` setting
    link_gbps: float = 0.0  # 0: no rate asked of the sender
    import_mode: Optional[str] = None  # None: the receiver's ``import_mode`` setting

    def pipelined_or(self, setting: bool) -> bool:
        """This request's ``pipelined``: its own choice, else the receiver's ``setting``."""
        return setting if self.pipelined is None else self.pipelined


def parse_request_options(params: Any, rid: str = "?") -> RequestOptions:
    """The options in ``params`` (a request's custom_params; None or a non-mapping: none)."""
    if not isinstance(params, Mapping):
        return RequestOptions()
    return RequestOptions(_pipelined(params.get(PIPELINED_PARAM), rid), _link_gbps(params.get(LINK_GBPS_PARAM), rid),
                          _import_mode(params.get(IMPORT_MODE_PARAM), rid))


def request_options(req: Any) -> RequestOptions:
    """The options an SGLang ``Req`` carries in ``sampling_params.custom_params``."""
    params = getattr(getattr(req, "sampling_params", None), "custom_params", None)
    return parse_request_options(params, str(getattr(req, "rid", "?")))


def _pipelined(value: Any, rid: str) -> Optional[bool]:
    if value is None:
        return None
    if type(value) in (str, bool) and value in _PIPELINED_VALUES:
        return _PIPELINED_VALUES[value]
    _ignore(rid, PIPELINED_PARAM, value, "'on', 'off', true or false")
    return None


def _import_mode(value: Any, rid: str) -> Optional[str]:
    if value is None:
        return None
    if value in ("async", "eager", "overlap", "blocking"):
        return value
    _ignore(rid, IMPORT_MODE_PARAM, value, "'async', 'eager', 'overlap' or 'blocking'")
    return None


def _link_gbps(value: Any, rid: str) -> float:
    if value is None:
        return 0.0
    if type(value) in (int, float) and math.isfinite(value) and value > 0:
        return float(value)
    _ignore(rid, LINK_GBPS_PARAM, value, "a number > 0 (Gbit/s)")
    return 0.0


def _ignore(rid: str, key: str, value: Any, expected: str) -> None:
    logger.warning("droidspeak: rid=%s: ignoring %s=%r (expected %s)", rid, key, value, expected)
