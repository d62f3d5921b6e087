"""Fuzz the command-line parsers: any argument list parses, or exits 2 with the usage and
one error line; a parsed one builds its config or raises UsageError. Never a traceback.

Arguments are drawn from each subcommand's own flags and from values that break them
(negative, NaN, huge, empty, words), so most examples reach the checks, not just argparse's
"unrecognized arguments".
"""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sglang_droidspeak.cli import build_parser
from sglang_droidspeak.cli_errors import UsageError
from sglang_droidspeak.config_cli import dataclass_from_args
from sglang_droidspeak.demo import DemoConfig
from sglang_droidspeak.family.config import FamilyConfig
from sglang_droidspeak.profiler.runner import ProfileConfig
from sglang_droidspeak.router.cli import build_parser as router_parser

from fuzzing import FUZZ

VALUES = ["-1", "0", "1", "2", "3", "nan", "inf", "-inf", "1e309", "99999999999999999999", "", "x", "lcc",
          "lib_heldout", "tester", "none", "true", "0.5", "65536", "127.0.0.1", "a b", "http://127.0.0.1:1"]
CONFIGS = {"demo": DemoConfig, "profile": ProfileConfig, "family": FamilyConfig}


def _flags(parser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings if s not in ("-h", "--help")]


def _argv(command: str):
    flags = _flags(build_parser([command]).subcommands[command]) + ["--bogus"]
    word = st.one_of(st.sampled_from(flags), st.sampled_from(VALUES), st.text(max_size=6))
    return st.lists(word, max_size=6)


def _parse(parser, argv):
    """(namespace or None, exit code or None, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return parser.parse_args(argv), None, err.getvalue()
        except SystemExit as exc:
            return None, exc.code, err.getvalue()


def _check_error_output(code, stderr, prog):
    assert code == 2, stderr
    lines = stderr.strip().split("\n")
    assert lines[0].startswith("usage: ") and lines[-1].startswith(f"{prog}: error: ")
    assert sum("error:" in line for line in lines) == 1 and "Traceback" not in stderr


@pytest.mark.parametrize("command", ["demo", "profile", "family", "quality-latency", "check"])
def test_subcommand_arguments_parse_or_exit_2_with_the_usage(command):
    parser = build_parser([command]).subcommands[command]

    @FUZZ
    @given(_argv(command))
    def check(argv):
        args, code, stderr = _parse(parser, argv)
        if args is None:
            _check_error_output(code, stderr, f"droidspeak {command}")
            return
        if command in CONFIGS:
            try:
                dataclass_from_args(CONFIGS[command], args)
            except UsageError as exc:
                assert str(exc)

    check()


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(["--host", "--port", "--model", "--peer", "--balance-abs"]),
                          st.sampled_from(VALUES)), max_size=6))
def test_router_arguments_parse_or_exit_2_with_the_usage(argv):
    parser = router_parser()
    args, code, stderr = _parse(parser, argv)
    if args is None:
        _check_error_output(code, stderr, parser.prog)
