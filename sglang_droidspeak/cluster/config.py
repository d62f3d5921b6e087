"""The cluster config: several fine-tunes of one foundation model served as one service.

    name: agents                    # optional
    router: {host: 127.0.0.1, port: 8000}   # + kind, timeouts...: router_section.py
    profiles_dir: profiles          # <sender>__<receiver>.yaml profiles (default: profiles)
    slo: {ttft_ms: 500, max_quality_drop: 0.06, accuracy_target: null}
    transfer: {data_plane: zmq, bind_host: 127.0.0.1, base_port: 5600,
               secret_env: DROIDSPEAK_SECRET, fetch_timeout_s: 2.0}
    models:
      - name: tester
        path: /models/tester        # a Hugging Face model directory
        replicas:
          - {host: 127.0.0.1, port: 30001, gpus: [0], mem_fraction: 0.4}
        server_args: ["--attention-backend", "triton"]   # optional extra launch_server args
        latency_model: docs/results/latency-model-8b-2026-11-28.json   # optional: turns on
                                    # the online SLO policy for this model's servers (a file
                                    # written by `python -m sglang_droidspeak.bench.calibrate`,
                                    # or the mapping itself, see plan/latency.py)

``slo`` and ``transfer`` may be left out (defaults: ttft_ms 500, max_quality_drop 0.05,
accuracy_target null; zmq on 127.0.0.1 from port 5600, $DROIDSPEAK_SECRET, 2 s).
``transfer.data_plane``: zmq | cuda_ipc (servers sharing one GPU copy K/V device to device;
others fall back to zmq per peer) | nccl (servers on different GPUs move K/V / E on a per-pair
NCCL channel; until it is open, or where a peer cannot, zmq). Relative
paths are relative to the working directory of whoever checks or launches the cluster.
Every error is a ``ClusterConfigError`` naming the file and the field path; unknown keys
are errors. One ``models`` entry (its checks and dataclasses): model_config.py. Each
replica uses two transfer ports on ``bind_host`` (see ``layout``); those must not collide
with the router or a server either. Imports no SGLang.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, NamedTuple, Optional

from sglang_droidspeak.addresses import WILDCARD_HOSTS
from sglang_droidspeak.cluster.fields import ClusterConfigError, Section, env_name
from sglang_droidspeak.cluster.model_config import (  # noqa: F401 (RESERVED_FLAGS: re-exported)
    RESERVED_FLAGS,
    ModelConfig,
    ReplicaConfig,
    parse_model,
)
from sglang_droidspeak.cluster.router_section import RouterConfig, parse_router
from sglang_droidspeak.yaml_io import FileLoadError, read_yaml_file

DATA_PLANES = ("zmq", "nccl", "cuda_ipc")


@dataclass(frozen=True)
class SloConfig:
    ttft_ms: float = 500.0
    max_quality_drop: float = 0.05
    accuracy_target: Optional[float] = None


@dataclass(frozen=True)
class TransferConfig:
    data_plane: str = "zmq"
    bind_host: str = "127.0.0.1"
    base_port: int = 5600
    secret_env: str = "DROIDSPEAK_SECRET"
    fetch_timeout_s: float = 2.0


class ReplicaRef(NamedTuple):
    index: int          # over the whole cluster, in config order
    model_index: int
    replica_index: int  # within its model
    model: ModelConfig
    replica: ReplicaConfig

    @property
    def path(self) -> str:
        """The field path, e.g. ``models[1].replicas[0]``."""
        return f"models[{self.model_index}].replicas[{self.replica_index}]"


@dataclass(frozen=True)
class ClusterConfig:
    router: RouterConfig
    models: tuple[ModelConfig, ...]
    name: Optional[str] = None
    profiles_dir: str = "profiles"
    slo: SloConfig = SloConfig()
    transfer: TransferConfig = TransferConfig()
    source: str = "<cluster>"  # the file name, for messages

    def replicas(self) -> Iterator["ReplicaRef"]:
        """Every replica of every model, in config order (models, then their replicas)."""
        n = 0
        for m, model in enumerate(self.models):
            for i, replica in enumerate(model.replicas):
                yield ReplicaRef(n, m, i, model, replica)
                n += 1

    @property
    def num_replicas(self) -> int:
        return sum(len(m.replicas) for m in self.models)


def load_cluster_config(path: str | Path) -> ClusterConfig:
    """Read (yaml_io's strict loader) and validate a cluster YAML file; messages start with
    ``str(path)`` and, for a bad value, its line."""
    try:
        loaded = read_yaml_file(path)
    except FileLoadError as exc:
        raise ClusterConfigError(str(exc), str(path), "", exc.problem, exc.line) from None
    return parse_cluster_config(loaded.data, where=str(path), lines=loaded.lines)


def parse_cluster_config(data: Any, where: str = "<cluster>", lines: Optional[Mapping[str, int]] = None) -> ClusterConfig:
    """Validate parsed YAML; raise ClusterConfigError naming ``where``, the line (from
    ``lines``, the loader's key path -> line index) and the field path."""
    top = Section(data, where, "", ("name", "router", "profiles_dir", "slo", "transfer", "models"),
                  required=("router", "models"), lines=lines)
    router_config = parse_router(top)
    models = tuple(parse_model(top, i) for i in range(len(top.items("models"))))
    config = ClusterConfig(
        router=router_config,
        models=models,
        name=top.string("name", None),
        profiles_dir=top.string("profiles_dir", "profiles"),
        slo=_slo(top.child("slo", ("ttft_ms", "max_quality_drop", "accuracy_target"), default={})),
        transfer=_transfer(top.child("transfer", ("data_plane", "bind_host", "base_port", "secret_env",
                                                  "fetch_timeout_s"), default={})),
        source=where,
    )
    _check_unique_names(config, lines)
    _check_endpoints(config, lines)
    return config


def _slo(s: Section) -> SloConfig:
    return SloConfig(
        ttft_ms=s.number("ttft_ms", 0.0, default=500.0, low_open=True),
        max_quality_drop=s.number("max_quality_drop", 0.0, default=0.05),
        accuracy_target=s.number("accuracy_target", 0.0, 1.0, default=None, low_open=True),
    )


def _transfer(s: Section) -> TransferConfig:
    return TransferConfig(
        data_plane=s.choice("data_plane", "zmq", DATA_PLANES),
        bind_host=s.host("bind_host", "127.0.0.1", wildcard=True),
        base_port=s.port("base_port", 5600),
        secret_env=env_name(s, "secret_env", "DROIDSPEAK_SECRET"),
        fetch_timeout_s=s.number("fetch_timeout_s", 0.0, default=2.0, low_open=True),
    )


def _check_unique_names(config: ClusterConfig, lines: Optional[Mapping[str, int]]) -> None:
    seen: dict[str, int] = {}
    for i, model in enumerate(config.models):
        if model.name in seen:
            raise ClusterConfigError.at(config.source, f"models[{i}].name", f"{model.name!r} is already used by "
                                        f"models[{seen[model.name]}]", lines)
        seen[model.name] = i


def same_host(a: str, b: str) -> bool:
    """Whether two listen hosts may clash: equal, or either is a wildcard."""
    return a == b or a in WILDCARD_HOSTS or b in WILDCARD_HOSTS


def _check_endpoints(config: ClusterConfig, lines: Optional[Mapping[str, int]]) -> None:
    """No (host, port) twice among router and servers; transfer ports in range and free."""
    used: list[tuple[str, int, str]] = config.router.endpoints()
    for ref in config.replicas():
        path, replica = ref.path, ref.replica
        for host, port, owner in used:
            if port == replica.port and same_host(host, replica.host):
                raise ClusterConfigError.at(config.source, f"{path}.port", f"{replica.host}:{replica.port} "
                                            f"is already used by {owner}", lines)
        used.append((replica.host, replica.port, path))
    t = config.transfer
    last = t.base_port + 2 * config.num_replicas - 1
    if last > 65535:
        raise ClusterConfigError.at(config.source, "transfer.base_port", f"{config.num_replicas} replicas need "
                                    f"ports {t.base_port}..{last}, past 65535", lines)
    for host, port, owner in used:
        if t.base_port <= port <= last and same_host(host, t.bind_host):
            raise ClusterConfigError.at(config.source, "transfer.base_port", f"transfer ports {t.base_port}..{last} "
                                        f"on {t.bind_host} include {owner}'s {host}:{port}", lines)
