"""Profile YAML: round trip, and clear errors naming the file and field for bad input."""

import json

import pytest
import yaml
from transformers import LlamaConfig

from sglang_droidspeak.identity import fingerprint_from_config
from sglang_droidspeak.plan import (
    FrontierPoint, LayerPlan, ModelRef, Profile, ProfileError, find_profile, load_profile,
    profile_filename, save_profile,
)

TOKENIZER = json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})


def _fp(**kw):
    cfg = LlamaConfig(num_hidden_layers=kw.pop("layers", 8), hidden_size=64, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, architectures=["LlamaForCausalLM"], **kw)
    return fingerprint_from_config(cfg, TOKENIZER)


def _profile(**overrides) -> Profile:
    frontier = (
        FrontierPoint(LayerPlan.full_reuse(8), 0.40, 0.21),
        FrontierPoint(LayerPlan.contiguous(8, 0, 2), 0.55, 0.06),
        FrontierPoint(LayerPlan(8, ((0, 2), (4, 6))), 0.60, 0.01),
    )
    fields = dict(sender=ModelRef("tester", _fp()), receiver=ModelRef("libwriter", _fp()), num_layers=8,
                  dataset="lcc", metric="edit_sim", receiver_quality=0.61, full_reuse_quality=0.40,
                  frontier=frontier, granularity=2, sensitivity=tuple(0.01 * i for i in range(8)),
                  created="2026-11-28T04:00:00+00:00", tool_version="0.1.0")
    return Profile(**{**fields, **overrides})


def _write(tmp_path, data, name="p.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_round_trip(tmp_path):
    profile = _profile()
    assert load_profile(save_profile(profile, tmp_path / "x.yaml")) == profile


def test_cheapest_within():
    profile = _profile()
    assert profile.cheapest_within(0.10).plan == LayerPlan.contiguous(8, 0, 2)
    assert profile.cheapest_within(0.5).plan.is_full_reuse
    assert profile.cheapest_within(0.005) is None


def _mutate(fn):
    data = _profile().to_dict()
    fn(data)
    return data


@pytest.mark.parametrize("mutation,message", [
    (lambda d: d.pop("metric"), r"p.yaml:\d+: metric: required field is missing"),
    (lambda d: d.update(num_layers="8"), "num_layers: must be an integer in 1.., got '8'"),
    (lambda d: d.update(num_layers=6), "num_layers: is 6, fingerprints say 8"),
    (lambda d: d["frontier"][1].update(groups=[[0, 9]]), r"frontier\[1\].groups: .*outside"),
    (lambda d: d["frontier"][2].update(groups=[[0, 3], [2, 4]]), r"frontier\[2\].groups: .*overlaps"),
    (lambda d: d["frontier"][1].update(groups=[[0, 1]], num_recomputed_layers=1), r"not multiples of granularity 2"),
    (lambda d: d["frontier"][1].update(num_recomputed_layers=3),
     r"frontier\[1\].num_recomputed_layers: groups recompute 2, got 3"),
    (lambda d: d["frontier"][1].update(groups=[7]), r"frontier\[1\].groups: each group"),
    (lambda d: d["frontier"].reverse(), r"frontier: must be sorted by num_recomputed_layers, got \[4, 2, 0\]"),
    (lambda d: d.update(frontier=[]), r"frontier: must be a non-empty list, got \[\]"),
    (lambda d: d["sender"]["fingerprint"].pop("head_dim"), r"sender.fingerprint: missing field\(s\) head_dim"),
    (lambda d: d["receiver"]["fingerprint"].update(num_kv_heads=4), "fingerprint: .*num_kv_heads"),
    (lambda d: d.update(format_version=2), "format_version"),
    (lambda d: d.update(sensitivity=[0.1]), r"sensitivity: must be 8 finite numbers, got \[0.1\]"),
    (lambda d: d.update(granularity=3), r"granularity: must be one of \[1, 2\], got 3"),
])
def test_bad_profiles_name_file_and_field(tmp_path, mutation, message):
    path = _write(tmp_path, _mutate(mutation))
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert str(path) in str(info.value)


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(_write(tmp_path, "frontier: [unclosed\n  - {"))
    with pytest.raises(ProfileError, match=r"p.yaml:1: must be a mapping, got \[1, 2\]"):
        load_profile(_write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ProfileError, match="cannot read"):
        load_profile(tmp_path / "missing.yaml")


def test_find_profile_checks_served_fingerprints(tmp_path):
    profile = _profile()
    save_profile(profile, tmp_path / profile_filename("tester", "libwriter"))
    assert find_profile(tmp_path, profile.sender, profile.receiver) == profile
    assert find_profile(tmp_path, profile.receiver, profile.sender) is None
    other = ModelRef("libwriter", _fp(rope_theta=1e6))
    with pytest.raises(ProfileError, match="receiver.fingerprint does not match"):
        find_profile(tmp_path, profile.sender, other)
