"""``python -m sglang_droidspeak.router``: see ``sglang_droidspeak.router.cli.main``."""

from sglang_droidspeak.router.cli import main

raise SystemExit(main())
