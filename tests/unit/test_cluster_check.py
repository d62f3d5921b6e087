"""check_cluster and `droidspeak check` on tiny model directories built in tmp_path (CPU only)."""

from __future__ import annotations

import json

import pytest
import yaml

from sglang_droidspeak.cli import main
from sglang_droidspeak.cluster import check_cluster, check_machine, load_cluster_config, plan_cluster
from sglang_droidspeak.identity import fingerprint_model_dir
from sglang_droidspeak.plan import FrontierPoint, LayerPlan, ModelRef, Profile, save_profile
from sglang_droidspeak.reference.tiny import tiny_config
from sglang_droidspeak.sglang.settings import parse_settings

TOKENIZER = json.dumps({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}})


def _model_dir(root, name, **config):
    path = root / "models" / name
    tiny_config("llama", **config).save_pretrained(path)
    (path / "tokenizer.json").write_text(TOKENIZER)
    return path


def _save_profile(root, sender, receiver, drops=(0.08, 0.01), names=None):
    """A real profile for sender -> receiver (4 layers) with the given frontier drops."""
    fp = {n: fingerprint_model_dir(root / "models" / n) for n in (sender, receiver)}
    s_name, r_name = names or (sender, receiver)
    frontier = (FrontierPoint(LayerPlan.contiguous(4, 0, 1), 0.61 - drops[0], drops[0]),
                FrontierPoint(LayerPlan.contiguous(4, 0, 2), 0.61 - drops[1], drops[1]))
    profile = Profile(sender=ModelRef(s_name, fp[sender]), receiver=ModelRef(r_name, fp[receiver]), num_layers=4,
                      dataset="lcc", metric="edit_sim", receiver_quality=0.61, full_reuse_quality=0.4,
                      frontier=frontier, created="2026-11-28T04:00:00+00:00", tool_version="0.1.0")
    return save_profile(profile, root / "profiles" / f"{sender}__{receiver}.yaml")


def _replica(port, gpu, fraction):
    return {"host": "127.0.0.1", "port": port, "gpus": [gpu], "mem_fraction": fraction}


@pytest.fixture
def cluster(tmp_path):
    """tester, libwriter (compatible) and wide (hidden size 128: incompatible); returns the config path."""
    _model_dir(tmp_path, "tester")
    _model_dir(tmp_path, "libwriter")
    _model_dir(tmp_path, "wide", hidden_size=128)
    (tmp_path / "profiles").mkdir()
    data = {"router": {"host": "127.0.0.1", "port": 8000}, "profiles_dir": str(tmp_path / "profiles"),
            "slo": {"max_quality_drop": 0.06},
            "models": [{"name": n, "path": str(tmp_path / "models" / n), "replicas": [_replica(30001 + i, i, 0.5)]}
                       for i, n in enumerate(("tester", "libwriter", "wide"))]}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _rewrite(path, edit):
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))


def test_compatibility_of_every_ordered_pair(cluster):
    report = check_cluster(load_cluster_config(cluster))
    assert [(p.sender, p.receiver, p.compatible) for p in report.pairs] == [
        ("tester", "libwriter", True), ("tester", "wide", False), ("libwriter", "tester", True),
        ("libwriter", "wide", False), ("wide", "tester", False), ("wide", "libwriter", False)]
    reason = report.pair("wide", "tester").reason
    assert reason.startswith("wide and tester cannot share KV (hidden_size: wide=128 vs tester=64; ")
    assert "head_dim: wide=32 vs tester=16" in reason
    assert (report.pair("tester", "wide").profile, report.pair("tester", "wide").plan) == ("-", None)
    assert report.errors == ()
    assert [w for w in report.warnings if "cannot share" in w] == [
        f"{report.pair('tester', 'wide').reason}: normal prefill between them",
        f"{report.pair('libwriter', 'wide').reason}: normal prefill between them"]
    assert sorted(report.fingerprints) == ["libwriter", "tester", "wide"]


def test_plan_leaves_incompatible_models_out_of_peers(cluster):
    config = load_cluster_config(cluster)
    plan = plan_cluster(config)  # computes the check itself
    assert [p["model"] for p in plan.server("tester").settings["peers"]] == ["libwriter"]
    assert [p["model"] for p in plan.server("libwriter").settings["peers"]] == ["tester"]
    assert plan.server("wide").settings["peers"] == []
    for server in plan.servers:
        parse_settings(server.settings)


def test_profiles_present_missing_and_malformed(cluster, tmp_path):
    _save_profile(tmp_path, "tester", "libwriter")
    (tmp_path / "profiles" / "libwriter__tester.yaml").write_text("format_version: 1\nsender: 3\n")
    report = check_cluster(load_cluster_config(cluster))
    good, bad = report.pair("tester", "libwriter"), report.pair("libwriter", "tester")
    assert (good.profile, good.plan) == ("ok", LayerPlan.contiguous(4, 0, 2))  # drop 0.08 > 0.06 >= 0.01
    assert bad.profile == "malformed" and bad.plan is None
    assert report.errors == (f"libwriter -> tester: {tmp_path}/profiles/libwriter__tester.yaml:1: "
                             "receiver: required field is missing",)
    (tmp_path / "profiles" / "libwriter__tester.yaml").unlink()
    report = check_cluster(load_cluster_config(cluster))
    assert report.errors == () and report.pair("libwriter", "tester").profile == "missing"
    assert (f"libwriter -> tester: no profile: normal prefill for this pair "
            f"({tmp_path}/profiles/libwriter__tester.yaml not found)") in report.warnings


