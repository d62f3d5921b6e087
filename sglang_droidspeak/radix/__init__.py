"""Model-tagged prefix bookkeeping, independent of SGLang (the tree itself is in ``sglang``)."""

from sglang_droidspeak.radix.hits import ForeignHit
from sglang_droidspeak.radix.namespace import (
    Namespace,
    decode_namespace,
    encode_namespace,
    is_tagged_namespace,
)
from sglang_droidspeak.radix.remote_index import RemoteMatch, RemotePrefixIndex
from sglang_droidspeak.radix.tags import KVOrigin, ModelTag, exportable_to, reusable_by

__all__ = [
    "ForeignHit",
    "KVOrigin",
    "ModelTag",
    "Namespace",
    "RemoteMatch",
    "RemotePrefixIndex",
    "decode_namespace",
    "encode_namespace",
    "exportable_to",
    "is_tagged_namespace",
    "reusable_by",
]
