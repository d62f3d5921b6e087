"""Engine-independent tag bookkeeping: tags, namespaces, foreign hits, the remote index."""

from __future__ import annotations

import pytest

from sglang_droidspeak.plan import LayerPlan
from sglang_droidspeak.radix import (
    ForeignHit,
    KVOrigin,
    ModelTag,
    RemoteMatch,
    RemotePrefixIndex,
    decode_namespace,
    encode_namespace,
    exportable_to,
    is_tagged_namespace,
    reusable_by,
)

PLAN = LayerPlan.contiguous(8, 0, 3)


def test_tag_constructors_fill_the_conventions():
    assert ModelTag.native("b") == ModelTag(KVOrigin.NATIVE, "b", "", "")
    assert ModelTag.derived("b", "a", str(PLAN)) == ModelTag(KVOrigin.DERIVED, "b", "a", "[0, 3)")
    assert ModelTag.remote("a") == ModelTag(KVOrigin.REMOTE, "a", "a", "")
    assert ModelTag("derived", "b", "a", "x").origin is KVOrigin.DERIVED


@pytest.mark.parametrize(
    "args",
    [
        (KVOrigin.NATIVE, ""),
        (KVOrigin.NATIVE, "b", "a"),
        (KVOrigin.DERIVED, "b"),
        (KVOrigin.REMOTE, "a", "b"),
        (KVOrigin.DERIVED, "b", "a\x00", "p"),
    ],
)
def test_tag_rejects_inconsistent_fields(args):
    with pytest.raises(ValueError):
        ModelTag(*args)


def test_reuse_rules():
    assert reusable_by(ModelTag.native("b"), "b")
    assert not reusable_by(ModelTag.native("b"), "c")
    assert reusable_by(ModelTag.derived("b", "a", "p"), "b")
    assert not reusable_by(ModelTag.derived("b", "a", "p"), "c")
    assert not reusable_by(ModelTag.remote("a"), "a")


def test_export_rules_keep_derived_kv_home_by_default():
    derived = ModelTag.derived("b", "a", "p")
    assert exportable_to(ModelTag.native("b"), "c")
    assert not exportable_to(derived, "c")
    assert exportable_to(derived, "c", allow_derived_export=True)
    assert not exportable_to(derived, "a", allow_derived_export=True)
    assert not exportable_to(ModelTag.remote("a"), "c", allow_derived_export=True)


@pytest.mark.parametrize("base", [None, "", "lora-7", "salt|with\"quotes"])
def test_namespace_round_trip(base):
    tag = ModelTag.derived("b", "a", str(PLAN))
    namespace = encode_namespace(tag, base)
    assert is_tagged_namespace(namespace)
    assert decode_namespace(namespace, "b") == (base, tag)


def test_native_namespace_is_the_base_key_itself():
    assert encode_namespace(ModelTag.native("b"), "lora-7") == "lora-7"
    assert encode_namespace(ModelTag.native("b"), None) is None
    assert decode_namespace("lora-7", "b") == ("lora-7", ModelTag.native("b"))
    assert not is_tagged_namespace("lora-7")


def test_namespace_refuses_remote_and_nested_tags():
    with pytest.raises(ValueError):
        encode_namespace(ModelTag.remote("a"), None)
    inner = encode_namespace(ModelTag.derived("b", "a", "p"), None)
    with pytest.raises(ValueError):
        encode_namespace(ModelTag.derived("b", "a", "p"), inner)


def test_foreign_hit_contract():
    hit = ForeignHit(ModelTag.remote("a"), prefix_len=10, native_len=4, plan=PLAN, peer="tcp://a")
    assert (hit.sender, hit.extra_len) == ("a", 6)
    with pytest.raises(ValueError):  # remote without a plan
        ForeignHit(ModelTag.remote("a"), 10, 4)
    with pytest.raises(ValueError):  # no gain over the native match
        ForeignHit(ModelTag.remote("a"), 4, 4, PLAN)
    with pytest.raises(ValueError):  # derived without its namespace
        ForeignHit(ModelTag.derived("b", "a", "p"), 10, 4)
    with pytest.raises(ValueError):
        ForeignHit(ModelTag.native("b"), 10, 4)


def test_remote_index_longest_match_across_senders():
    index = RemotePrefixIndex()
    index.advertise("a", [1, 2, 3, 4, 5], peer="tcp://a")
    index.advertise("c", [1, 2, 3, 9, 9, 9, 9])
    index.advertise("a", [1, 2, 7])
    assert index.longest_match([1, 2, 3, 4, 5, 6]) == RemoteMatch("a", "tcp://a", 5)
    assert index.longest_match([1, 2, 3, 9, 9]) == RemoteMatch("c", "", 5)
    assert index.longest_match([1, 2, 7, 7]) == RemoteMatch("a", "", 3)  # advertised with no peer
    assert index.longest_match([1, 2, 3, 4], exclude=("a",)) == RemoteMatch("c", "", 3)
    assert index.longest_match([5, 1]) is None
    assert index.senders() == ("a", "c")


def test_remote_index_ties_go_to_the_smallest_sender_name():
    index = RemotePrefixIndex()
    index.advertise("z", [1, 2, 3])
    index.advertise("m", [1, 2, 3])
    assert index.longest_match([1, 2, 3]).sender == "m"


def test_remote_index_namespaces_by_base_key():
    index = RemotePrefixIndex()
    index.advertise("a", [1, 2, 3], base="lora-1")
    assert index.longest_match([1, 2, 3]) is None
    assert index.longest_match([1, 2, 3], base="lora-1").prefix_len == 3


def test_remote_index_withdraw_keeps_what_is_still_advertised():
    index = RemotePrefixIndex()
    index.advertise("a", [1, 2, 3, 4, 5, 6])
    index.advertise("a", [1, 2, 3])
    assert not index.withdraw("a", [1, 2])  # never advertised on its own
    assert not index.withdraw("a", [1, 2, 3, 4])  # ends inside an edge
    assert index.withdraw("a", [1, 2, 3, 4, 5, 6])
    assert index.longest_match([1, 2, 3, 4, 5, 6]).prefix_len == 3
    assert index.withdraw("a", [1, 2, 3])
    assert index.longest_match([1, 2, 3]) is None
    assert index.senders() == ()
    assert not index.withdraw("a", [1, 2, 3])


def test_remote_index_counts_repeated_advertisements():
    index = RemotePrefixIndex()
    index.advertise("a", [4, 5])
    index.advertise("a", [4, 5])
    assert index.withdraw("a", [4, 5])
    assert index.longest_match([4, 5]).prefix_len == 2
    index.forget_sender("a")
    assert index.longest_match([4, 5]) is None
