"""Radix-tree namespaces: a ``ModelTag`` folded into a radix key's ``extra_key``.

SGLang's radix tree keeps prefixes with different ``extra_key`` in disjoint subtrees
(the key of a root child is ``(extra_key, first_token)``). DroidSpeak uses that to keep
derived KV apart from native KV without touching the tree's bookkeeping:

    native  prefix   extra_key = base                       (unchanged: SGLang's own)
    derived prefix   extra_key = MARK + json([origin, model, sender, plan, base])

``base`` is the request's own extra_key (LoRA id, cache salt, or None), so isolation
between adapters and salts is preserved inside every derived namespace. A request that
adopts a derived prefix adopts its namespace as its ``extra_key``: everything it then
writes to the tree (its suffix and output) is derived too, which is right, since it was
computed over derived KV.
"""

from __future__ import annotations

import json
from typing import NamedTuple, Optional

from sglang_droidspeak.radix.tags import KVOrigin, ModelTag

NAMESPACE_MARK = "\x00droidspeak\x00"


class Namespace(NamedTuple):
    """A decoded ``extra_key``: the request's own base key and the KV's tag."""

    base: Optional[str]
    tag: ModelTag


def encode_namespace(tag: ModelTag, base: Optional[str]) -> Optional[str]:
    """The ``extra_key`` holding prefixes with this tag (native: ``base`` itself)."""
    if tag.origin is KVOrigin.NATIVE:
        return base
    if tag.origin is KVOrigin.REMOTE:
        raise ValueError("REMOTE prefixes hold no local KV and get no tree namespace")
    if base is not None and base.startswith(NAMESPACE_MARK):
        raise ValueError("base extra_key is already a droidspeak namespace")
    fields = [tag.origin.value, tag.model, tag.origin_sender, tag.plan, base]
    return NAMESPACE_MARK + json.dumps(fields, separators=(",", ":"))


def is_tagged_namespace(extra_key: Optional[str]) -> bool:
    return isinstance(extra_key, str) and extra_key.startswith(NAMESPACE_MARK)


def decode_namespace(extra_key: Optional[str], native_model: str) -> Namespace:
    """Inverse of ``encode_namespace``; an untagged key is ``native_model``'s own."""
    if not is_tagged_namespace(extra_key):
        return Namespace(extra_key, ModelTag.native(native_model))
    try:
        origin, model, sender, plan, base = json.loads(extra_key[len(NAMESPACE_MARK):])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"malformed droidspeak namespace {extra_key!r}") from exc
    return Namespace(base, ModelTag(KVOrigin(origin), model, sender, plan))
