"""Plugin settings beyond the basics in test_plugin.py: profiles, secret, endpoints, peers."""

from __future__ import annotations

import json
import logging
import re

import pytest

from sglang_droidspeak.identity import fingerprint_from_config
from sglang_droidspeak.plan import FrontierPoint, LayerPlan, ModelRef, Profile, save_profile
from sglang_droidspeak.sglang.settings import DroidSpeakSettings, Peer, SettingsError, parse_settings

TOKENIZER = json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})
CONFIG = {"model": "coder-b", "profiles_dir": "profiles", "max_quality_drop": 0.06,
          "fetch_timeout_s": 1.5, "secret_env": "MY_SECRET", "export_bind": "tcp://127.0.0.1:5601",
          "announce_bind": "ipc:///tmp/ds-announce",
          "peers": [{"model": "coder-a", "fetch": "tcp://127.0.0.1:5501", "announce": "tcp://[::1]:5502"}]}


def _fp():
    cfg = {"num_hidden_layers": 8, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 128, "architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    return fingerprint_from_config(cfg, TOKENIZER)


def _save(directory, sender="coder-a", receiver="coder-b", frontier=None):
    frontier = frontier or (FrontierPoint(LayerPlan.contiguous(8, 0, 2), 0.55, 0.06),
                            FrontierPoint(LayerPlan(8, ((0, 2), (4, 6))), 0.60, 0.01))
    profile = Profile(sender=ModelRef(sender, _fp()), receiver=ModelRef(receiver, _fp()), num_layers=8,
                      dataset="lcc", metric="edit_sim", receiver_quality=0.61, full_reuse_quality=0.40,
                      frontier=frontier, created="2026-11-28T04:00:00+00:00", tool_version="0.1.0")
    return save_profile(profile, directory / f"{sender}__{receiver}.yaml")


def test_new_fields_parse():
    s = parse_settings(CONFIG, where="cfg.yaml")
    assert (s.profiles_dir, s.max_quality_drop, s.fetch_timeout_s) == ("profiles", 0.06, 1.5)
    assert (s.secret_env, s.export_bind, s.announce_bind) == ("MY_SECRET", "tcp://127.0.0.1:5601", "ipc:///tmp/ds-announce")
    assert s.peers == (Peer("coder-a", "tcp://127.0.0.1:5501", "tcp://[::1]:5502"),)
    assert s.source == "cfg.yaml"


def test_defaults():
    s = parse_settings({})
    assert s == DroidSpeakSettings()
    assert (s.peers, s.export_bind, s.announce_bind) == ((), None, None)
    assert (s.profiles_dir, s.max_quality_drop, s.fetch_timeout_s, s.secret_env) == (None, 0.05, 2.0, "DROIDSPEAK_SECRET")
    assert parse_settings({"export_bind": "tcp://*:5601"}).export_bind == "tcp://*:5601"
    assert s.data_plane == "zmq" and parse_settings({"data_plane": "cuda_ipc"}).data_plane == "cuda_ipc"
    nccl = parse_settings({"data_plane": "nccl", "nccl_host": "10.0.0.2"})
    assert (nccl.data_plane, nccl.nccl_host, s.nccl_host) == ("nccl", "10.0.0.2", "127.0.0.1")


PEER = {"model": "coder-a", "fetch": "tcp://h:1", "announce": "tcp://h:2"}


@pytest.mark.parametrize("data, message", [
    ({"profiles_dir": 3}, "cfg.yaml: profiles_dir: must be a non-empty string"),
    ({"max_quality_drop": -0.1}, "cfg.yaml: max_quality_drop: must be a number >= 0"),
    ({"max_quality_drop": True}, "cfg.yaml: max_quality_drop: must be a number >= 0"),
    ({"fetch_timeout_s": 0}, "cfg.yaml: fetch_timeout_s: must be a number > 0"),
    ({"fetch_timeout_s": float("inf")}, "cfg.yaml: fetch_timeout_s: must be a number > 0"),
    ({"secret_env": ""}, "cfg.yaml: secret_env: must be an environment variable name"),
    ({"data_plane": "rdma"}, "cfg.yaml: data_plane: must be one of ['zmq', 'cuda_ipc', 'nccl', 'nixl'], got 'rdma'"),
    ({"data_plane": None}, "cfg.yaml: data_plane: must be one of ['zmq', 'cuda_ipc', 'nccl', 'nixl'], got None"),
    ({"nccl_host": ""}, "cfg.yaml: nccl_host: must be a non-empty string, got ''"),
    ({"export_bind": "http://h:1"}, "cfg.yaml: export_bind: must be a 'tcp://host:port' or 'ipc://path'"),
    ({"export_bind": "tcp://h:0"}, "cfg.yaml: export_bind: tcp endpoint needs host:port"),
    ({"announce_bind": "tcp://h:65536"}, "cfg.yaml: announce_bind: tcp endpoint needs host:port"),
    ({"announce_bind": "tcp://h"}, "cfg.yaml: announce_bind: tcp endpoint needs host:port"),
    ({"announce_bind": "ipc://"}, "cfg.yaml: announce_bind: ipc endpoint needs a path"),
    ({"export_bind": "tcp://h:1", "announce_bind": "tcp://h:1"}, "cfg.yaml: announce_bind: same endpoint"),
    ({"peers": {"model": "a"}}, "cfg.yaml: peers: must be a list"),
    ({"peers": [PEER, {"model": "x", "fetch": "tcp://h:1"}]}, "cfg.yaml: peers[1]: expected exactly the fields"),
    ({"peers": [PEER, {**PEER, "model": "m2", "fetch": "tcp://h:x"}]}, "cfg.yaml: peers[1].fetch: tcp endpoint"),
    ({"peers": [{**PEER, "announce": 5}]}, "cfg.yaml: peers[0].announce: must be"),
    ({"peers": [{**PEER, "model": ""}]}, "cfg.yaml: peers[0].model: must be a non-empty string"),
    ({"peers": [PEER, PEER]}, "cfg.yaml: peers[1].fetch: 'tcp://h:1' is listed twice"),
    ({"peers": [PEER, {**PEER, "fetch": "tcp://h:7"}]}, "cfg.yaml: peers[1].announce: 'tcp://h:2' is listed twice"),
    ({"model": "coder-a", "peers": [PEER]}, "cfg.yaml: peers[0].model: 'coder-a' is this server's own model"),
])
def test_bad_values_name_file_and_field(data, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        parse_settings(data, where="cfg.yaml")


def test_plan_lookup_picks_cheapest_within_drop_and_caches(tmp_path):
    path = _save(tmp_path)
    s = DroidSpeakSettings(model="coder-b", profiles_dir=str(tmp_path), max_quality_drop=0.06)
    lookup = s.plan_lookup()
    assert lookup("coder-a", "coder-b") == LayerPlan.contiguous(8, 0, 2)
    assert lookup("coder-x", "coder-b") is None  # missing file
    path.unlink()
    _save(tmp_path, sender="coder-x")
    assert lookup("coder-a", "coder-b") == LayerPlan.contiguous(8, 0, 2)  # cached hit
    assert lookup("coder-x", "coder-b") is None  # cached miss
    tight = DroidSpeakSettings(profiles_dir=str(tmp_path), max_quality_drop=0.02).plan_lookup()
    assert tight("coder-x", "coder-b") == LayerPlan(8, ((0, 2), (4, 6)))
    assert DroidSpeakSettings(profiles_dir=str(tmp_path), max_quality_drop=0.0).plan_lookup()("coder-x", "coder-b") is None


def test_inline_plans_win_over_profiles(tmp_path):
    _save(tmp_path)
    s = parse_settings({"profiles_dir": str(tmp_path), "plans": [
        {"sender": "coder-a", "receiver": "coder-b", "num_layers": 8, "groups": [[0, 8]]}]})
    assert s.plan_lookup()("coder-a", "coder-b") == LayerPlan.full_prefill(8)


def test_malformed_profile_warns_once_and_gives_none(tmp_path, caplog):
    (tmp_path / "coder-a__coder-b.yaml").write_text("format_version: 1\nsender: [oops\n")
    lookup = DroidSpeakSettings(profiles_dir=str(tmp_path)).plan_lookup()
    with caplog.at_level(logging.WARNING, logger="sglang_droidspeak.sglang.settings"):
        assert lookup("coder-a", "coder-b") is None
        assert lookup("coder-a", "coder-b") is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "coder-a__coder-b.yaml" in warnings[0].getMessage()


def test_lookup_ignores_path_like_names(tmp_path):
    _save(tmp_path)
    lookup = DroidSpeakSettings(profiles_dir=str(tmp_path / "sub")).plan_lookup()
    assert lookup("../coder-a", "coder-b") is None


def test_secret(monkeypatch):
    s = DroidSpeakSettings(secret_env="DS_TEST_SECRET", source="cfg.yaml")
    monkeypatch.delenv("DS_TEST_SECRET", raising=False)
    assert s.secret() is None
    monkeypatch.setenv("DS_TEST_SECRET", "é" * 8)  # 16 bytes in utf-8
    assert s.secret() == "é".encode() * 8
    monkeypatch.setenv("DS_TEST_SECRET", "short-secret")
    with pytest.raises(SettingsError, match=re.escape("cfg.yaml: secret_env: $DS_TEST_SECRET holds 12 bytes")):
        s.secret()


def test_profile_for_another_pair_is_ignored_with_a_warning(tmp_path, caplog):
    _save(tmp_path, sender="x", receiver="y").rename(tmp_path / "coder-a__coder-b.yaml")
    with caplog.at_level(logging.WARNING, logger="sglang_droidspeak.sglang.settings"):
        assert DroidSpeakSettings(profiles_dir=str(tmp_path)).plan_lookup()("coder-a", "coder-b") is None
    assert len(caplog.records) == 1 and "it is for x->y" in caplog.records[0].getMessage()


def test_removed_capture_e_layers_is_an_unknown_field():
    """E is computed on demand at export time; the old key must fail loudly, not be ignored."""
    with pytest.raises(SettingsError, match=re.escape("cfg.yaml: unknown field(s) ['capture_e_layers']")):
        parse_settings({"model": "coder-a", "capture_e_layers": "all"}, where="cfg.yaml")


def test_policy_fields_parse_and_name_bad_values():
    link = {"ms_per_layer_token": 0.01, "ms_fixed": 1.0, "kv_bytes_per_layer_token": 256,
            "e_bytes_per_token": 256, "link_gbps": 25.0}
    s = parse_settings({"profiles_dir": "p", "slo_ttft_ms": 400, "latency_model": link})
    assert s.policy_enabled and s.slo_ttft_ms == 400.0 and s.latency_model.link_gbps == 25.0
    assert not parse_settings({"slo_ttft_ms": 400, "latency_model": link}).policy_enabled  # no profiles
    with pytest.raises(SettingsError, match=r"<settings>: slo_ttft_ms: must be a number > 0, got 0"):
        parse_settings({"slo_ttft_ms": 0})
    with pytest.raises(SettingsError, match=r"<settings>: latency_model: .*link_gbps"):
        parse_settings({"latency_model": {**link, "link_gbps": 0}})
