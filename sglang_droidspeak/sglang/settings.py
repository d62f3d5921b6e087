"""Plugin settings: a YAML file named by ``$DROIDSPEAK_CONFIG``, defaults when unset.

    model: coder-b                 # this server's model name (default: served model name)
    allow_derived_export: false    # may derived KV be sent to a third model?
    min_foreign_tokens: 16         # report a foreign hit only if it adds this many tokens
    plans:                         # inline LayerPlans; they win over profiles
      - {sender: coder-a, receiver: coder-b, num_layers: 32, groups: [[0, 8]]}
    profiles_dir: profiles         # <sender>__<receiver>.yaml profiles (plan.profile_io)
    max_quality_drop: 0.06         # cheapest frontier point within this drop (default 0.05)
    fetch_timeout_s: 2.0           # > 0
    data_plane: zmq                # zmq | cuda_ipc (one GPU: the sender copies K/V into our pool)
                                   #     | nccl (two GPUs: a per-pair NCCL channel carries E, K/V)
    nccl_host: 127.0.0.1           # nccl: the address senders reach our pair TCPStores at
    pipelined: true                # receiver: recompute while K/V still arrives (import_pipeline.py)
    import_mode: async             # receiver: async (the request waits, the server does not;
                                   #   while it decodes, imports yield: import_busy_token_layers) |
                                   #   eager (async, full chunks even while decoding) |
                                   #   overlap (full chunks on a second stream, beside decodes) |
                                   #   blocking (the import runs inside the scheduler tick: the
                                   #   old synchronous behaviour, for comparison)
    import_chunk_tokens: 8192      # receiver: tokens of recompute launched per scheduler tick
    import_busy_token_layers: 2048 # receiver, async: while a decode batch runs, a tick launches at
                                   #   most this many tokens x recomputed layers (>= 8)
    import_deadline_s: 10          # receiver: a parked request waits at most this long, then
                                   #   prefills normally
    throttle_gbps: 10              # sender: pace the ZMQ stream to this link rate (transfer/pacing.py)
    allow_request_throttle: false  # sender: pace a fetch to the rate its receiver's request names
                                   #   (custom_params droidspeak_link_gbps); the pacing sleeps on
                                   #   our scheduler thread, so only where every peer is trusted
    secret_env: DROIDSPEAK_SECRET  # env var holding the shared secret (>= 16 utf-8 bytes)
    export_bind: tcp://127.0.0.1:5601    # answers fetches (sender role); unset: not a sender
    announce_bind: tcp://127.0.0.1:5602  # PUB of cached prefixes; unset: no announcements
    peers:                         # servers this one may fetch from (receiver role)
      - {model: coder-a, fetch: tcp://127.0.0.1:5501, announce: tcp://127.0.0.1:5502}
    slo_ttft_ms: 500               # with latency_model and profiles_dir: the online policy
    latency_model: {ms_per_layer_token: 0.0004, ms_fixed: 5, kv_bytes_per_layer_token: 4096,
                    e_bytes_per_token: 8192, link_gbps: 25, pipelined: false}   # plan.latency
    guard_fraction: 0.02           # receiver: live quality guard (quality_guard.py): re-run this share
                                   #   of reused greedy requests as a normal prefill, at low priority
    guard_margin: 0.05             #   a pair trips (normal prefill until restart) when its mean live
    guard_window: 32               #   agreement over the last guard_window checks (>= guard_min_checks)
    guard_min_checks: 8            #   is below its profile's bound - guard_margin
    guard_min_output_tokens: 4     #   only requests with at least this many output tokens
    guard_timeout_s: 30            #   one shadow request's HTTP timeout
    guard_url: http://127.0.0.1:30000   # default: this server's own URL (ServerArgs.url())

Endpoints are ``tcp://host:port`` (port 1..65535) or ``ipc://path``; only the format is
checked. Every error is a SettingsError naming the file and field. Imports no SGLang:
the scheduler process reads it while building the tree cache.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.latency import PrefillLatencyModel
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.plan.profile import Profile
from sglang_droidspeak.plan.profile_io import load_profile, profile_filename
from sglang_droidspeak.sglang.settings_fields import (  # noqa: F401 - Peer/PairPlan/SettingsError are public here
    DATA_PLANES, GUARD_KEYS, PairPlan, Peer, SettingsError, _binds, _choice, _flag, _guard_fields, _latency_model,
    _number, _optional_str, _pair_plan, _peers, _secret_env)
from sglang_droidspeak.yaml_io import FileLoadError, read_yaml_file

CONFIG_ENV = "DROIDSPEAK_CONFIG"
DEFAULT_SECRET_ENV = "DROIDSPEAK_SECRET"
MIN_SECRET_BYTES = 16
PlanLookup = Callable[[str, str], Optional[Union[LayerPlan, BlendPlan]]]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DroidSpeakSettings:
    model: Optional[str] = None
    allow_derived_export: bool = False
    min_foreign_tokens: int = 1
    plans: tuple[PairPlan, ...] = ()
    profiles_dir: Optional[str] = None
    max_quality_drop: float = 0.05
    fetch_timeout_s: float = 2.0
    data_plane: str = "zmq"
    pipelined: bool = True  # receiver: overlap the recompute with the transfer
    import_mode: str = "async"  # receiver: "async" | "eager" | "overlap" | "blocking" (import_queue.py)
    import_chunk_tokens: int = 8192  # receiver: recompute tokens launched per scheduler tick
    import_busy_token_layers: int = 2048  # receiver, async: a tick's recompute while decoding
    import_deadline_s: float = 10.0  # receiver: longest a request stays parked
    throttle_gbps: Optional[float] = None  # sender: emulated link rate of the ZMQ stream
    allow_request_throttle: bool = False  # sender: honour a FetchRequest's link_gbps (pacing.py)
    nccl_host: str = "127.0.0.1"
    secret_env: str = DEFAULT_SECRET_ENV
    export_bind: Optional[str] = None
    announce_bind: Optional[str] = None
    peers: tuple[Peer, ...] = ()
    slo_ttft_ms: Optional[float] = None  # with latency_model and profiles_dir: online policy
    latency_model: Optional[PrefillLatencyModel] = None
    guard_fraction: float = 0.0  # receiver: share of reused greedy requests shadow-checked (quality_guard.py)
    guard_margin: float = 0.05  # trip when live agreement < the profile's bound - this
    guard_window: int = 32  # checks per pair the live agreement is averaged over
    guard_min_checks: int = 8  # no trip before this many checks of the pair
    guard_min_output_tokens: int = 4  # only requests with at least this many output tokens
    guard_timeout_s: float = 30.0  # one shadow request's HTTP timeout
    guard_url: Optional[str] = None  # where shadow requests go (default: this server's own URL)
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
        """``(sender, receiver) -> LayerPlan | BlendPlan | None``: inline plans, else the
        pair's profile's cheapest servable point within ``max_quality_drop``
        (``Profile.cheapest_servable_within``: a BlendPlan only when a CacheBlend point is
        cheaper; profiles are matched by name only). Results, None included, are cached per pair
        in the returned function. Never raises: an unusable profile logs one warning and
        gives None.
        """
        inline = {(p.sender, p.receiver): p.plan for p in self.plans}
        cache: dict[tuple[str, str], Optional[Union[LayerPlan, BlendPlan]]] = {}

        def lookup(sender: str, receiver: str) -> Optional[Union[LayerPlan, BlendPlan]]:
            key = (sender, receiver)
            if key in inline:
                return inline[key]
            if self.profiles_dir is None:
                return None
            if key not in cache:
                cache[key] = self._profile_plan(sender, receiver)
            return cache[key]

        return lookup

    def _profile_plan(self, sender: str, receiver: str) -> Optional[Union[LayerPlan, BlendPlan]]:
        profile = _read_profile(Path(self.profiles_dir or "."), sender, receiver)
        point = profile.cheapest_servable_within(self.max_quality_drop) if profile else None
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
         "fetch_timeout_s", "data_plane", "nccl_host", "secret_env", "export_bind", "announce_bind", "peers",
         "slo_ttft_ms", "latency_model", "pipelined", "throttle_gbps", "allow_request_throttle",
         "import_mode", "import_chunk_tokens", "import_busy_token_layers", "import_deadline_s"}
_KEYS |= GUARD_KEYS  # the live quality guard (quality_guard.py)
IMPORT_MODES = ("async", "eager", "overlap", "blocking")


def _int_at_least(data: Mapping, key: str, default: int, low: int, where: str) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SettingsError(f"{where}: {key!r} must be an int >= {low}, got {value!r}")
    return value


def load_settings(path: Optional[str] = None) -> DroidSpeakSettings:
    """Settings from ``path``, else from ``$DROIDSPEAK_CONFIG``, else the defaults."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return DroidSpeakSettings()
    try:
        data = read_yaml_file(path).data or {}  # yaml_io's strict loader: regular file, size cap, no aliases
    except FileLoadError as exc:
        raise SettingsError(str(exc)) from None
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
    min_tokens = _int_at_least(data, "min_foreign_tokens", 1, 1, where)
    plans = data.get("plans") or []
    if not isinstance(plans, list):
        raise SettingsError(f"{where}: 'plans' must be a list, got {plans!r}")
    pair_plans = tuple(_pair_plan(entry, f"{where}: plans[{i}]") for i, entry in enumerate(plans))
    chunk = _int_at_least(data, "import_chunk_tokens", 8192, 8, where)
    busy = _int_at_least(data, "import_busy_token_layers", 2048, 8, where)
    return DroidSpeakSettings(
        model, allow, min_tokens, pair_plans,
        profiles_dir=_optional_str(data, "profiles_dir", where),
        max_quality_drop=_number(data, "max_quality_drop", 0.05, where, positive=False),
        fetch_timeout_s=_number(data, "fetch_timeout_s", 2.0, where, positive=True),
        data_plane=_choice(data, "data_plane", DATA_PLANES, where),
        pipelined=_flag(data, "pipelined", True, where),
        import_mode=_choice(data, "import_mode", IMPORT_MODES, where),
        import_chunk_tokens=chunk,
        import_busy_token_layers=busy,
        import_deadline_s=_number(data, "import_deadline_s", 10.0, where, positive=True),
        throttle_gbps=None if data.get("throttle_gbps") is None else _number(data, "throttle_gbps", 0, where, True),
        allow_request_throttle=_flag(data, "allow_request_throttle", False, where),
        nccl_host=_optional_str(data, "nccl_host", where) or "127.0.0.1",
        secret_env=_secret_env(data.get("secret_env", DEFAULT_SECRET_ENV), f"{where}: secret_env"),
        **_binds(data, where),
        peers=_peers(data.get("peers") or [], model, where),
        slo_ttft_ms=None if data.get("slo_ttft_ms") is None else _number(data, "slo_ttft_ms", 0, where, True),
        latency_model=_latency_model(data.get("latency_model"), f"{where}: latency_model"),
        **_guard_fields(data, where),
        source=where,
    )


