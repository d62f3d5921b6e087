"""Fuzz the strict loader: any text or bytes give data or a FileLoadError, nothing else.

Properties: arbitrary text (YAML-ish alphabets and anything) parses or raises
FileLoadError; arbitrary bytes in a file likewise; every JSON document without duplicate
keys loads to the value JSON has (YAML 1.2 is a superset of JSON; characters beyond the BMP
written as surrogate-pair escapes are the one exception PyYAML has); the loader never
returns more values than the file has characters.
"""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from sglang_droidspeak.yaml_io import FileLoadError, load_json_file, load_yaml, parse_yaml, read_yaml_file

from fuzzing import FUZZ, FUZZ_SLOW

YAML_ALPHABET = st.sampled_from(list("abc:-[]{},&*!|>'\"#%@`?\n \t01.e+~") + ["<<", "!!", "---", "...", "\x00",
                                                                             "\ufeff", "\u2028", "é"])
yamlish = st.lists(YAML_ALPHABET, max_size=60).map("".join)
bmp_text = st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | bmp_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(bmp_text, inner, max_size=4),
    max_leaves=20)


def _count_values(data) -> int:
    if isinstance(data, dict):
        return 1 + sum(1 + _count_values(v) for v in data.values())
    if isinstance(data, list):
        return 1 + sum(_count_values(v) for v in data)
    return 1


@FUZZ
@given(st.one_of(yamlish, st.text(max_size=80)))
def test_any_text_parses_or_raises_file_load_error(text):
    try:
        loaded = parse_yaml(text, "fuzz.yaml")
    except FileLoadError as exc:
        assert str(exc).startswith("fuzz.yaml") and exc.reason in (
            "syntax", "alias", "duplicate_key", "too_large", "bad_value")
        return
    assert _count_values(loaded.data) <= 2 * len(text) + 1  # no expansion: aliases are refused


@FUZZ_SLOW
@given(st.binary(max_size=200))
def test_any_bytes_in_a_file_load_or_raise_file_load_error(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("fuzz") / "f.yaml"
    path.write_bytes(raw)
    for read in (read_yaml_file, load_json_file):
        try:
            read(path)
        except FileLoadError as exc:
            assert str(exc).startswith(str(path))


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=0, abs_tol=0)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@FUZZ
@given(json_values)
def test_every_json_document_loads_to_its_json_value(value):
    text = json.dumps(value)
    assert _same(load_yaml(text), json.loads(text))
