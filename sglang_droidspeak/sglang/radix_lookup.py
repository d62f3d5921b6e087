"""How the tagged tree finds foreign prefixes (mixin for ``DroidSpeakRadixCache``).

    lookup                    what it returns
    _longest_planned_remote   the longest REMOTE prefix whose sender has a plan for this
                              model (or a forced plan), preferring replicas not in backoff
    _longest_derived          the longest DERIVED prefix (namespace, length) reusable here
    _derived_hit              that DERIVED prefix as a ForeignHit with its device indices
    _peek_len                 a matched length without splitting nodes or touching times

The first two skip a sender the live quality guard tripped (quality_guard.py), unless the
request forced its plan.

The host class provides ``model``, ``runtime``, ``remote_index``, ``plan_lookup``,
``page_size``, ``root_node``, ``_derived_namespaces`` and SGLang's RadixCache API; put
this mixin before RadixCache in the bases (``super().match_prefix`` is RadixCache's).
"""

from __future__ import annotations

from typing import Optional

from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams
from sglang.srt.mem_cache.radix_cache import RadixKey

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.radix.hits import ForeignHit
from sglang_droidspeak.radix.namespace import decode_namespace
from sglang_droidspeak.radix.remote_index import RemoteMatch
from sglang_droidspeak.radix.tags import reusable_by


class ForeignLookup:
    guard_blocked: Optional[str] = None  # the last lookup passed over this sender's prefix (quality guard)

    def _longest_planned_remote(
        self, tokens, base: Optional[str], forced: Optional[LayerPlan] = None
    ) -> tuple[Optional[RemoteMatch], Optional[LayerPlan]]:
        """The longest remote prefix whose sender has a plan for this model (or ``forced``)."""
        excluded = {self.model}
        failing = self.runtime.backed_off_peers() if self.runtime is not None else ()
        while True:
            remote = self.remote_index.longest_match(tokens, base=base, exclude=excluded, exclude_peers=failing)
            if remote is None and failing:  # only a recently failed replica holds it: -> peer_backoff
                remote = self.remote_index.longest_match(tokens, base=base, exclude=excluded)
            if remote is None:
                return None, None
            if forced is None and self.runtime is not None and self.runtime.guard_blocks(remote.sender):
                excluded.add(remote.sender)  # the quality guard tripped this pair: prefill normally
                self.guard_blocked = remote.sender
                continue
            plan = forced or self.plan_lookup(remote.sender, self.model)
            if plan is not None:
                return remote, plan
            if self.runtime is not None:
                self.runtime.note_no_plan(remote.sender)
            excluded.add(remote.sender)

    def _longest_derived(
        self, tokens, base: Optional[str], plan: Optional[LayerPlan] = None
    ) -> tuple[Optional[str], int]:
        best_ns, best_len = None, 0
        for namespace in sorted(self._derived_namespaces.get(base, ())):
            tag = decode_namespace(namespace, self.model).tag
            if not reusable_by(tag, self.model) or (plan is not None and tag.plan != str(plan)):
                continue
            if plan is None and self.runtime is not None and self.runtime.guard_blocks(tag.origin_sender):
                self.guard_blocked = tag.origin_sender
                continue  # tripped by the quality guard: its derived KV is not adopted either
            matched = self._peek_len(RadixKey(tokens, namespace))
            if matched > best_len:
                best_ns, best_len = namespace, matched
        return best_ns, best_len

    def _derived_hit(self, tokens, namespace: str, native_len: int) -> ForeignHit:
        match = super().match_prefix(MatchPrefixParams(key=RadixKey(tokens, namespace)))
        tag = decode_namespace(namespace, self.model).tag
        return ForeignHit(
            tag,
            len(match.device_indices),
            native_len,
            plan=self.plan_lookup(tag.origin_sender, self.model),
            namespace=namespace,
            device_indices=match.device_indices,
            last_node=match.last_device_node,
        )

    def _peek_len(self, key: RadixKey) -> int:
        """Matched length of ``key`` without splitting nodes or touching access times."""
        node, matched = self.root_node, 0
        while len(key) > 0:
            child = node.children.get(key.child_key(self.page_size))
            if child is None or child.evicted:
                break
            step = child.key.match(key, page_size=self.page_size)
            matched += step
            if step < len(child.key):
                break
            node, key = child, key[step:]
        return matched

    def _floor_page(self, num_tokens: int) -> int:
        return num_tokens // self.page_size * self.page_size
