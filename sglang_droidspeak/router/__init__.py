"""Model-aware router in front of SGLang servers (``python -m sglang_droidspeak.router``).

See docs/ROUTER.md for why this is a thin aiohttp proxy and not sgl-model-gateway.
"""

from sglang_droidspeak.router.replicas import PickConfig, Replica, ReplicaSet

__all__ = ["PickConfig", "Replica", "ReplicaSet"]
