"""The zmq plane has no control frames: E and K/V travel as LayerChunks (transfer/frames.py)."""

MESSAGES: tuple[type, ...] = ()
ERROR_CODES: tuple[str, ...] = ()
