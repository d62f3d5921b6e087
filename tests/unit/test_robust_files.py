"""Regressions, one per bad-file and bad-value class of docs/ROBUSTNESS.md (exact messages)."""

from __future__ import annotations

import copy
import math
import os
import threading

import pytest

from sglang_droidspeak.cluster import check_machine
from sglang_droidspeak.cluster.config import ClusterConfigError, load_cluster_config, parse_cluster_config
from sglang_droidspeak.plan import ProfileError
from sglang_droidspeak.plan.profile_io import parse_profile
from sglang_droidspeak.sglang.settings import SettingsError, load_settings
from sglang_droidspeak.yaml_io import MAX_CONFIG_BYTES, FileLoadError, load_json_file, read_yaml_file

from test_fuzz_validators import CLUSTER, PROFILE


def _file(tmp_path, content, name="c.yaml"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("content, message", [
    ("a: 1\nb: 2\na: 3\n", ":3:1: duplicate key 'a' (first at line 1)"),
    ("a: &x [1, 2]\nb: *x\n", ":2:4: alias *x refused (write the value out)"),
    ("base: &b {p: 1}\nm:\n  <<: *b\n", ":3:7: alias *b refused (write the value out)"),
    ("[" * 100, ":1:65: nested deeper than 64: refused"),
    ("a: " + "9" * 5000, ":1:4: cannot read the value '" + "9" * 59 + "... (5002 chars): Exceeds the limit (4300 "
                         "digits) for integer string conversio... (140 chars)"),
    ("when: 2026-13-45\n", ":1:7: cannot read the value '2026-13-45': month must be in 1..12"),
    (b"a: 1\nb: \xff\n", ":2:4: not UTF-8 (byte 0xff at offset 8)"),
    ("a: 1\x00\n", ":1: not valid YAML (character #x0000 is not allowed)"),
    ("a: [1,\n", ":2:1: not valid YAML (while parsing a flow node: expected the node content, but found "
                "'<stream end>')"),
    ("#" * (MAX_CONFIG_BYTES + 1), f": is {MAX_CONFIG_BYTES + 1} bytes, the limit is {MAX_CONFIG_BYTES}"),
])
def test_bad_files_are_one_typed_error_with_file_line_and_column(tmp_path, content, message):
    path = _file(tmp_path, content)
    with pytest.raises(FileLoadError) as info:
        read_yaml_file(path)
    assert str(info.value) == f"{path}{message}"


def test_a_billion_laughs_file_is_refused_at_its_first_alias(tmp_path):
    laughs = "a: &a [x, x]\n" + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}]\n"
                                        for i in range(20))
    with pytest.raises(FileLoadError, match=r"c.yaml:2:8: alias \*a refused \(write the value out\)$"):
        read_yaml_file(_file(tmp_path, laughs))


