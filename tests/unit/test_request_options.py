"""Per-request import options (sglang/request_options.py): exact parsing, malformed values
ignored with a warning naming them, and no SGLang import."""

from __future__ import annotations

import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest

from sglang_droidspeak.sglang.request_options import (
    LINK_GBPS_PARAM, PIPELINED_PARAM, RequestOptions, parse_request_options, request_options)


@pytest.mark.parametrize("params, expected", [
    (None, RequestOptions(None, 0.0)),
    ({}, RequestOptions(None, 0.0)),
    ({"droidspeak_plan": "0:8"}, RequestOptions(None, 0.0)),
    ({PIPELINED_PARAM: "on"}, RequestOptions(True, 0.0)),
    ({PIPELINED_PARAM: "off"}, RequestOptions(False, 0.0)),
    ({PIPELINED_PARAM: True}, RequestOptions(True, 0.0)),
    ({PIPELINED_PARAM: False}, RequestOptions(False, 0.0)),
    ({LINK_GBPS_PARAM: 25}, RequestOptions(None, 25.0)),
    ({LINK_GBPS_PARAM: 2.5, PIPELINED_PARAM: "off"}, RequestOptions(False, 2.5)),
    ({LINK_GBPS_PARAM: 1e-3}, RequestOptions(None, 0.001)),
])
def test_valid_options_exact(params, expected):
    options = parse_request_options(params)
    assert options == expected
    assert type(options.link_gbps) is float


@pytest.mark.parametrize("key, value", [
    (PIPELINED_PARAM, "yes"), (PIPELINED_PARAM, "ON"), (PIPELINED_PARAM, 1), (PIPELINED_PARAM, 0),
    (PIPELINED_PARAM, ["on"]),
    (LINK_GBPS_PARAM, 0), (LINK_GBPS_PARAM, -10.0), (LINK_GBPS_PARAM, float("nan")),
    (LINK_GBPS_PARAM, float("inf")), (LINK_GBPS_PARAM, True), (LINK_GBPS_PARAM, "25"), (LINK_GBPS_PARAM, [25]),
])
def test_malformed_values_are_ignored_with_a_warning_naming_them(key, value, caplog):
    with caplog.at_level(logging.WARNING, logger="sglang_droidspeak.sglang.request_options"):
        options = parse_request_options({key: value, "droidspeak_plan": "0:8"}, rid="r7")
    assert options == RequestOptions(None, 0.0)
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert f"rid=r7: ignoring {key}={value!r}" in message


def test_one_bad_option_keeps_the_other():
    assert parse_request_options({PIPELINED_PARAM: "maybe", LINK_GBPS_PARAM: 10}) == RequestOptions(None, 10.0)
    assert parse_request_options({PIPELINED_PARAM: "off", LINK_GBPS_PARAM: "fast"}) == RequestOptions(False, 0.0)


def test_pipelined_or_falls_back_to_the_setting():
    assert RequestOptions().pipelined_or(True) is True and RequestOptions().pipelined_or(False) is False
    assert RequestOptions(False).pipelined_or(True) is False and RequestOptions(True).pipelined_or(False) is True


def test_from_a_request():
    req = SimpleNamespace(rid="x", sampling_params=SimpleNamespace(custom_params={LINK_GBPS_PARAM: 100}))
    assert request_options(req) == RequestOptions(None, 100.0)
    assert request_options(SimpleNamespace(sampling_params=SimpleNamespace(custom_params=None))) == RequestOptions()
    assert request_options(SimpleNamespace()) == RequestOptions()
    assert parse_request_options(["droidspeak_pipelined", "off"]) == RequestOptions()  # not a mapping


def test_module_imports_no_sglang():
    code = ("import sys, sglang_droidspeak.sglang.request_options; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sglang', 'torch')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
