"""Fuzz the profile and cluster validators: one random edit of a valid file gives a valid
object (whose values keep their documented ranges) or a typed error naming the file.

An edit replaces one value anywhere in the document with an arbitrary value (NaN,
infinities, huge integers, strings, null, lists, mappings), deletes a key, or adds one.
"""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sglang_droidspeak.addresses import host_problem
from sglang_droidspeak.cluster.config import ClusterConfigError, parse_cluster_config
from sglang_droidspeak.identity import fingerprint_from_config
from sglang_droidspeak.plan import FrontierPoint, LayerPlan, ModelRef, Profile, ProfileError
from sglang_droidspeak.plan.profile_io import parse_profile

from fuzzing import FUZZ

FP = fingerprint_from_config({"num_hidden_layers": 4, "hidden_size": 64, "num_attention_heads": 4,
                              "num_key_value_heads": 2, "vocab_size": 128, "architectures": ["LlamaForCausalLM"],
                              "model_type": "llama"}, '{"model": {}}')
PROFILE = Profile(ModelRef("a", FP), ModelRef("b", FP), 4, "lcc", "agreement", 0.9, 0.5,
                  (FrontierPoint(LayerPlan.full_reuse(4), 0.5, 0.4), FrontierPoint(LayerPlan.contiguous(4, 0, 2), 0.8,
                                                                                   0.9 - 0.8)),
                  sensitivity=(0.1, 0.2, 0.0, 0.05), created="2026-12-06T00:00:00+00:00", tool_version="0.1.0").to_dict()
CLUSTER = {"name": "c", "router": {"host": "127.0.0.1", "port": 8000}, "profiles_dir": "profiles",
           "slo": {"ttft_ms": 500, "max_quality_drop": 0.05, "accuracy_target": None},
           "transfer": {"data_plane": "zmq", "bind_host": "127.0.0.1", "base_port": 5600,
                        "secret_env": "DROIDSPEAK_SECRET", "fetch_timeout_s": 2.0},
           "models": [{"name": n, "path": f"/m/{n}", "server_args": ["--x"],
                       "replicas": [{"host": "127.0.0.1", "port": 30001 + i, "gpus": [i], "mem_fraction": 0.5}]}
                      for i, n in enumerate(("a", "b"))]}

weird = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70), st.floats(), st.text(max_size=12),
    st.lists(st.integers(-3, 70000), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


def _paths(node, prefix=()):
    """Every (container path, key) in ``node``."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield prefix, key
        yield from _paths(value, (*prefix, key))


@st.composite
def edited(draw, document):
    data = copy.deepcopy(document)
    where, key = draw(st.sampled_from(list(_paths(data))))
    parent = data
    for step in where:
        parent = parent[step]
    action = draw(st.sampled_from(("replace", "delete", "add")))
    if action == "replace" or isinstance(parent, list):
        parent[key] = draw(weird)
    elif action == "delete":
        del parent[key]
    else:
        parent[draw(st.text(min_size=1, max_size=10))] = draw(weird)
    return data


def _finite_in(x, low, high):
    return math.isfinite(x) and low <= x <= high


def _parsed_or_none(parse, data, error):
    """``parse(data, "f.yaml")``, or None when it raised ``error`` naming the file."""
    try:
        return parse(data, "f.yaml")
    except error as exc:
        assert str(exc).startswith("f.yaml")
        return None


def _profile_holds(profile):
    assert _finite_in(profile.receiver_quality, 0, 1) and _finite_in(profile.full_reuse_quality, 0, 1)
    for point in profile.frontier:
        assert _finite_in(point.quality, 0, 1) and _finite_in(point.quality_drop, -1, 1)
        assert abs(point.quality_drop - (profile.receiver_quality - point.quality)) <= 1e-6
    assert all(math.isfinite(x) for x in profile.sensitivity or ())


def _cluster_holds(config):
    assert 1 <= config.router.port <= 65535 and not host_problem(config.router.host)
    for ref in config.replicas():
        assert 1 <= ref.replica.port <= 65535 and not host_problem(ref.replica.host)
        assert 0 < ref.replica.mem_fraction < 1 and all(type(g) is int and g >= 0 for g in ref.replica.gpus)
    assert math.isfinite(config.slo.ttft_ms) and config.slo.ttft_ms > 0
    assert _finite_in(config.slo.max_quality_drop, 0, math.inf)


@pytest.mark.parametrize("document, parse, error, holds", [
    (PROFILE, parse_profile, ProfileError, _profile_holds),
    (CLUSTER, parse_cluster_config, ClusterConfigError, _cluster_holds)], ids=["profile", "cluster"])
def test_random_edits_give_a_valid_object_or_a_typed_error(document, parse, error, holds):
    @FUZZ
    @given(edited(document))
    def check(data):
        parsed = _parsed_or_none(parse, data, error)
        if parsed is not None:
            holds(parsed)

    check()


def _numeric_leaves(document):
    return [(where, key) for where, key in _paths(document)
            if isinstance(_at(document, where)[key], (int, float)) and not isinstance(_at(document, where)[key], bool)]


def _at(document, where):
    for step in where:
        document = document[step]
    return document


def _with(document, where, key, value):
    data = copy.deepcopy(document)
    _at(data, where)[key] = value
    return data


@pytest.mark.parametrize("document, parse, error", [(PROFILE, parse_profile, ProfileError),
                                                     (CLUSTER, parse_cluster_config, ClusterConfigError)],
                         ids=["profile", "cluster"])
def test_no_numeric_field_takes_nan_or_an_infinity(document, parse, error):
    leaves = _numeric_leaves(document)
    assert len(leaves) >= 10  # every number of the document (a profile: fingerprints and frontier too)
    for where, key in leaves:
        for special in (math.nan, math.inf, -math.inf):
            with pytest.raises(error):
                parse(_with(document, where, key, special), "f.yaml")
