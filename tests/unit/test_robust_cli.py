"""Regressions for the command lines: bad arguments exit 2 with the subcommand's usage,
runtime problems are one line and status 1, tracebacks only on request, examples in --help."""

from __future__ import annotations

import socket

import pytest

from sglang_droidspeak import demo
from sglang_droidspeak.cli import main
from sglang_droidspeak.cli_errors import run_guarded
from sglang_droidspeak.router.cli import build_parser as router_parser
from sglang_droidspeak.router.cli import main as router_main


@pytest.mark.parametrize("argv, error", [
    (["demo", "--bogus"], "droidspeak demo: error: unrecognized arguments: --bogus"),
    (["demo", "--context-len", "-5"], "droidspeak demo: error: argument --context-len: must be >= 1, got -5"),
    (["demo", "--max-quality-drop", "nan"],
     "droidspeak demo: error: argument --max-quality-drop: must be a finite number, got nan"),
    (["profile", "--sender", "a", "--receiver", "b", "--granularity", "3"],
     "droidspeak profile: error: argument --granularity: must be one of 1, 2, got 3"),
    (["family", "--seq-len", "x"], "droidspeak family: error: argument --seq-len: expected an integer, got 'x'"),
    (["family", "--num-attention-heads", "1"],
     "droidspeak family: error: the family uses GQA: num_key_value_heads < num_attention_heads"),
    (["quality-latency", "--quality", "q.json", "--bench", "b.json", "--length", "0"],
     "droidspeak quality-latency: error: argument --length: must be >= 1, got 0"),
    (["check", "a.yaml", "b.yaml", "--print-plan"], "droidspeak check: error: --print-plan takes one config file"),
])
def test_bad_arguments_exit_2_with_the_subcommands_usage(capsys, argv, error):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith(f"usage: droidspeak {argv[0]} ") and err.endswith(f"\n{error}\n")


def test_a_missing_input_file_is_one_line_and_status_1(capsys, tmp_path):
    assert main(["quality-latency", "--quality", str(tmp_path / "q.json"), "--bench", str(tmp_path / "b.json")]) == 1
    assert capsys.readouterr().err == (f"droidspeak quality-latency: error: {tmp_path / 'q.json'}: cannot read "
                                       "(No such file or directory)\n")


def test_model_not_found_is_one_line(capsys, monkeypatch):
    def not_found(name):
        raise FileNotFoundError(f"{name!r} is neither a model directory nor a micro-family model (base)")
    monkeypatch.setattr(demo, "load_model", not_found)
    assert main(["demo", "--sender", "nosuch"]) == 1
    assert capsys.readouterr().err == ("droidspeak demo: error: 'nosuch' is neither a model directory nor a "
                                       "micro-family model (base)\n")


def test_a_bug_is_one_line_with_a_hint_and_a_traceback_on_request(capsys, monkeypatch):
    def bug(config, sender, receiver):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr(demo, "load_model", lambda name: None)
    monkeypatch.setattr(demo, "load_or_build_profile", bug)
    assert main(["demo"]) == 1
    assert capsys.readouterr().err == "droidspeak demo: error: RuntimeError: boom second line (--debug shows the traceback)\n"
    with pytest.raises(RuntimeError, match="boom"):
        main(["demo", "--debug"])
    monkeypatch.setenv("DROIDSPEAK_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        main(["demo"])


@pytest.mark.parametrize("command, example", [("check", "droidspeak check examples/*.yaml"),
                                              ("demo", "droidspeak demo --num-examples 4"),
                                              ("family", "droidspeak family")])
def test_every_help_shows_an_example(capsys, command, example):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and capsys.readouterr().out.endswith(f"example:\n  {example}\n")


@pytest.mark.parametrize("argv, error", [
    (["--port", "70000"], "argument --port: must be an integer in 1..65535, got 70000"),
    (["--host", "bad host"], "argument --host: must be an IP address or a host name (letters, digits, '-' and '.'), "
                             "got 'bad host'"),
])
def test_router_bad_listen_address_exits_2(capsys, argv, error):
    with pytest.raises(SystemExit) as info:
        router_main(["--model", "a=http://127.0.0.1:1", *argv])
    assert info.value.code == 2 and capsys.readouterr().err.endswith(f"error: {error}\n")


def test_router_port_in_use_is_one_line_and_status_1(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["--model", "a=http://127.0.0.1:1", "--port", str(port)]
        assert run_guarded(lambda: router_main(argv), router_parser(), debug=False) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "address already in use" in err
    assert err.startswith("python -m sglang_droidspeak.router: error: [Errno 98] ")


def test_the_routers_help_shows_an_example(capsys):
    from sglang_droidspeak.router.cli import build_parser

    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "example:\n  python -m sglang_droidspeak.router --model tester=" in out
