"""Results of a tagged prefix match: the native part and the best foreign part."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.radix.tags import KVOrigin, ModelTag


@dataclass(frozen=True)
class ForeignHit:
    """A prefix longer than the native match, held as DERIVED KV here or REMOTE KV on a peer.

    Tokens [0, native_len) are already covered by the native match; a foreign hit is
    only reported when ``prefix_len > native_len``. Contract by origin:

    - DERIVED: ``device_indices`` are the local KV slots of tokens [0, prefix_len) and
      ``last_node`` the tree node ending there (not locked by the match). To use it,
      set the request's ``extra_key`` to ``namespace`` and match again: SGLang's normal
      path then locks and accounts for it.
    - REMOTE: no local slots (``device_indices`` is None); ``plan`` is the LayerPlan for
      (sender -> this model) and is never None; ``peer`` says where to fetch from.
    """

    tag: ModelTag
    prefix_len: int
    native_len: int
    plan: Optional[LayerPlan] = None
    peer: str = ""
    namespace: Optional[str] = None
    device_indices: Any = None
    last_node: Any = None

    def __post_init__(self) -> None:
        if self.tag.origin is KVOrigin.NATIVE:
            raise ValueError("a foreign hit cannot be NATIVE")
        if not 0 <= self.native_len < self.prefix_len:
            raise ValueError(
                f"need 0 <= native_len < prefix_len, got {self.native_len}, {self.prefix_len}"
            )
        if self.tag.origin is KVOrigin.REMOTE and (self.plan is None or self.device_indices is not None):
            raise ValueError("a REMOTE hit needs a plan and has no device indices")
        if self.tag.origin is KVOrigin.DERIVED and self.namespace is None:
            raise ValueError("a DERIVED hit names its tree namespace")

    @property
    def sender(self) -> str:
        return self.tag.origin_sender

    @property
    def extra_len(self) -> int:
        """Tokens the foreign part adds beyond the native match."""
        return self.prefix_len - self.native_len
