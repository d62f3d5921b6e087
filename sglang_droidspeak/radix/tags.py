"""Who computed a piece of KV, and who may use it.

Every prefix the receiver's tree knows about has a ``ModelTag``:

    origin    model             origin_sender   plan            where the KV lives
    NATIVE    this model        ""              ""              this server's pool
    DERIVED   this model        sender A        "[0, 4)"        this server's pool
    REMOTE    sender A          sender A        ""              on A's server only

- NATIVE KV was prefilled by this model: reusable here, exportable to any peer whose
  fingerprint matches (the fingerprint check lives in ``identity``).
- DERIVED KV is A's KV for the reused layers plus this model's recomputed layers
  (DroidSpeak): reusable by this model (its receiver) only, never exported to a third
  model unless explicitly allowed (it carries A's error).
- REMOTE KV is an advertisement: no local slots, never reused directly; it becomes a
  DERIVED prefix after a transfer and a partial prefill with a ``LayerPlan``.

``model`` names a model (a served model name); fine-tunes of one foundation model share
a fingerprint, so the name is what tells a sender from a receiver.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class KVOrigin(str, enum.Enum):
    NATIVE = "native"
    DERIVED = "derived"
    REMOTE = "remote"


_FIELD_FORBIDDEN = "\x00"


@dataclass(frozen=True)
class ModelTag:
    """Provenance of a prefix's KV (see the module table for the field conventions)."""

    origin: KVOrigin
    model: str
    origin_sender: str = ""
    plan: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", KVOrigin(self.origin))
        for name in ("model", "origin_sender", "plan"):
            value = getattr(self, name)
            if not isinstance(value, str) or _FIELD_FORBIDDEN in value:
                raise ValueError(f"ModelTag.{name} must be a str without NUL, got {value!r}")
        if not self.model:
            raise ValueError("ModelTag.model must be non-empty")
        if self.origin is KVOrigin.NATIVE and (self.origin_sender or self.plan):
            raise ValueError("a NATIVE tag has no origin_sender and no plan")
        if self.origin is not KVOrigin.NATIVE and not self.origin_sender:
            raise ValueError(f"a {self.origin.value} tag needs origin_sender")
        if self.origin is KVOrigin.REMOTE and self.origin_sender != self.model:
            raise ValueError("a REMOTE tag's model is its sender (model == origin_sender)")

    @classmethod
    def native(cls, model: str) -> "ModelTag":
        return cls(KVOrigin.NATIVE, model)

    @classmethod
    def derived(cls, receiver: str, sender: str, plan: str) -> "ModelTag":
        return cls(KVOrigin.DERIVED, receiver, sender, plan)

    @classmethod
    def remote(cls, sender: str) -> "ModelTag":
        return cls(KVOrigin.REMOTE, sender, sender)

    @property
    def holds_local_kv(self) -> bool:
        return self.origin is not KVOrigin.REMOTE


def reusable_by(tag: ModelTag, model: str) -> bool:
    """May ``model`` attend over this KV as it is (no transfer, no recomputation)?"""
    return tag.holds_local_kv and tag.model == model


def exportable_to(tag: ModelTag, peer_model: str, allow_derived_export: bool = False) -> bool:
    """May this server send this KV to ``peer_model`` (a model other than the tag's)?

    NATIVE: yes. DERIVED: only with ``allow_derived_export``, and never back to the
    sender it came from (the sender has its own native KV). REMOTE: never (not ours).
    """
    if tag.origin is KVOrigin.NATIVE:
        return True
    if tag.origin is KVOrigin.DERIVED:
        return allow_derived_export and peer_model != tag.origin_sender
    return False
