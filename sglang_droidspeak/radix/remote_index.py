"""What the peers hold: an index of REMOTE prefixes, apart from the device radix tree.

A remote prefix has no local KV slots, so it is kept out of SGLang's tree entirely:
the tree's evictable/protected counters, its eviction heap and its lock counts never
see it, and SGLang's idle leak check (available + evictable + protected == total)
holds by construction. This index only answers "which sender holds the longest prefix
of these tokens", per (sender, peer, base extra_key), and forgets sequences on withdrawal.
``peer`` is where the sender's KV is fetched from: several replicas of one sender model
are separate holders, each withdrawing only what it advertised.

Eviction on a sender removes a leaf of its radix tree, i.e. a suffix of what it once
announced. The sender then names the kept prefix plus the evicted leaf's first token,
and ``withdraw_prefix`` cuts every advertised sequence that starts with those tokens
back to the kept prefix (sequences that diverge earlier are untouched):

    advertised by "a":   1 2 3 4 5 6  (twice)      sender's tree:  1 2 3 -+- 4 5 6
                         1 2 3 7 8                                         +- 7 8
                         1 2 9                                   1 2 -+- 9
    "a" evicts the leaf 4 5 6 (it keeps 1 2 3 and everything else):
    withdraw_prefix("a", [1, 2, 3, 4])  ->  2 sequences cut
    advertised by "a":   1 2 3        (twice)
                         1 2 3 7 8
                         1 2 9
    longest_match([1 2 3 4 5 6]) = 3,  longest_match([1 2 3 7 8 0]) = 5

Rule: after ``withdraw_prefix(s, t)`` no advertised sequence of ``s`` starts with ``t``,
so ``longest_match`` of any query that starts with ``t`` is at most ``len(t) - 1``: never
more than a sender holds, provided it withdraws every evicted leaf this way. On a paged
sender (page > 1 token) the cut may also shorten a still-held sibling that shares only
part of the evicted leaf's first page; the sender's next insert re-announces it.

Entries are hints: a sender may have evicted them already. The transfer that follows a
hit must treat a miss on the sender as an ordinary fallback to full prefill.
"""

from __future__ import annotations

import threading
from typing import Iterable, NamedTuple, Optional, Sequence


class RemoteMatch(NamedTuple):
    sender: str
    peer: str  # where to fetch from ("" when unknown)
    prefix_len: int


class _Node:
    __slots__ = ("edge", "children", "num_holders", "num_ending")

    def __init__(self, edge: tuple[int, ...], num_holders: int = 0, num_ending: int = 0):
        self.edge = edge  # tokens on the edge from the parent into this node
        self.children: dict[int, _Node] = {}
        self.num_holders = num_holders  # advertised sequences through this node
        self.num_ending = num_ending  # advertised sequences ending exactly here


def _common_len(edge: Sequence[int], tokens: Sequence[int], start: int) -> int:
    limit = min(len(edge), len(tokens) - start)
    n = 0
    while n < limit and edge[n] == tokens[start + n]:
        n += 1
    return n


