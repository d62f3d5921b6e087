"""Field parsers for the plugin settings (``sglang.settings``); each error names the field.

Imports no SGLang.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from sglang_droidspeak.plan.latency import LatencyModelError, PrefillLatencyModel
from sglang_droidspeak.plan.layer_plan import LayerPlan, PlanError
from sglang_droidspeak.transfer.planes import registry

_PLAN_KEYS = {"sender", "receiver", "num_layers", "groups"}
_PEER_KEYS = {"model", "fetch", "announce"}
DATA_PLANES = registry.names()  # the first is the default (transfer/planes/registry.py)


class SettingsError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class PairPlan:
    sender: str
    receiver: str
    plan: LayerPlan


@dataclass(frozen=True)
class Peer:
    """A server this one may fetch from: its model name and its two ZMQ endpoints."""

    model: str
    fetch: str
    announce: str



def _latency_model(value: Any, at: str) -> Optional[PrefillLatencyModel]:
    if value is None:
        return None
    try:
        return PrefillLatencyModel.from_dict(value)
    except LatencyModelError as exc:
        raise SettingsError(f"{at}: {exc}") from exc


def _pair_plan(entry: Any, where: str) -> PairPlan:
    if not isinstance(entry, Mapping) or set(entry) != _PLAN_KEYS:
        raise SettingsError(f"{where}: expected exactly the fields {sorted(_PLAN_KEYS)}, got {entry!r}")
    sender, receiver, groups = entry["sender"], entry["receiver"], entry["groups"]
    if not (isinstance(sender, str) and sender and isinstance(receiver, str) and receiver):
        raise SettingsError(f"{where}: 'sender' and 'receiver' must be non-empty strings")
    if not isinstance(groups, list) or not all(isinstance(g, list) and len(g) == 2 for g in groups):
        raise SettingsError(f"{where}: 'groups' must be a list of [start, end] pairs, got {groups!r}")
    try:
        plan = LayerPlan(entry["num_layers"], tuple(tuple(g) for g in groups))
    except PlanError as exc:
        raise SettingsError(f"{where}: {exc}") from exc
    return PairPlan(sender, receiver, plan)


def _optional_str(data: Mapping[str, Any], name: str, where: str) -> Optional[str]:
    value = data.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise SettingsError(f"{where}: {name}: must be a non-empty string, got {value!r}")
    return value


def _number(data: Mapping[str, Any], name: str, default: float, where: str, positive: bool) -> float:
    """A finite number, > 0 if ``positive`` else >= 0."""
    value = data.get(name, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise SettingsError(f"{where}: {name}: must be a number {'>' if positive else '>='} 0, got {value!r}")
    return float(value)


def _flag(data: Mapping[str, Any], name: str, default: bool, where: str) -> bool:
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise SettingsError(f"{where}: {name}: must be true or false, got {value!r}")
    return value


def _choice(data: Mapping[str, Any], name: str, choices: tuple[str, ...], where: str) -> str:
    """One of ``choices`` (default: the first)."""
    value = data.get(name, choices[0])
    if not isinstance(value, str) or value not in choices:
        raise SettingsError(f"{where}: {name}: must be one of {list(choices)}, got {value!r}")
    return value


def _secret_env(value: Any, at: str) -> str:
    if not isinstance(value, str) or not value or "=" in value or "\0" in value:
        raise SettingsError(f"{at}: must be an environment variable name, got {value!r}")
    return value


def _endpoint(value: Any, at: str, bind: bool = False) -> str:
    """``tcp://host:port`` (port 1..65535; a bind may use ``*``: any free port) or ``ipc://path``."""
    if not isinstance(value, str) or not value.startswith(("tcp://", "ipc://")) or any(c.isspace() for c in value):
        raise SettingsError(f"{at}: must be a 'tcp://host:port' or 'ipc://path' string, got {value!r}")
    rest = value[len("tcp://"):]
    if value.startswith("ipc://"):
        if not rest:
            raise SettingsError(f"{at}: ipc endpoint needs a path, got {value!r}")
        return value
    host, sep, port = rest.rpartition(":")
    if bind and sep and host and port == "*":
        return value
    if not (sep and host and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise SettingsError(f"{at}: tcp endpoint needs host:port with a port in 1..65535, got {value!r}")
    return value


def _binds(data: Mapping[str, Any], where: str) -> dict[str, Optional[str]]:
    binds = {k: None if data.get(k) is None else _endpoint(data[k], f"{where}: {k}", bind=True)
             for k in ("export_bind", "announce_bind")}
    same = binds["export_bind"] is not None and binds["export_bind"] == binds["announce_bind"]
    if same and not binds["export_bind"].endswith(":*"):  # two wildcard binds get two free ports
        raise SettingsError(f"{where}: announce_bind: same endpoint as export_bind ({binds['export_bind']})")
    return binds


def _peers(entries: Any, model: Optional[str], where: str) -> tuple[Peer, ...]:
    if not isinstance(entries, list):
        raise SettingsError(f"{where}: peers: must be a list, got {entries!r}")
    peers: list[Peer] = []
    for i, entry in enumerate(entries):
        at = f"{where}: peers[{i}]"
        if not isinstance(entry, Mapping) or set(entry) != _PEER_KEYS:
            raise SettingsError(f"{at}: expected exactly the fields {sorted(_PEER_KEYS)}, got {entry!r}")
        name = entry["model"]
        if not isinstance(name, str) or not name:
            raise SettingsError(f"{at}.model: must be a non-empty string, got {name!r}")
        if name == model:
            raise SettingsError(f"{at}.model: {name!r} is this server's own model")
        peer = Peer(name, _endpoint(entry["fetch"], f"{at}.fetch"), _endpoint(entry["announce"], f"{at}.announce"))
        for key in ("fetch", "announce"):  # replicas of one model are fine; one endpoint twice is not
            if getattr(peer, key) in (getattr(p, key) for p in peers):
                raise SettingsError(f"{at}.{key}: {getattr(peer, key)!r} is listed twice")
        peers.append(peer)
    return tuple(peers)


GUARD_KEYS = {"guard_fraction", "guard_margin", "guard_window", "guard_min_checks", "guard_min_output_tokens",
              "guard_timeout_s", "guard_url"}


def _guard_fields(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The live quality guard's settings (sglang/quality_guard.py), validated."""
    fraction = _number(data, "guard_fraction", 0.0, where, positive=False)
    if fraction > 1:
        raise SettingsError(f"{where}: guard_fraction: must be a number in [0, 1], got {fraction!r}")
    ints = {}
    for name, default in (("guard_window", 32), ("guard_min_checks", 8), ("guard_min_output_tokens", 4)):
        value = data.get(name, default)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise SettingsError(f"{where}: {name}: must be an int >= 1, got {value!r}")
        ints[name] = value
    if ints["guard_min_checks"] > ints["guard_window"]:
        raise SettingsError(f"{where}: guard_min_checks: {ints['guard_min_checks']} is more than guard_window "
                            f"({ints['guard_window']}): the guard could never trip")
    url = _optional_str(data, "guard_url", where)
    if url is not None and (not url.startswith(("http://", "https://")) or any(c.isspace() for c in url)):
        raise SettingsError(f"{where}: guard_url: must be an 'http://host:port' or 'https://...' URL, got {url!r}")
    return {"guard_fraction": fraction, "guard_margin": _number(data, "guard_margin", 0.05, where, positive=False),
            "guard_timeout_s": _number(data, "guard_timeout_s", 30.0, where, positive=True), "guard_url": url,
            **ints}