def _in_thread(call):
    """``call()``'s exception, or a failure if it blocks for 5 s (a FIFO must not hang us)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(_raised(call)), daemon=True)
    thread.start()
    thread.join(5)
    assert result, "blocked"
    return result[0]


def _raised(call):
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - returned to the test
        return exc
    return None


@pytest.mark.parametrize("read", [read_yaml_file, load_json_file, load_cluster_config, load_settings])
def test_a_fifo_or_a_directory_is_refused_without_blocking(tmp_path, read):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    for path in (fifo, tmp_path):
        exc = _in_thread(lambda: read(path))
        assert isinstance(exc, (FileLoadError, ClusterConfigError, SettingsError))
        assert str(exc) == f"{path}: not a regular file"


def test_json_result_files_refuse_duplicate_keys_and_deep_nesting(tmp_path):
    with pytest.raises(FileLoadError, match=r"r.json: duplicate key 'a'$"):
        load_json_file(_file(tmp_path, '{"a": 1, "a": 2}', "r.json"))
    with pytest.raises(FileLoadError, match=r"r.json: not valid JSON \(nested too deeply\)$"):
        load_json_file(_file(tmp_path, "[" * 100_000 + "]" * 100_000, "r.json"))


def test_cluster_errors_name_the_line_and_never_echo_a_long_value(tmp_path):
    path = _file(tmp_path, "router: {host: 127.0.0.1, port: 8000}\nmodels:\n  - name: a\n    path: /m\n"
                           "    replicas:\n      - {host: 127.0.0.1, port: 70000, gpus: [0], mem_fraction: 0.5}\n")
    with pytest.raises(ClusterConfigError) as info:
        load_cluster_config(path)
    assert str(info.value) == f"{path}:6: models[0].replicas[0].port: must be an integer in 1..65535, got 70000"
    path.write_text(path.read_text().replace("name: a", "name: " + "n" * 5000).replace("/m", "' '"))
    with pytest.raises(ClusterConfigError) as info:
        load_cluster_config(path)
    assert len(str(info.value)) < len(str(path)) + 120


def _edit(document, where, key, value):
    data = copy.deepcopy(document)
    node = data
    for step in where:
        node = node[step]
    node[key] = value
    return data


@pytest.mark.parametrize("where, key, value, message", [
    (("frontier", 1), "quality", math.nan, "frontier[1].quality: must be a number in [0, 1], got nan"),
    (("frontier", 1), "quality", 1.5, "frontier[1].quality: must be a number in [0, 1], got 1.5"),
    (("frontier", 1), "quality_drop", -0.5,
     "frontier[1].quality_drop: must be receiver_quality - quality = 0.1, got -0.5"),
    ((), "receiver_quality", math.inf, "receiver_quality: must be a number in [0, 1], got inf"),
    ((), "qualty", 0.5, "unknown field 'qualty'; known: format_version"),
    (("frontier", 0), "qualty", 0.5, "frontier[0]: unknown field 'qualty' (did you mean 'quality'?)"),
    (("sender", "fingerprint"), "rope_theta", math.nan, "sender.fingerprint.rope_theta: expected a finite number"),
])
def test_profile_values_outside_their_ranges_are_refused(where, key, value, message):
    with pytest.raises(ProfileError) as info:
        parse_profile(_edit(PROFILE, where, key, value), "p.yaml")
    assert str(info.value).startswith(f"p.yaml: {message}")


@pytest.mark.parametrize("where, key, value, message", [
    (("router",), "host", "my host", "router.host: must be an IP address or a host name"),
    (("router",), "host", "-bad-.lan", "router.host: must be an IP address or a host name"),
    (("transfer",), "bind_host", "10.0.0.300", "transfer.bind_host: must be an IP address or a host name"),
    (("models", 0, "replicas", 0), "gpu", [0], "models[0].replicas[0]: unknown field 'gpu' (did you mean 'gpus'?)"),
    (("slo",), "ttft_ms", math.inf, "slo.ttft_ms: must be a number in (0, inf), got inf"),
])
def test_cluster_values_outside_their_ranges_are_refused(where, key, value, message):
    with pytest.raises(ClusterConfigError) as info:
        parse_cluster_config(_edit(CLUSTER, where, key, value), "c.yaml")
    assert str(info.value).startswith(f"c.yaml: {message}")


def test_gpu_indices_are_checked_against_this_machine(tmp_path):
    config = parse_cluster_config(_edit(CLUSTER, ("models", 1, "replicas", 0), "host", "gpu-node-2"), "c.yaml")
    assert check_machine.gpu_problems(config, gpu_count=1) == ([], [])  # b's GPU 1 is on gpu-node-2: not checked
    config = parse_cluster_config(CLUSTER, "c.yaml")
    assert check_machine.gpu_problems(config, gpu_count=1) == (
        ["c.yaml: models[1].replicas[0].gpus: GPU 1 does not exist here (1 visible: 0..0)"], [])
    assert check_machine.gpu_problems(config, gpu_count=0) == (
        [], ["this machine has no visible GPU: the GPU indices of 2 local server(s) were not checked"])
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert check_machine.visible_gpu_count({}, tmp_path) == 2
    assert check_machine.visible_gpu_count({"CUDA_VISIBLE_DEVICES": "1"}, tmp_path) == 1
    assert check_machine.visible_gpu_count({"CUDA_VISIBLE_DEVICES": ""}, tmp_path) == 0
