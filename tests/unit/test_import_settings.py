"""The receiver's import settings and per-request import mode (sglang/settings.py,
sglang/request_options.py): defaults, accepted values, and errors naming the field."""

from __future__ import annotations

import pytest

from sglang_droidspeak.sglang.request_options import parse_request_options
from sglang_droidspeak.sglang.settings import SettingsError, parse_settings


def test_defaults():
    s = parse_settings({})
    assert (s.import_mode, s.import_chunk_tokens, s.import_deadline_s) == ("async", 8192, 10.0)
    assert s.import_busy_token_layers == 2048


def test_accepted_values():
    s = parse_settings({"import_mode": "blocking", "import_chunk_tokens": 8, "import_deadline_s": 0.5,
                        "import_busy_token_layers": 64})
    assert (s.import_mode, s.import_chunk_tokens, s.import_deadline_s) == ("blocking", 8, 0.5)
    assert s.import_busy_token_layers == 64 and parse_settings({"import_mode": "eager"}).import_mode == "eager"


@pytest.mark.parametrize("field, value, message", [
    ("import_mode", "sync", "import_mode: must be one of ['async', 'eager', 'overlap', 'blocking'], got 'sync'"),
    ("import_chunk_tokens", 4, "'import_chunk_tokens' must be an int >= 8, got 4"),
    ("import_chunk_tokens", 8.5, "'import_chunk_tokens' must be an int >= 8, got 8.5"),
    ("import_busy_token_layers", True, "'import_busy_token_layers' must be an int >= 8, got True"),
    ("import_mode", "lazy", "import_mode"),
    ("import_deadline_s", 0, "import_deadline_s: must be a number > 0, got 0"),
])
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(SettingsError) as info:
        parse_settings({field: value})
    assert message in str(info.value)


@pytest.mark.parametrize("value, mode", [("blocking", "blocking"), ("async", "async"), ("eager", "eager"),
                                         ("overlap", "overlap"), ("later", None), (None, None), (True, None)])
def test_a_request_may_choose_its_import_mode(value, mode):
    params = {} if value is None else {"droidspeak_import_mode": value}
    assert parse_request_options(params, "r1").import_mode == mode