class RemotePrefixIndex:
    """Token-sequence prefixes advertised by senders; thread-safe; no device state."""

    def __init__(self) -> None:
        self._roots: dict[tuple[str, str, Optional[str]], _Node] = {}  # (sender, peer, base)
        self._lock = threading.Lock()

    def advertise(
        self, sender: str, token_ids: Iterable[int], peer: str = "", base: Optional[str] = None
    ) -> None:
        """Record that ``sender`` at ``peer`` holds KV for ``token_ids`` (under extra_key ``base``)."""
        tokens = tuple(token_ids)
        if not tokens:
            return
        with self._lock:
            node = self._roots.setdefault((sender, peer, base), _Node(()))
            node.num_holders += 1
            pos = 0
            while pos < len(tokens):
                child = node.children.get(tokens[pos])
                if child is None:
                    child = _Node(tokens[pos:])
                    node.children[tokens[pos]] = child
                common = _common_len(child.edge, tokens, pos)
                if common < len(child.edge):
                    child = self._split(node, child, common)
                child.num_holders += 1
                node, pos = child, pos + common
            node.num_ending += 1

    def withdraw(self, sender: str, token_ids: Iterable[int], base: Optional[str] = None, peer: str = "") -> bool:
        """Forget one advertisement of exactly ``token_ids``; False if there was none."""
        tokens = tuple(token_ids)
        key = (sender, peer, base)
        with self._lock:
            root = self._roots.get(key)
            path = self._exact_path(root, tokens) if root is not None and tokens else None
            if path is None or path[-1].num_ending == 0:
                return False
            path[-1].num_ending -= 1
            for parent, child in zip(path, path[1:]):
                child.num_holders -= 1
                if child.num_holders == 0:
                    del parent.children[child.edge[0]]
                    break
            root.num_holders -= 1
            if root.num_holders == 0:
                del self._roots[key]
            return True

    def withdraw_prefix(self, sender: str, token_ids: Iterable[int], base: Optional[str] = None,
                        peer: str = "") -> int:
        """``sender`` (at ``peer``) holds nothing that starts with ``token_ids`` any more: cut
        every advertised sequence of (``sender``, ``peer``, ``base``) that starts with ``token_ids`` back
        to ``token_ids[:-1]`` (dropped when that is empty). Returns how many were cut;
        0 when none starts with ``token_ids`` (nothing changes). See the module docstring.
        """
        tokens = tuple(token_ids)
        keep = len(tokens) - 1
        key = (sender, peer, base)
        with self._lock:
            root = self._roots.get(key)
            found = self._covering_edge(root, tokens) if root is not None and tokens else None
            if found is None:
                return 0
            parent, child, depth = found  # child's edge starts at depth and holds tokens[keep]
            cut = child.num_holders
            del parent.children[child.edge[0]]
            if keep > depth:  # the cut sequences now end inside the old edge
                parent.children[child.edge[0]] = _Node(child.edge[: keep - depth], cut, cut)
            elif keep > 0:  # ... exactly at parent
                parent.num_ending += cut
            else:  # ... nowhere: they are gone (parent is the root)
                root.num_holders -= cut
                if root.num_holders == 0:
                    del self._roots[key]
            return cut

    def forget_sender(self, sender: str) -> None:
        with self._lock:
            for key in [k for k in self._roots if k[0] == sender]:
                del self._roots[key]

    def senders(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted({key[0] for key in self._roots}))

    def longest_match(
        self, token_ids: Sequence[int], base: Optional[str] = None, exclude: Iterable[str] = (),
        exclude_peers: Iterable[str] = (),
    ) -> Optional[RemoteMatch]:
        """The (sender, peer) holding the longest prefix of ``token_ids`` (ties: smallest
        sender name, then peer); senders in ``exclude`` and peers in ``exclude_peers`` skipped."""
        excluded, excluded_peers = set(exclude), set(exclude_peers)
        best: Optional[RemoteMatch] = None
        with self._lock:
            for (sender, peer, root_base), root in sorted(self._roots.items(), key=lambda kv: kv[0][:2]):
                if root_base != base or sender in excluded or peer in excluded_peers:
                    continue
                matched = self._match_len(root, token_ids)
                if matched > 0 and (best is None or matched > best.prefix_len):
                    best = RemoteMatch(sender, peer, matched)
        return best

    @staticmethod
    def _split(parent: _Node, child: _Node, at: int) -> _Node:
        mid = _Node(child.edge[:at], num_holders=child.num_holders)
        child.edge = child.edge[at:]
        mid.children[child.edge[0]] = child
        parent.children[mid.edge[0]] = mid
        return mid

    @staticmethod
    def _exact_path(root: _Node, tokens: tuple[int, ...]) -> Optional[list[_Node]]:
        path, node, pos = [root], root, 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None or _common_len(child.edge, tokens, pos) != len(child.edge):
                return None
            path.append(child)
            node, pos = child, pos + len(child.edge)
        return path

    @staticmethod
    def _covering_edge(root: _Node, tokens: tuple[int, ...]) -> Optional[tuple[_Node, _Node, int]]:
        """(parent, child, depth of child's edge) for the edge holding ``tokens[-1]``, if
        some advertised sequence starts with ``tokens``; else None."""
        node, pos = root, 0
        while True:
            child = node.children.get(tokens[pos])
            if child is None:
                return None
            common = _common_len(child.edge, tokens, pos)
            if pos + len(child.edge) >= len(tokens):
                return (node, child, pos) if common == len(tokens) - pos else None
            if common < len(child.edge):
                return None
            node, pos = child, pos + len(child.edge)

    @staticmethod
    def _match_len(root: _Node, tokens: Sequence[int]) -> int:
        node, pos = root, 0
        while pos < len(tokens):
            child = node.children.get(tokens[pos])
            if child is None:
                break
            common = _common_len(child.edge, tokens, pos)
            pos += common
            if common < len(child.edge):
                break
            node = child
        return pos