def test_profile_for_other_models_or_out_of_budget(cluster, tmp_path):
    _save_profile(tmp_path, "tester", "libwriter", names=("libwriter", "tester"))
    _save_profile(tmp_path, "libwriter", "tester", drops=(0.2, 0.1))
    report = check_cluster(load_cluster_config(cluster))
    assert report.pair("tester", "libwriter").profile == "mismatch"
    assert report.errors == (f"tester -> libwriter: {tmp_path}/profiles/tester__libwriter.yaml: "
                             "it is for libwriter -> tester",)
    assert (report.pair("libwriter", "tester").profile, report.pair("libwriter", "tester").plan) == ("ok", None)
    assert ("libwriter -> tester: no frontier point within max_quality_drop 0.06: normal prefill for this pair"
            in report.warnings)


def test_unreadable_model_dirs_are_errors_and_missing_ones_are_listed(cluster, tmp_path):
    (tmp_path / "models" / "libwriter" / "tokenizer.json").unlink()
    _rewrite(cluster, lambda d: d["models"][2].update(path=str(tmp_path / "nowhere")))
    report = check_cluster(load_cluster_config(cluster))
    assert report.errors == (
        f"{cluster}: models[1].path: cannot fingerprint {tmp_path}/models/libwriter: {tmp_path}/models/libwriter: "
        "no tokenizer.json; cannot fingerprint this model",)
    assert report.missing_models == (f"{cluster}: models[2].path: {tmp_path}/nowhere is not on this machine",)
    assert report.ok is False  # serve refuses
    assert report.pair("tester", "libwriter").compatible is None
    assert check_cluster(load_cluster_config(cluster), load_fingerprints=False).errors == ()


def test_shared_gpu_warnings(cluster):
    def share(data):
        for i, fraction in enumerate((0.3, 0.45, 0.25)):
            data["models"][i]["replicas"][0].update(gpus=[0], mem_fraction=fraction)
    _rewrite(cluster, share)
    report = check_cluster(load_cluster_config(cluster), load_fingerprints=False)
    assert [w for w in report.warnings if "GPU" in w] == [
        "127.0.0.1 GPU 0: shared by tester[0] (0.3), libwriter[0] (0.45), wide[0] (0.25); SGLang counts the "
        "others' memory against each mem_fraction: cap the pools with --max-total-tokens"]
    _rewrite(cluster, lambda d: d["models"][2]["replicas"][0].update(gpus=[2]))
    report = check_cluster(load_cluster_config(cluster), load_fingerprints=False)
    assert [w for w in report.warnings if "GPU" in w] == [
        "127.0.0.1 GPU 0: shared by tester[0] (0.3), libwriter[0] (0.45); SGLang counts the "
        "others' memory against each mem_fraction: cap the pools with --max-total-tokens"]


@pytest.fixture
def machine(monkeypatch):
    """Three visible GPUs and a shared secret: the CLI's machine checks add nothing."""
    monkeypatch.setattr(check_machine, "visible_gpu_count", lambda: 3)
    monkeypatch.setenv("DROIDSPEAK_SECRET", "s" * 16)


def test_cli_exit_codes_and_table(cluster, tmp_path, capsys, machine):
    _save_profile(tmp_path, "tester", "libwriter")
    assert main(["check", str(cluster)]) == 0
    out = capsys.readouterr().out
    assert "  tester -> libwriter  yes         ok       reuse, recompute [0, 2) (2/4 layers)\n" in out
    assert "  libwriter -> tester  yes         missing  normal prefill\n" in out
    assert "  tester -> wide       no          -        no sharing\n" in out
    assert out.endswith("0 error(s), 3 warning(s)\n")
    (tmp_path / "profiles" / "libwriter__tester.yaml").write_text("[")
    assert main(["check", str(cluster)]) == 1
    assert "error: libwriter -> tester: " in capsys.readouterr().out
    cluster.write_text("router: {host: h, port: 0}\nmodels: []\n")
    assert main(["check", str(cluster)]) == 1
    assert capsys.readouterr().out == f"error: {cluster}:1: router.port: must be an integer in 1..65535, got 0\n"


def test_cli_print_plan_is_json_on_stdout(cluster, capsys, machine):
    assert main(["check", str(cluster), "--print-plan", "--no-fingerprints"]) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    assert [s["model"] for s in plan["servers"]] == ["tester", "libwriter", "wide"]
    assert plan["servers"][0]["env"] == {"CUDA_VISIBLE_DEVICES": "0", "SGLANG_PLUGINS": "droidspeak"}
    assert [p["model"] for p in plan["servers"][0]["settings"]["peers"]] == ["libwriter", "wide"]  # unknown: kept
    assert "tester -> libwriter  unknown" in captured.err


@pytest.mark.parametrize("data_plane, expected", [("zmq", "zmq"), ("cuda_ipc", "cuda_ipc"), ("nccl", "nccl")])
def test_plan_passes_the_data_plane_to_every_server(cluster, data_plane, expected):
    _rewrite(cluster, lambda data: data.setdefault("transfer", {}).update(data_plane=data_plane))
    plan = plan_cluster(load_cluster_config(cluster))
    assert [server.settings["data_plane"] for server in plan.servers] == [expected] * len(plan.servers)
    assert {parse_settings(server.settings).data_plane for server in plan.servers} == {expected}
