"""Plugin settings: a YAML file named by ``$DROIDSPEAK_CONFIG``, defaults when unset.

    model: coder-b                 # this server's model name (default: served model name)
    allow_derived_export: false    # may derived KV be sent to a third model?
    min_foreign_tokens: 16         # report a foreign hit only if it adds this many tokens
    plans:                         # inline LayerPlans; they win over profiles
      - {sender: coder-a, receiver: coder-b, num_layers: 32, groups: [[0, 8]]}
    profiles_dir: profiles         # <sender>__<receiver>.yaml profiles (plan.profile_io)
    max_quality_drop: 0.06         # cheapest frontier point within this drop (default 0.05)
    fetch_timeout_s: 2.0           # > 0
    secret_env: DROIDSPEAK_SECRET  # env var holding the shared secret (>= 16 utf-8 bytes)
    export_bind: tcp://127.0.0.1:5601    # answers fetches (sender role); unset: not a sender
    announce_bind: tcp://127.0.0.1:5602  # PUB of cached prefixes; unset: no announcements
    peers:                         # servers this one may fetch from (receiver role)
      - {model: coder-a, fetch: tcp://127.0.0.1:5501, announce: tcp://127.0.0.1:5502}
    slo_ttft_ms: 500               # with latency_model and profiles_dir: the online policy
    latency_model: {ms_per_layer_token: 0.0004, ms_fixed: 5, kv_bytes_per_layer_token: 4096,
                    e_bytes_per_token: 8192, link_gbps: 25, pipelined: false}   # plan.latency

Endpoints are ``tcp://host:port`` (port 1..65535) or ``ipc://path``; only the format is
checked. Every error is a SettingsError naming the file and field. Imports no SGLang:
the scheduler process reads it while building the tree cache.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml

from sglang_droidspeak.plan.latency import LatencyModelError, PrefillLatencyModel
from sglang_droidspeak.plan.layer_plan import LayerPlan, PlanError
from sglang_droidspeak.plan.profile import Profile
from sglang_droidspeak.plan.profile_io import load_profile, profile_filename

CONFIG_ENV = "DROIDSPEAK_CONFIG"
DEFAULT_SECRET_ENV = "DROIDSPEAK_SECRET"
MIN_SECRET_BYTES = 16
PlanLookup = Callable[[str, str], Optional[LayerPlan]]
logger = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class DroidSpeakSettings:
    model: Optional[str] = None
    allow_derived_export: bool = False
    min_foreign_tokens: int = 1
    plans: tuple[PairPlan, ...] = ()
    profiles_dir: Optional[str] = None
    max_quality_drop: float = 0.05
    fetch_timeout_s: float = 2.0
    secret_env: str = DEFAULT_SECRET_ENV
    export_bind: Optional[str] = None
    announce_bind: Optional[str] = None
    peers: tuple[Peer, ...] = ()
    slo_ttft_ms: Optional[float] = None  # with latency_model and profiles_dir: online policy
    latency_model: Optional[PrefillLatencyModel] = None
    source: str = field(default="<settings>", compare=False)  # file name, for messages

    @property
    def policy_enabled(self) -> bool:
        """Choose the plan per request (plan.policy) instead of the profile's fixed point."""
        return None not in (self.slo_ttft_ms, self.latency_model, self.profiles_dir)

    def profile_lookup(self) -> Callable[[str, str], Optional[Profile]]:
        """``(sender, receiver) -> Profile | None`` from ``profiles_dir``, cached per pair."""
        cache: dict[tuple[str, str], Optional[Profile]] = {}

        def lookup(sender: str, receiver: str) -> Optional[Profile]:
            if (sender, receiver) not in cache:
                cache[(sender, receiver)] = _read_profile(Path(self.profiles_dir or "."), sender, receiver)
            return cache[(sender, receiver)]

        return lookup

    def plan_lookup(self) -> PlanLookup:
        """``(sender, receiver) -> LayerPlan | None``: inline plans, else the pair's profile.

        The profile's plan is its cheapest frontier point within ``max_quality_drop``
        (profiles are matched by name only). Results, None included, are cached per pair
        in the returned function. Never raises: an unusable profile logs one warning and
        gives None.
        """
        inline = {(p.sender, p.receiver): p.plan for p in self.plans}
        cache: dict[tuple[str, str], Optional[LayerPlan]] = {}

        def lookup(sender: str, receiver: str) -> Optional[LayerPlan]:
            key = (sender, receiver)
            if key in inline:
                return inline[key]
            if self.profiles_dir is None:
                return None
            if key not in cache:
                cache[key] = self._profile_plan(sender, receiver)
            return cache[key]

        return lookup

    def _profile_plan(self, sender: str, receiver: str) -> Optional[LayerPlan]:
        profile = _read_profile(Path(self.profiles_dir or "."), sender, receiver)
        point = profile.cheapest_within(self.max_quality_drop) if profile else None
        if profile is not None and point is None:
            logger.info("droidspeak: no %s->%s frontier point within drop %s", sender, receiver,
                        self.max_quality_drop)
        return point.plan if point else None

    def secret(self) -> Optional[bytes]:
        """The shared secret from ``$<secret_env>`` as utf-8 bytes; None if the variable is unset."""
        value = os.environ.get(self.secret_env)
        if value is None:
            return None
        encoded = value.encode("utf-8", "surrogateescape")
        if len(encoded) < MIN_SECRET_BYTES:
            raise SettingsError(f"{self.source}: secret_env: ${self.secret_env} holds {len(encoded)} bytes, "
                                f"the shared secret needs >= {MIN_SECRET_BYTES}")
        return encoded


