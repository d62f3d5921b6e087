"""One entry of the cluster config's ``models`` list: its dataclasses and its parser.

    - name: tester                  # a name (no '/', no whitespace), unique (config.py)
      path: /models/tester          # a Hugging Face model directory
      replicas:                     # at least one
        - {host: 127.0.0.1, port: 30001, gpus: [0], mem_fraction: 0.4}
      server_args: [...]            # optional; none of RESERVED_FLAGS (the cluster sets them)
      latency_model: FILE | {...}   # optional; plan/latency.py constants (bench/calibrate.py)

    field           checks
    host            an IP address or an RFC 1123 host name (addresses.py)
    port            1..65535
    gpus            integers >= 0, none listed twice (against this machine's GPUs: check.py)
    mem_fraction    0 < f < 1
    server_args     strings; no RESERVED_FLAGS (``--flag`` or ``--flag=value``)
    latency_model   a mapping, or a file holding one (at the top or under latency_model)
Errors are ``ClusterConfigError`` naming the file and the field path (fields.Section).
Ports and hosts across models are checked by config.py. Imports no SGLang.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sglang_droidspeak.cluster.fields import Section, is_int
from sglang_droidspeak.plan.latency import LatencyModelError, PrefillLatencyModel
from sglang_droidspeak.yaml_io import FileLoadError, read_yaml_file

# launch_server flags the cluster sets itself; server_args may not repeat them
RESERVED_FLAGS = ("--model-path", "--served-model-name", "--host", "--port", "--radix-cache-backend",
                  "--mem-fraction-static", "--tp-size")


@dataclass(frozen=True)
class ReplicaConfig:
    host: str
    port: int
    gpus: tuple[int, ...]
    mem_fraction: float


@dataclass(frozen=True)
class ModelConfig:
    name: str
    path: str
    replicas: tuple[ReplicaConfig, ...]
    server_args: tuple[str, ...] = ()
    latency_model: Optional[PrefillLatencyModel] = None  # with slo.ttft_ms: the online policy


MODEL_KEYS = ("name", "path", "replicas", "server_args", "latency_model")
REPLICA_KEYS = ("host", "port", "gpus", "mem_fraction")


def parse_model(top: Section, index: int) -> ModelConfig:
    """Entry ``index`` of the config's ``models`` list (``top``: the whole file's Section)."""
    s = top.item("models", index, MODEL_KEYS, required=("name", "path", "replicas"))
    replicas = tuple(_replica(s.item("replicas", i, REPLICA_KEYS, REPLICA_KEYS)) for i in range(len(s.items("replicas"))))
    args = s.items("server_args", [], non_empty=False)
    for i, arg in enumerate(args):
        if not isinstance(arg, str):
            s.fail(f"server_args[{i}]", "must be a string", arg)
        if arg.split("=", 1)[0] in RESERVED_FLAGS:
            s.fail(f"server_args[{i}]", f"{arg.split('=', 1)[0]} is set by the cluster config, not server_args")
    return ModelConfig(s.name("name"), s.string("path"), replicas, tuple(args), _latency_model(s))


def _latency_model(s: Section) -> Optional[PrefillLatencyModel]:
    """``latency_model``: a mapping of plan/latency.py constants, or a JSON/YAML file holding
    one (at the top or under ``latency_model``, as bench/calibrate.py writes it)."""
    value = s.get("latency_model", None)
    if isinstance(value, str):
        try:
            value = read_yaml_file(value).data
        except FileLoadError as exc:
            s.fail("latency_model", f"cannot read a latency model: {exc}")
        if isinstance(value, dict) and "latency_model" in value:
            value = value["latency_model"]
    if value is None:
        return None
    try:
        return PrefillLatencyModel.from_dict(value)
    except LatencyModelError as exc:
        s.fail("latency_model", str(exc))


def _replica(s: Section) -> ReplicaConfig:
    gpus = s.items("gpus")
    for i, gpu in enumerate(gpus):
        if not is_int(gpu) or gpu < 0:
            s.fail(f"gpus[{i}]", "must be an integer >= 0", gpu)
        if gpu in gpus[:i]:
            s.fail(f"gpus[{i}]", f"GPU {gpu} is listed twice")
    fraction = s.number("mem_fraction", 0.0, 1.0, low_open=True, high_open=True)
    return ReplicaConfig(s.host("host"), s.port("port"), tuple(gpus), fraction)
