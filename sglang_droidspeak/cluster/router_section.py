"""The cluster YAML's ``router:`` section: which front door ``droidspeak serve`` starts.

    router:
      host: 127.0.0.1
      port: 8000
      kind: gateway              # gateway (SGLang Model Gateway, the default) | droidspeak (ours)
      policy: cache_aware        # gateway only: random | round_robin | cache_aware | power_of_two
      metrics_port: 29000        # gateway only: its Prometheus port (default: port + 1)
      total_timeout_s: 1800      # any RouterSettings field (router/settings.py), for both kinds
      health_check_interval_s: 5

Every field but host and port is optional; an unknown one, or a bad value, is an error
naming it.
Imports no SGLang and no aiohttp.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from sglang_droidspeak.cluster.fields import ClusterConfigError, Section, is_int
from sglang_droidspeak.router.settings import RouterSettings, settings_fields

KINDS = ("gateway", "droidspeak")
POLICIES = ("cache_aware", "round_robin", "random", "power_of_two")


@dataclass(frozen=True)
class RouterConfig:
    host: str
    port: int
    kind: str = "gateway"
    policy: str = "cache_aware"
    metrics_port: Optional[int] = None
    settings: RouterSettings = RouterSettings()

    def endpoints(self) -> list[tuple[str, int, str]]:
        """(host, port, owner) of every port the front door listens on."""
        ports = [(self.host, self.port, "router")]
        if self.kind == "gateway":
            ports.append((self.host, self.gateway_metrics_port, "router.metrics_port"))
        return ports

    @property
    def gateway_metrics_port(self) -> int:
        return self.metrics_port if self.metrics_port is not None else self.port + 1


def parse_router(top: Section) -> RouterConfig:
    """The cluster YAML's ``router`` section (``top``: the file's top-level Section)."""
    s = top.child("router", ("host", "port", "kind", "policy", "metrics_port", *settings_fields()),
                  required=("host", "port"))
    values = {}
    for f in fields(RouterSettings):
        if f.name in s.data:
            value = s.number(f.name, 0.0, low_open=True)
            if f.type in ("int", int) and not is_int(s.data[f.name]):
                s.fail(f.name, "must be an integer", s.data[f.name])
            values[f.name] = int(value) if f.type in ("int", int) else value
    try:
        settings = RouterSettings(**values)
    except ValueError as exc:
        raise ClusterConfigError(f"{s.where}: router: {exc}") from None
    metrics_port = s.port("metrics_port") if "metrics_port" in s.data else None
    return RouterConfig(s.host("host", wildcard=True), s.port("port"), s.choice("kind", "gateway", KINDS),
                        s.choice("policy", "cache_aware", POLICIES), metrics_port, settings)
