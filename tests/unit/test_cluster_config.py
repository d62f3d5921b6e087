"""Cluster config (sglang_droidspeak.cluster.config) and launch plans (cluster.layout), CPU only."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from sglang_droidspeak.cluster import (
    CheckReport, ClusterConfigError, PairStatus, load_cluster_config, parse_cluster_config, plan_cluster,
)
from sglang_droidspeak.cluster.config import ReplicaConfig, SloConfig, TransferConfig
from sglang_droidspeak.sglang.settings import Peer, load_settings, parse_settings

REPO = Path(__file__).resolve().parents[2]


def _cluster():
    return {
        "name": "agents",
        "router": {"host": "127.0.0.1", "port": 8000},
        "profiles_dir": "profiles",
        "slo": {"ttft_ms": 500, "max_quality_drop": 0.06, "accuracy_target": None},
        "transfer": {"data_plane": "zmq", "bind_host": "127.0.0.1", "base_port": 5600,
                     "secret_env": "DROIDSPEAK_SECRET", "fetch_timeout_s": 2.0},
        "models": [
            {"name": "tester", "path": "/m/tester", "server_args": ["--attention-backend", "triton"],
             "replicas": [{"host": "127.0.0.1", "port": 30001, "gpus": [0], "mem_fraction": 0.4},
                          {"host": "127.0.0.1", "port": 30011, "gpus": [1, 2], "mem_fraction": 0.8}]},
            {"name": "libwriter", "path": "/m/libwriter",
             "replicas": [{"host": "127.0.0.1", "port": 30002, "gpus": [0], "mem_fraction": 0.45}]},
            {"name": "other", "path": "/m/other",
             "replicas": [{"host": "127.0.0.1", "port": 30003, "gpus": [3], "mem_fraction": 0.5}]},
        ],
    }


def _with(path: str, value):
    """_cluster() with one field set (``value is DELETE``: removed); path like 'models.1.replicas.0.port'."""
    data = copy.deepcopy(_cluster())
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = data
    for p in parents:
        node = node[p]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return data


DELETE = object()


def test_parse_full_config():
    c = parse_cluster_config(_cluster(), where="cluster.yaml")
    assert (c.name, c.router.host, c.router.port, c.profiles_dir, c.source) == (
        "agents", "127.0.0.1", 8000, "profiles", "cluster.yaml")
    assert c.slo == SloConfig(500.0, 0.06, None)
    assert c.transfer == TransferConfig("zmq", "127.0.0.1", 5600, "DROIDSPEAK_SECRET", 2.0)
    assert [m.name for m in c.models] == ["tester", "libwriter", "other"]
    assert c.models[0].replicas[1] == ReplicaConfig("127.0.0.1", 30011, (1, 2), 0.8)
    assert c.models[0].server_args == ("--attention-backend", "triton") and c.models[1].server_args == ()
    assert c.num_replicas == 4
    assert [r.path for r in c.replicas()] == ["models[0].replicas[0]", "models[0].replicas[1]",
                                              "models[1].replicas[0]", "models[2].replicas[0]"]


def test_defaults_for_optional_sections():
    data = {k: v for k, v in _cluster().items() if k not in ("name", "profiles_dir", "slo", "transfer")}
    c = parse_cluster_config(data)
    assert (c.name, c.profiles_dir, c.slo, c.transfer) == (None, "profiles", SloConfig(), TransferConfig())
    assert (c.slo.ttft_ms, c.slo.max_quality_drop, c.transfer.base_port) == (500.0, 0.05, 5600)


R1 = "cluster.yaml: models[1].replicas[0]"


@pytest.mark.parametrize("path, value, message", [
    ("colour", "red", "cluster.yaml: unknown field 'colour'; known: name, router, profiles_dir, slo, transfer, models"),
    ("models.0.replicas.0.gpu", [0], "cluster.yaml: models[0].replicas[0]: unknown field 'gpu' (did you mean 'gpus'?)"),
    ("router", DELETE, "cluster.yaml: router: required field is missing"),
    ("models", [], "cluster.yaml: models: must be a non-empty list, got []"),
    ("models.1.replicas", [], "cluster.yaml: models[1].replicas: must be a non-empty list, got []"),
    ("models.1.replicas.0.port", 0, f"{R1}.port: must be an integer in 1..65535, got 0"),
    ("models.1.replicas.0.port", 65536, f"{R1}.port: must be an integer in 1..65535, got 65536"),
    ("models.1.replicas.0.port", "30002", f"{R1}.port: must be an integer in 1..65535, got '30002'"),
    ("models.1.replicas.0.port", 30001,
     f"{R1}.port: 127.0.0.1:30001 is already used by models[0].replicas[0]"),
    ("models.1.replicas.0.port", 8000, f"{R1}.port: 127.0.0.1:8000 is already used by router"),
    ("models.1.replicas.0.gpus", [], f"{R1}.gpus: must be a non-empty list, got []"),
    ("models.1.replicas.0.gpus", [0, -1], f"{R1}.gpus[1]: must be an integer >= 0, got -1"),
    ("models.1.replicas.0.gpus", [True], f"{R1}.gpus[0]: must be an integer >= 0, got True"),
    ("models.1.replicas.0.gpus", [1, 1], f"{R1}.gpus[1]: GPU 1 is listed twice"),
    ("models.1.replicas.0.mem_fraction", 1.0, f"{R1}.mem_fraction: must be a number in (0, 1), got 1.0"),
    ("models.1.replicas.0.mem_fraction", 0, f"{R1}.mem_fraction: must be a number in (0, 1), got 0"),
    ("models.1.name", "tester", "cluster.yaml: models[1].name: 'tester' is already used by models[0]"),
    ("models.1.name", "", "cluster.yaml: models[1].name: must be a non-empty string, got ''"),
    ("models.1.name", "org/lib", "cluster.yaml: models[1].name: must be a name without '/'"),
    ("models.1.path", None, "cluster.yaml: models[1].path: must be a non-empty string, got None"),
    ("models.1.server_args", "--x", "cluster.yaml: models[1].server_args: must be a list, got '--x'"),
    ("models.1.server_args", ["--x", 3], "cluster.yaml: models[1].server_args[1]: must be a string, got 3"),
    ("models.1.server_args", ["--port=1"],
     "cluster.yaml: models[1].server_args[0]: --port is set by the cluster config, not server_args"),
    ("slo.ttft_ms", 0, "cluster.yaml: slo.ttft_ms: must be a number in (0, inf), got 0"),
    ("slo.max_quality_drop", -0.01, "cluster.yaml: slo.max_quality_drop: must be a number in [0, inf), got -0.01"),
    ("slo.accuracy_target", 1.5, "cluster.yaml: slo.accuracy_target: must be a number in (0, 1], got 1.5"),
    ("slo.accuracy_target", 0, "cluster.yaml: slo.accuracy_target: must be a number in (0, 1], got 0"),
    ("transfer.data_plane", "rdma", "cluster.yaml: transfer.data_plane: must be one of ['zmq', 'nccl', 'cuda_ipc'], got 'rdma'"),
    ("transfer.fetch_timeout_s", float("nan"), "cluster.yaml: transfer.fetch_timeout_s: must be a number in (0, inf)"),
    ("transfer.secret_env", "A=B", "cluster.yaml: transfer.secret_env: must be an environment variable name"),
    ("transfer.base_port", 65530, "cluster.yaml: transfer.base_port: 4 replicas need ports 65530..65537, past 65535"),
    ("transfer.base_port", 29999, "cluster.yaml: transfer.base_port: transfer ports 29999..30006 on 127.0.0.1 "
                                  "include models[0].replicas[0]'s 127.0.0.1:30001"),
    ("router", {"host": "127.0.0.1"}, "cluster.yaml: router.port: required field is missing"),
    ("transfer", [1], "cluster.yaml: transfer: must be a mapping, got [1]"),
])
def test_bad_fields_name_file_and_path(path, value, message):
    with pytest.raises(ClusterConfigError, match="^" + re.escape(message)):
        parse_cluster_config(_with(path, value), where="cluster.yaml")


def test_wildcard_hosts_clash_and_distinct_hosts_do_not():
    parse_cluster_config(_with("models.1.replicas.0", {"host": "10.0.0.2", "port": 30001, "gpus": [0],
                                                       "mem_fraction": 0.5}))
    with pytest.raises(ClusterConfigError, match=re.escape("0.0.0.0:30001 is already used by models[0].replicas[0]")):
        parse_cluster_config(_with("models.1.replicas.0", {"host": "0.0.0.0", "port": 30001, "gpus": [0],
                                                           "mem_fraction": 0.5}))


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("router: [")
    with pytest.raises(ClusterConfigError, match=re.escape(f"{bad}:1:10: not valid YAML")):
        load_cluster_config(bad)
    bad.write_text("")
    with pytest.raises(ClusterConfigError, match=re.escape(f"{bad}: must be a mapping, got None")):
        load_cluster_config(bad)
    with pytest.raises(ClusterConfigError, match=re.escape(f"{tmp_path / 'none.yaml'}: cannot read")):
        load_cluster_config(tmp_path / "none.yaml")


def _report(config, incompatible=()):
    """A CheckReport where every pair is compatible except the (sender, receiver) pairs given."""
    names = [m.name for m in config.models]
    pairs = tuple(PairStatus(s, r, (s, r) not in incompatible) for s in names for r in names if s != r)
    return CheckReport((), (), pairs)


def test_plan_commands_env_and_transfer_ports():
    config = parse_cluster_config(_cluster())
    plan = plan_cluster(config, _report(config), python="py")
    assert [(s.model, s.replica_index, s.port) for s in plan.servers] == [
        ("tester", 0, 30001), ("tester", 1, 30011), ("libwriter", 0, 30002), ("other", 0, 30003)]
    assert plan.servers[0].command == (
        "py", "-m", "sglang.launch_server", "--model-path", "/m/tester", "--served-model-name", "tester",
        "--host", "127.0.0.1", "--port", "30001", "--radix-cache-backend", "droidspeak",
        "--mem-fraction-static", "0.4", "--enable-metrics", "--attention-backend", "triton")
    assert plan.servers[1].command[-4:] == ("--tp-size", "2", "--attention-backend", "triton")
    assert plan.servers[2].command[-3:] == ("--mem-fraction-static", "0.45", "--enable-metrics")
    assert [s.env for s in plan.servers[:2]] == [{"CUDA_VISIBLE_DEVICES": "0", "SGLANG_PLUGINS": "droidspeak"},
                                                 {"CUDA_VISIBLE_DEVICES": "1,2", "SGLANG_PLUGINS": "droidspeak"}]
    binds = [(s.settings["export_bind"], s.settings["announce_bind"]) for s in plan.servers]
    assert binds == [("tcp://127.0.0.1:5600", "tcp://127.0.0.1:5601"), ("tcp://127.0.0.1:5602", "tcp://127.0.0.1:5603"),
                     ("tcp://127.0.0.1:5604", "tcp://127.0.0.1:5605"), ("tcp://127.0.0.1:5606", "tcp://127.0.0.1:5607")]
    assert plan.router == ("127.0.0.1", 8000) and plan.to_dict()["servers"][1]["gpus"] == [1, 2]


def test_settings_pass_parse_settings_and_peers_are_every_replica_of_other_models():
    config = parse_cluster_config(_cluster())
    plan = plan_cluster(config, _report(config))
    settings = {(s.model, s.replica_index): parse_settings(s.settings, where="x") for s in plan.servers}
    tester0, tester1 = settings["tester", 0], settings["tester", 1]
    assert (tester0.model, tester0.profiles_dir, tester0.max_quality_drop, tester0.fetch_timeout_s,
            tester0.secret_env) == ("tester", "profiles", 0.06, 2.0, "DROIDSPEAK_SECRET")
    assert tester0.peers == tester1.peers == (Peer("libwriter", "tcp://127.0.0.1:5604", "tcp://127.0.0.1:5605"),
                                              Peer("other", "tcp://127.0.0.1:5606", "tcp://127.0.0.1:5607"))
    # libwriter fetches from both tester replicas (each announcement credits its replica)
    assert [(p.model, p.fetch) for p in settings["libwriter", 0].peers] == [
        ("tester", "tcp://127.0.0.1:5600"), ("tester", "tcp://127.0.0.1:5602"), ("other", "tcp://127.0.0.1:5606")]


def test_incompatible_models_are_not_peers():
    config = parse_cluster_config(_cluster())
    incompatible = {("other", "tester"), ("tester", "other"), ("other", "libwriter"), ("libwriter", "other")}
    plan = plan_cluster(config, _report(config, incompatible))
    assert [p["model"] for p in plan.server("tester", 1).settings["peers"]] == ["libwriter"]
    assert [p["model"] for p in plan.server("libwriter").settings["peers"]] == ["tester", "tester"]  # 2 replicas
    assert plan.server("other").settings["peers"] == []
    assert parse_settings(plan.server("other").settings).peers == ()


def test_wildcard_bind_host_peers_connect_to_replica_host():
    data = _with("transfer.bind_host", "0.0.0.0")
    data["models"][1]["replicas"][0]["host"] = "10.0.0.2"
    config = parse_cluster_config(data)
    plan = plan_cluster(config, _report(config))
    tester = plan.server("tester").settings
    assert tester["export_bind"] == "tcp://0.0.0.0:5600"
    assert tester["peers"][0] == {"model": "libwriter", "fetch": "tcp://10.0.0.2:5604", "announce": "tcp://10.0.0.2:5605"}


@pytest.mark.parametrize("name, gpus, fractions", [
    ("cluster-one-gpu.yaml", [(0,), (0,)], [0.3, 0.45]),
    ("cluster-two-gpu.yaml", [(0,), (1,)], [0.8, 0.8]),
])
def test_examples_load_validate_and_plan(name, gpus, fractions, monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_cluster_config(Path("examples") / name)
    assert [m.name for m in config.models] == ["tester", "libwriter"]
    assert [m.path for m in config.models] == [".cache/gpu-models/tester", ".cache/gpu-models/libwriter"]
    assert [m.replicas[0].gpus for m in config.models] == gpus
    assert [m.replicas[0].mem_fraction for m in config.models] == fractions
    plan = plan_cluster(config, _report(config))
    for server in plan.servers:
        assert parse_settings(server.settings).peers[0].model != server.model


LATENCY = {"ms_per_layer_token": 0.0014, "ms_fixed": 0.0, "kv_bytes_per_layer_token": 4096,
           "e_bytes_per_token": 8192, "link_gbps": 4.5, "pipelined": False}


def test_latency_model_turns_the_policy_on_for_that_model_only(tmp_path):
    calibrated = tmp_path / "latency.json"  # as bench/calibrate.py writes it
    calibrated.write_text(json.dumps({"card": "x", "latency_model": LATENCY}))
    data = _with("models.1.latency_model", str(calibrated))
    data["models"][2]["latency_model"] = LATENCY
    config = parse_cluster_config(data)
    plan = plan_cluster(config, _report(config))
    libwriter, other, tester = (plan.server(n).settings for n in ("libwriter", "other", "tester"))
    assert libwriter["slo_ttft_ms"] == 500 and libwriter["latency_model"] == LATENCY
    assert other["latency_model"] == LATENCY
    assert "slo_ttft_ms" not in tester and "latency_model" not in tester
    settings = parse_settings(libwriter)
    assert settings.policy_enabled and settings.latency_model.link_gbps == 4.5
    assert not parse_settings(tester).policy_enabled


def test_nccl_places_servers_by_gpu_id_so_nccl_sees_every_gpu():
    data = _with("transfer.data_plane", "nccl")
    data["models"][1]["replicas"][0]["gpus"] = [0, 2]  # evenly spaced, step 2
    data["models"][2]["replicas"][0]["gpus"] = [5, 3]  # not increasing: only CUDA_VISIBLE_DEVICES can say it
    config = parse_cluster_config(data)
    plan = plan_cluster(config, _report(config))
    tail = {s.model + str(s.replica_index): s.command[s.command.index("--enable-metrics") + 1:] for s in plan.servers}
    assert tail["tester0"] == ("--base-gpu-id", "0", "--attention-backend", "triton")
    assert tail["tester1"] == ("--tp-size", "2", "--base-gpu-id", "1", "--attention-backend", "triton")
    assert tail["libwriter0"][:6] == ("--tp-size", "2", "--base-gpu-id", "0", "--gpu-id-step", "2")
    assert "--base-gpu-id" not in tail["other0"]
    assert [s.env.get("CUDA_VISIBLE_DEVICES") for s in plan.servers] == [None, None, None, "5,3"]
    zmq = parse_cluster_config(_cluster())  # other planes keep CUDA_VISIBLE_DEVICES
    assert all("--base-gpu-id" not in s.command for s in plan_cluster(zmq, _report(zmq)).servers)


def test_calibrated_latency_file_with_an_exponent_float(tmp_path):
    # calibrate_latency.py on the H200 (2026-11-28) clamped a flat slope to 1e-06, which
    # json.dumps writes as "1e-06" and PyYAML alone reads as a string
    calibrated = tmp_path / "latency.json"
    calibrated.write_text(json.dumps({"latency_model": {**LATENCY, "ms_per_layer_token": 1e-06}}))
    config = parse_cluster_config(_with("models.1.latency_model", str(calibrated)))
    settings = plan_cluster(config, _report(config)).server("libwriter").settings
    assert settings["latency_model"]["ms_per_layer_token"] == 1e-06
    written = tmp_path / "settings.json"  # as cluster/procs.py writes each server's settings
    written.write_text(json.dumps(settings, indent=2))
    assert load_settings(str(written)).latency_model.ms_per_layer_token == 1e-06


@pytest.mark.parametrize("value, message", [
    ({**LATENCY, "link_gbps": 0}, r"models\[1\]\.latency_model: field 'link_gbps' must be > 0"),
    ({"ms_fixed": 1.0}, r"models\[1\]\.latency_model: missing field"),
    ("/nonexistent/latency.json", r"models\[1\]\.latency_model: cannot read a latency model"),
])
def test_bad_latency_model_names_the_field(value, message):
    with pytest.raises(ClusterConfigError, match=message):
        parse_cluster_config(_with("models.1.latency_model", value))
