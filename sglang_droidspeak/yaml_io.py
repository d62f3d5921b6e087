"""The strict YAML (and JSON) loader for every config, profile, settings and latency-model file.

``read_yaml_file(path)`` reads through ``text_files.read_text_file`` (regular files only,
``MAX_CONFIG_BYTES``, UTF-8) and parses with ``StrictLoader``, a ``yaml.SafeLoader`` that:

    input                           what happens (FileLoadError: file:line:column: problem)
    a key twice in one mapping      "duplicate key 'x' (first at line 3)"
    an alias (*name)                refused: no file expands past its own size
    nesting deeper than MAX_DEPTH   refused (PyYAML would recurse into a RecursionError)
    more than MAX_NODES values      refused (bounds the parser's memory per file)
    an unreadable value             e.g. a 5000-digit int or the date 2026-13-45
    a syntax error, several docs    "not valid YAML (<PyYAML's problem>)"
    1e-06                           the float 1e-06 (YAML 1.2, as JSON writes it; PyYAML's
                                    YAML 1.1 resolver would return the string '1e-06')

It returns the data and a line index (``key path -> line``) so that validators' errors can
name the line: ``line_of(lines, "models[0].replicas[1].port")``. ``load_json_file`` reads
result files the same way (duplicate keys refused, depth bounded).
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, NamedTuple

import yaml

from sglang_droidspeak.text_files import (  # noqa: F401 - FileLoadError is public here
    MAX_CONFIG_BYTES, MAX_RESULT_BYTES, FileLoadError, excerpt, read_text_file, shorten)

MAX_DEPTH = 64
MAX_NODES = 16384  # a 64 KiB file of one-character items has 32K; real profiles under 1K
_FLOAT_12 = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X)


class _Refused(yaml.MarkedYAMLError):
    """A well-formed YAML construct this loader does not accept."""

    def __init__(self, mark: Any, problem: str, reason: str):
        super().__init__(problem=problem, problem_mark=mark)
        self.reason = reason


class StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats, no aliases, no duplicate keys, bounded depth and size."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(event.start_mark, f"alias *{event.anchor} refused (write the value out)", "alias")
        self._depth, self._nodes = self._depth + 1, self._nodes + 1
        if self._depth > MAX_DEPTH or self._nodes > MAX_NODES:
            what = f"nested deeper than {MAX_DEPTH}" if self._depth > MAX_DEPTH else f"more than {MAX_NODES} values"
            raise _Refused(self.peek_event().start_mark, f"{what}: refused", "too_large")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _Refused(key_node.start_mark, "merge key << refused (write the keys out)", "alias")
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # an unhashable key: SafeLoader's own error
            key = self.construct_object(key_node)
            if key in first_line:
                raise _Refused(key_node.start_mark, f"duplicate key {excerpt(key)} (first at line "
                                                    f"{first_line[key]})", "duplicate_key")
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # int('9' * 5000), datetime(2026, 13, 45)
            raise _Refused(node.start_mark, f"cannot read the value {excerpt(node.value)}: "
                                            f"{shorten(str(exc))}", "bad_value") from None


StrictLoader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
for _first in "-+.0123456789":  # after the int resolver (ints stay ints), before the str fallback
    StrictLoader.yaml_implicit_resolvers.setdefault(_first, []).append(("tag:yaml.org,2002:float", _FLOAT_12))


class LoadedYaml(NamedTuple):
    data: Any
    lines: Mapping[str, int]  # key path ("models[0].port", "" = the document) -> 1-based line


def load_yaml(text: str, source: str = "<string>") -> Any:
    """The data in ``text`` (see the module doc); FileLoadError naming ``source``."""
    return parse_yaml(text, source).data


def read_yaml_file(path: Any, max_bytes: int = MAX_CONFIG_BYTES) -> LoadedYaml:
    """Read and parse ``path``; FileLoadError for anything unusable."""
    return parse_yaml(read_text_file(path, max_bytes), str(path))


def parse_yaml(text: str, source: str) -> LoadedYaml:
    loader = None
    try:
        loader = StrictLoader(text)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
        return LoadedYaml(data, node_lines(node) if node is not None else {})
    except yaml.YAMLError as exc:
        raise _as_file_error(exc, source, text) from None
    finally:
        if loader is not None:
            loader.dispose()


def _as_file_error(exc: yaml.YAMLError, source: str, text: str) -> FileLoadError:
    if isinstance(exc, _Refused):
        mark = exc.problem_mark
        return FileLoadError(source, exc.problem, mark.line + 1, mark.column + 1, reason=exc.reason)
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark, context = exc.problem_mark, f"{exc.context}: " if exc.context else ""
        return FileLoadError(source, f"not valid YAML ({context}{exc.problem})", mark.line + 1, mark.column + 1,
                             reason="syntax")
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        return FileLoadError(source, f"not valid YAML (character #x{exc.character:04x} is not allowed)", line,
                             reason="syntax")
    return FileLoadError(source, f"not valid YAML ({shorten(str(exc))})", reason="syntax")


def node_lines(node: Any, path: str = "") -> dict[str, int]:
    """``key path -> 1-based line`` for every value under ``node``."""
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                child = f"{path}.{key_node.value}" if path else key_node.value
                lines.update(node_lines(value_node, child))
                lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(node_lines(item, f"{path}[{i}]"))
    return lines


_LAST_STEP = re.compile(r"(?:\.[^.\[\]]*|\[\d+\])$")


def line_of(lines: Mapping[str, int], path: str) -> int | None:
    """The line of ``path``, else of its nearest ancestor that the file has; None if none."""
    while path not in lines and path:
        shorter = _LAST_STEP.sub("", path)
        path = shorter if shorter != path else ""
    return lines.get(path)


def load_json_file(path: Any, max_bytes: int = MAX_RESULT_BYTES) -> Any:
    """A JSON file (results of this project's commands); FileLoadError for anything unusable."""
    text, name = read_text_file(path, max_bytes), str(path)
    try:
        return json.loads(text, object_pairs_hook=lambda pairs: _unique_pairs(pairs, name))
    except json.JSONDecodeError as exc:
        raise FileLoadError(name, f"not valid JSON ({exc.msg})", exc.lineno, exc.colno, reason="syntax") from None
    except RecursionError:
        raise FileLoadError(name, "not valid JSON (nested too deeply)", reason="too_large") from None


def _unique_pairs(pairs: list[tuple[str, Any]], name: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise FileLoadError(name, f"duplicate key {excerpt(key)}", reason="duplicate_key")
        data[key] = value
    return data
