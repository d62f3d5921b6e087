"""Withdraw evicted NATIVE prefixes from the peers' directories (mixin for the tree).

Evicting a NATIVE leaf (SGLang's ``evict`` -> ``_delete_leaf``) withdraws it from the
peers: ``runtime.withdraw(path to the leaf's first token)``, one message per evicted
subtree per ``evict`` call; ``reset`` withdraws every native subtree. DERIVED nodes are
never announced, so never withdrawn. The host class provides ``runtime`` (or None) and
SGLang's RadixCache API.
"""

from __future__ import annotations

from typing import Optional

from sglang.srt.mem_cache.base_prefix_cache import EvictParams, EvictResult
from sglang.srt.mem_cache.radix_cache import TreeNode

from sglang_droidspeak.radix.namespace import is_tagged_namespace


class WithdrawOnEvict:
    """Put before RadixCache in the bases: ``class T(WithdrawOnEvict, RadixCache)``."""

    _pending_withdrawals: Optional[dict] = None  # evicted nodes by parent, inside evict

    def reset(self) -> None:
        root = getattr(self, "root_node", None)  # None when RadixCache.__init__ calls us
        if root is not None and self.runtime is not None:
            for child in list(root.children.values()):
                if not is_tagged_namespace(child.key.extra_key):
                    self._withdraw(child)
        super().reset()

    def evict(self, params: EvictParams) -> EvictResult:
        """SGLang's evict; evicted NATIVE leaves are withdrawn once it is done, one message
        per evicted subtree (a leaf whose parent goes in the same call is covered by it)."""
        if self.runtime is None:
            return super().evict(params)
        self._pending_withdrawals = {}
        try:
            return super().evict(params)
        finally:
            pending, self._pending_withdrawals = self._pending_withdrawals, None
            for nodes in pending.values():
                for node in nodes:
                    self._withdraw(node)

    def _delete_leaf(self, node: TreeNode) -> None:
        """SGLang removes ``node`` (device KV freed): peers must stop advertising it."""
        super()._delete_leaf(node)
        if self.runtime is None or is_tagged_namespace(node.key.extra_key):
            return  # derived KV is never announced
        if self._pending_withdrawals is None:
            self._withdraw(node)
            return
        self._pending_withdrawals.pop(node, None)  # node's own evicted children: covered by node
        self._pending_withdrawals.setdefault(node.parent, []).append(node)

    def _withdraw(self, node: TreeNode) -> None:
        """Withdraw root..``node``'s first token: the sender keeps only what precedes ``node``.

        Parent keys stay intact after ``_delete_leaf``; ``key.token_ids[:len(key)]`` is a
        node's own tokens for plain and bigram keys alike (a bigram node's last raw token
        is its successor's first).
        """
        parts = [node.key.token_ids[:1]]
        ancestor = node.parent
        while ancestor is not None and ancestor is not self.root_node and len(ancestor.key):
            parts.append(ancestor.key.token_ids[: len(ancestor.key)])
            ancestor = ancestor.parent
        tokens = [int(t) for part in reversed(parts) for t in part]
        self.runtime.withdraw(tokens, node.key.extra_key)
