"""``python -m sglang_droidspeak.router``: see ``sglang_droidspeak.router.cli.main``.

A runtime failure (the port in use) is one line and exit status 1 (cli_errors.run_guarded).
"""

from sglang_droidspeak.cli_errors import debug_requested, run_guarded
from sglang_droidspeak.router.cli import build_parser, main

raise SystemExit(run_guarded(main, build_parser(), debug_requested()))