def _read_profile(directory: Path, sender: str, receiver: str) -> Optional[Profile]:
    """The named pair's profile, or None (missing; unusable: with a warning). Never raises."""
    if not all(_plain_name(n) for n in (sender, receiver)):
        return None
    path = directory / profile_filename(sender, receiver)
    if not path.is_file():
        return None
    try:
        profile = load_profile(path)
    except Exception as exc:  # any bad file must degrade to "no plan", never crash the server
        logger.warning("droidspeak: ignoring unusable profile %s: %s", path, exc)
        return None
    if (profile.sender.name, profile.receiver.name) != (sender, receiver):
        logger.warning("droidspeak: ignoring profile %s: it is for %s->%s", path,
                       profile.sender.name, profile.receiver.name)
        return None
    return profile


def _plain_name(name: str) -> bool:
    """A model name usable in a file name (no path separators, not '.' or '..')."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


_KEYS = {"model", "allow_derived_export", "min_foreign_tokens", "plans", "profiles_dir", "max_quality_drop",
         "fetch_timeout_s", "secret_env", "export_bind", "announce_bind", "peers", "slo_ttft_ms", "latency_model"}
_PLAN_KEYS = {"sender", "receiver", "num_layers", "groups"}
_PEER_KEYS = {"model", "fetch", "announce"}


def load_settings(path: Optional[str] = None) -> DroidSpeakSettings:
    """Settings from ``path``, else from ``$DROIDSPEAK_CONFIG``, else the defaults."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return DroidSpeakSettings()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc}") from exc
    return parse_settings(data, where=str(path))


def parse_settings(data: Any, where: str = "<settings>") -> DroidSpeakSettings:
    """Validate parsed YAML; raise SettingsError naming ``where`` and the field."""
    if not isinstance(data, Mapping):
        raise SettingsError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = set(data) - _KEYS
    if unknown:
        raise SettingsError(f"{where}: unknown field(s) {sorted(unknown)}")
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise SettingsError(f"{where}: 'model' must be a non-empty string, got {model!r}")
    allow = data.get("allow_derived_export", False)
    if not isinstance(allow, bool):
        raise SettingsError(f"{where}: 'allow_derived_export' must be true or false, got {allow!r}")
    min_tokens = data.get("min_foreign_tokens", 1)
    if not isinstance(min_tokens, int) or isinstance(min_tokens, bool) or min_tokens < 1:
        raise SettingsError(f"{where}: 'min_foreign_tokens' must be an int >= 1, got {min_tokens!r}")
    plans = data.get("plans") or []
    if not isinstance(plans, list):
        raise SettingsError(f"{where}: 'plans' must be a list, got {plans!r}")
    pair_plans = tuple(_pair_plan(entry, f"{where}: plans[{i}]") for i, entry in enumerate(plans))
    return DroidSpeakSettings(
        model, allow, min_tokens, pair_plans,
        profiles_dir=_optional_str(data, "profiles_dir", where),
        max_quality_drop=_number(data, "max_quality_drop", 0.05, where, positive=False),
        fetch_timeout_s=_number(data, "fetch_timeout_s", 2.0, where, positive=True),
        secret_env=_secret_env(data.get("secret_env", DEFAULT_SECRET_ENV), f"{where}: secret_env"),
        **_binds(data, where),
        peers=_peers(data.get("peers") or [], model, where),
        slo_ttft_ms=None if data.get("slo_ttft_ms") is None else _number(data, "slo_ttft_ms", 0, where, True),
        latency_model=_latency_model(data.get("latency_model"), f"{where}: latency_model"),
        source=where,
    )


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
        if name == model or name in (p.model for p in peers):
            why = "is this server's own model" if name == model else "is listed twice"
            raise SettingsError(f"{at}.model: {name!r} {why}")
        peers.append(Peer(name, _endpoint(entry["fetch"], f"{at}.fetch"), _endpoint(entry["announce"], f"{at}.announce")))
    return tuple(peers)
