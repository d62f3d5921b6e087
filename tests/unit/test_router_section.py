"""The cluster YAML's ``router:`` section and the gateway command line it gives."""

from __future__ import annotations

import pytest

from sglang_droidspeak.cluster.config import ClusterConfigError, parse_cluster_config
from sglang_droidspeak.cluster.gateway import gateway_argv
from sglang_droidspeak.router.settings import RouterSettings

MODEL = {"name": "tester", "path": "/m", "replicas": [{"host": "127.0.0.1", "port": 30001, "gpus": [0], "mem_fraction": 0.5}]}


def config(**router):
    return parse_cluster_config({"router": {"host": "127.0.0.1", "port": 8000, **router}, "models": [MODEL]}, "c.yaml")


def test_defaults_are_the_gateway_with_gateway_like_limits():
    router = config().router
    assert (router.kind, router.policy, router.gateway_metrics_port) == ("gateway", "cache_aware", 8001)
    assert router.settings == RouterSettings()
    assert (RouterSettings().total_timeout_s, RouterSettings().first_byte_timeout_s) == (1800.0, 1800.0)


def test_our_router_with_its_own_timeouts():
    router = config(kind="droidspeak", idle_timeout_s=30, max_body_bytes=1024).router
    assert router.kind == "droidspeak" and router.endpoints() == [("127.0.0.1", 8000, "router")]
    assert (router.settings.idle_timeout_s, router.settings.max_body_bytes) == (30.0, 1024)


@pytest.mark.parametrize("router, message", [
    ({"kind": "nginx"}, "c.yaml: router.kind: must be one of ['gateway', 'droidspeak'], got 'nginx'"),
    ({"idle_timeout_s": 0}, "c.yaml: router.idle_timeout_s: must be a number in (0, inf), got 0"),
    ({"max_body_bytes": 1.5}, "c.yaml: router.max_body_bytes: must be an integer, got 1.5"),
    ({"timeout": 5}, "c.yaml: router: unknown field 'timeout' (did you mean 'idle_timeout_s'?); known: host, port, "
                     "kind, policy, metrics_port, connect_timeout_s, first_byte_timeout_s, idle_timeout_s, "
                     "total_timeout_s, health_check_interval_s, health_check_timeout_s, status_timeout_s, "
                     "max_body_bytes, max_json_depth"),
    ({"metrics_port": 30001}, "c.yaml: models[0].replicas[0].port: 127.0.0.1:30001 is already used by "
                              "router.metrics_port"),
])
def test_a_bad_router_field_is_named(router, message):
    with pytest.raises(ClusterConfigError) as info:
        config(**router)
    assert str(info.value) == message


def test_router_settings_name_the_bad_field():
    with pytest.raises(ValueError, match=r"RouterSettings.connect_timeout_s must be > 0 and finite, got -1"):
        RouterSettings(connect_timeout_s=-1)
    with pytest.raises(ValueError, match=r"RouterSettings.max_json_depth must be an integer, got 2.5"):
        RouterSettings(max_json_depth=2.5)


def test_gateway_argv_maps_the_settings_onto_its_flags():
    argv = gateway_argv("py", "0.0.0.0", 8000, 8001, RouterSettings(total_timeout_s=60.5, health_check_interval_s=0.5),
                        "round_robin")
    flags = dict(zip(argv[4::2], argv[5::2]))
    assert argv[:4] == ["py", "-m", "sglang_router.launch_router", "--enable-igw"]
    assert flags == {"--host": "0.0.0.0", "--port": "8000", "--policy": "round_robin", "--prometheus-host": "0.0.0.0",
                     "--prometheus-port": "8001", "--request-timeout-secs": "61", "--health-check-interval-secs": "1",
                     "--health-check-timeout-secs": "5", "--health-failure-threshold": "1",
                     "--health-success-threshold": "1", "--max-payload-size": str(64 << 20), "--log-level": "info"}
