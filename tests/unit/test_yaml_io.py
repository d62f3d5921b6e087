"""load_yaml: YAML 1.2 floats (PyYAML alone reads ``1e-06`` as a string), else safe_load."""

from __future__ import annotations

import json

import pytest
import yaml

from sglang_droidspeak.yaml_io import FileLoadError, load_yaml


@pytest.mark.parametrize("text, value", [
    ("1e-06", 1e-06), ("1e6", 1e6), ("-2.5e-7", -2.5e-7), ("+3E2", 300.0), (".5", 0.5), ("7.", 7.0),
    ("1.5e3", 1500.0), ("12", 12), ("-4", -4), ("0x10", 16), ("1_000", 1000), ("'1e-06'", "1e-06"),
    ("1e6x", "1e6x"), ("abc", "abc"), ("true", True), ("~", None),
])
def test_scalars(text, value):
    loaded = load_yaml(f"a: {text}")["a"]
    assert loaded == value and type(loaded) is type(value)


def test_pyyaml_alone_reads_the_exponent_as_a_string():
    assert yaml.safe_load("a: 1e-06") == {"a": "1e-06"}  # why load_yaml exists


def test_every_json_number_is_a_number():
    data = {"ms_per_layer_token": 1e-06, "big": 1e20, "neg": -2.5e-07, "n": 3, "xs": [0.1, 2e-9]}
    assert load_yaml(json.dumps(data)) == data


def test_special_floats_and_safety():
    assert load_yaml("a: .inf")["a"] == float("inf")
    with pytest.raises(FileLoadError, match="could not determine a constructor"):
        load_yaml("a: !!python/object/apply:os.system ['true']")
