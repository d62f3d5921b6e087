"""``plan_cluster``: the launch plan of every server of a cluster config.

For each replica, in config order (models, then their replicas), a ``ServerPlan``:

- ``command``: ``python -m sglang.launch_server --model-path PATH --served-model-name NAME
  --host H --port P --radix-cache-backend droidspeak --mem-fraction-static F
  --enable-metrics`` (+ ``--tp-size N`` when the replica has N > 1 GPUs) + server_args;
- ``env``: ``CUDA_VISIBLE_DEVICES`` (the replica's gpus, comma-separated) and
  ``SGLANG_PLUGINS=droidspeak``; the launcher writes ``settings`` to a file and adds
  ``DROIDSPEAK_CONFIG`` pointing at it. With ``data_plane: nccl`` and evenly spaced gpus,
  ``--base-gpu-id`` (+ ``--gpu-id-step``) instead of CUDA_VISIBLE_DEVICES: NCCL cannot use
  CUDA IPC / NVLink between processes that CUDA_VISIBLE_DEVICES hides from each other;
- ``settings``: that file's content, accepted by ``sglang.settings.parse_settings``.

Transfer ports: the k-th replica of the cluster (0-based, config order) binds its export
socket to ``transfer.base_port + 2k`` and its announce socket to ``base_port + 2k + 1``,
both on ``transfer.bind_host``. Peers connect to the same host, or to the peer's own
``host`` when ``bind_host`` is a wildcard (``0.0.0.0``, ``::``, ``*``).

Peers: a server's peers are the other models it may fetch KV from (it is the receiver),
i.e. every other model not known to be incompatible with it (``CheckReport.may_share``).
Every replica of such a model is a peer: the receiver credits each announcement to the
replica it came from and fetches from that replica.
``transfer.data_plane`` becomes each server's ``data_plane`` setting (zmq | cuda_ipc |
nccl), and ``transfer.bind_host`` its ``nccl_host`` (where its pair TCPStores listen).
Imports no SGLang.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

from sglang_droidspeak.cluster.check import CheckReport, check_cluster
from sglang_droidspeak.cluster.config import WILDCARD_HOSTS, ClusterConfig, ReplicaRef


@dataclass(frozen=True)
class ServerPlan:
    model: str
    replica_index: int
    host: str
    port: int
    gpus: tuple[int, ...]
    command: tuple[str, ...]
    env: dict[str, str]
    settings: dict[str, Any]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(gpus=list(self.gpus), command=list(self.command))
        return data


@dataclass(frozen=True)
class ClusterPlan:
    name: Optional[str]
    router: tuple[str, int]
    servers: tuple[ServerPlan, ...]

    def server(self, model: str, replica_index: int = 0) -> ServerPlan:
        return next(s for s in self.servers if (s.model, s.replica_index) == (model, replica_index))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "router": {"host": self.router[0], "port": self.router[1]},
                "servers": [s.to_dict() for s in self.servers]}


def transfer_ports(config: ClusterConfig, ref: ReplicaRef) -> tuple[int, int]:
    """(export port, announce port) of one replica: ``base_port + 2k`` and ``+ 1``."""
    base = config.transfer.base_port + 2 * ref.index
    return base, base + 1


def plan_cluster(config: ClusterConfig, report: Optional[CheckReport] = None, python: str = "python") -> ClusterPlan:
    """The launch plan; ``report`` (default: ``check_cluster(config)``) decides who may share.

    Never raises for problems the report lists: a cluster with errors still gets a plan
    (callers decide whether to launch it).
    """
    report = report if report is not None else check_cluster(config)
    refs = list(config.replicas())
    servers = tuple(_server(config, ref, refs, report, python) for ref in refs)
    return ClusterPlan(config.name, (config.router.host, config.router.port), servers)


def _server(config: ClusterConfig, ref: ReplicaRef, refs: list[ReplicaRef], report: CheckReport,
            python: str) -> ServerPlan:
    replica = ref.replica
    return ServerPlan(
        model=ref.model.name, replica_index=ref.replica_index, host=replica.host, port=replica.port,
        gpus=replica.gpus, command=_command(ref, python, config.transfer.data_plane),
        env={**_visible_gpus(replica.gpus, config.transfer.data_plane), "SGLANG_PLUGINS": "droidspeak"},
        settings=_settings(config, ref, refs, report),
    )


def gpu_step(gpus: tuple[int, ...]) -> Optional[int]:
    """The step of an evenly spaced, increasing GPU list (1 for a single GPU); None otherwise."""
    steps = {b - a for a, b in zip(gpus, gpus[1:])}
    return 1 if not steps else (steps.pop() if len(steps) == 1 and min(steps) > 0 else None)


def _by_gpu_id(gpus: tuple[int, ...], data_plane: str) -> bool:
    """nccl: place by --base-gpu-id (every GPU visible), since NCCL cannot use CUDA IPC /
    NVLink between processes that CUDA_VISIBLE_DEVICES hides from each other."""
    return data_plane == "nccl" and gpu_step(gpus) is not None


def _visible_gpus(gpus: tuple[int, ...], data_plane: str) -> dict[str, str]:
    return {} if _by_gpu_id(gpus, data_plane) else {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}


def _command(ref: ReplicaRef, python: str, data_plane: str = "zmq") -> tuple[str, ...]:
    replica = ref.replica
    command = [python, "-m", "sglang.launch_server", "--model-path", ref.model.path,
               "--served-model-name", ref.model.name, "--host", replica.host, "--port", str(replica.port),
               "--radix-cache-backend", "droidspeak", "--mem-fraction-static", f"{replica.mem_fraction:g}",
               "--enable-metrics"]
    if len(replica.gpus) > 1:
        command += ["--tp-size", str(len(replica.gpus))]
    if _by_gpu_id(replica.gpus, data_plane):
        step = gpu_step(replica.gpus)
        command += ["--base-gpu-id", str(replica.gpus[0])] + (["--gpu-id-step", str(step)] if step != 1 else [])
    return tuple(command) + ref.model.server_args


def _endpoint(config: ClusterConfig, ref: ReplicaRef, port: int, bind: bool) -> str:
    host = config.transfer.bind_host
    if not bind and host in WILDCARD_HOSTS:
        host = ref.replica.host
    if ":" in host:  # IPv6 literal
        host = f"[{host}]" if not host.startswith("[") else host
    return f"tcp://{host}:{port}"


def _settings(config: ClusterConfig, ref: ReplicaRef, refs: list[ReplicaRef], report: CheckReport) -> dict[str, Any]:
    export, announce = transfer_ports(config, ref)
    peers = []
    for other in refs:
        if other.model_index != ref.model_index and report.may_share(other.model.name, ref.model.name):
            fetch, publish = transfer_ports(config, other)
            peers.append({"model": other.model.name, "fetch": _endpoint(config, other, fetch, bind=False),
                          "announce": _endpoint(config, other, publish, bind=False)})
    policy = {} if ref.model.latency_model is None else {
        "slo_ttft_ms": config.slo.ttft_ms, "latency_model": ref.model.latency_model.to_dict()}
    return {
        **policy,
        "model": ref.model.name,
        "profiles_dir": config.profiles_dir,
        "max_quality_drop": config.slo.max_quality_drop,
        "fetch_timeout_s": config.transfer.fetch_timeout_s,
        "data_plane": config.transfer.data_plane,
        "nccl_host": config.transfer.bind_host,
        "secret_env": config.transfer.secret_env,
        "export_bind": _endpoint(config, ref, export, bind=True),
        "announce_bind": _endpoint(config, ref, announce, bind=True),
        "peers": peers,
    }
