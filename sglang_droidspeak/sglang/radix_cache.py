"""DroidSpeakRadixCache: SGLang's RadixCache with model-tagged prefixes.

- NATIVE and DERIVED prefixes are ordinary tree nodes (they hold local KV slots); a
  node's tag is decoded from its key's ``extra_key`` namespace (``radix.namespace``),
  so SGLang's locking, eviction and evictable/protected counters are untouched.
- REMOTE prefixes live in a separate ``RemotePrefixIndex``: they never become tree
  nodes, never yield device indices and never enter the counters, so SGLang's idle
  leak check (available + evictable + protected == total) holds by construction.

``match_prefix`` returns SGLang's MatchResult for the request's own namespace,
unchanged. When the call carries the request (``MatchPrefixParams.req``, as
``Req.init_next_round_input`` does), the longest foreign prefix beyond it is stored on
``req.droidspeak_foreign_hit`` (a ``ForeignHit`` or None); ``match_prefix_split``
returns both parts explicitly.

Evicted NATIVE prefixes are withdrawn from the peers' directories (``radix_withdraw``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, NamedTuple, Optional

from sglang.srt.mem_cache.base_prefix_cache import (
    InsertParams,
    InsertResult,
    MatchPrefixParams,
    MatchResult,
)
from sglang.srt.mem_cache.cache_init_params import CacheInitParams
from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey, TreeNode

from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.radix.hits import ForeignHit
from sglang_droidspeak.radix.namespace import decode_namespace, encode_namespace, is_tagged_namespace
from sglang_droidspeak.radix.remote_index import RemotePrefixIndex
from sglang_droidspeak.radix.tags import KVOrigin, ModelTag, exportable_to
from sglang_droidspeak.sglang.import_queue import JOB_ATTR
from sglang_droidspeak.sglang.radix_lookup import ForeignLookup
from sglang_droidspeak.sglang.quality_guard import GUARD_FALLBACK
from sglang_droidspeak.sglang.radix_withdraw import WithdrawOnEvict
from sglang_droidspeak.sglang.request_plan import OFF, PLAN_FORCED_ATTR, request_plan_choice
from sglang_droidspeak.sglang.response_info import record_derived, record_fallback
from sglang_droidspeak.sglang.settings import PlanLookup

FOREIGN_HIT_ATTR = "droidspeak_foreign_hit"
FELL_BACK_ATTR = "droidspeak_fell_back"  # set once an import failed: no second attempt
GUARD_NOTED_ATTR = "droidspeak_guard_noted"  # its guard-blocked prefix is counted once
logger = logging.getLogger(__name__)


class TaggedMatch(NamedTuple):
    native: MatchResult  # SGLang's match in the key's own namespace
    foreign: Optional[ForeignHit]  # longest DERIVED/REMOTE prefix beyond it, if any


class ExportMatch(NamedTuple):
    tag: ModelTag  # provenance of the exported KV
    match: MatchResult  # local slots of the exportable prefix (not locked)


class DroidSpeakRadixCache(WithdrawOnEvict, ForeignLookup, RadixCache):
    """A RadixCache whose prefixes carry a ModelTag (see the module docstring)."""

    def __init__(
        self,
        params: CacheInitParams,
        model: str,
        plan_lookup: Optional[PlanLookup] = None,
        *,
        remote_index: Optional[RemotePrefixIndex] = None,
        allow_derived_export: bool = False,
        min_foreign_tokens: int = 1,
        num_layers: Optional[int] = None,
        runtime: Any = None,
    ):
        ModelTag.native(model)  # validates the name
        self.model = model
        self.plan_lookup: PlanLookup = plan_lookup or (lambda sender, receiver: None)
        self.remote_index = remote_index if remote_index is not None else RemotePrefixIndex()
        self.allow_derived_export = allow_derived_export
        self.min_foreign_tokens = max(1, min_foreign_tokens)
        self.num_layers = num_layers  # of the served model; per-request plans need it
        self.runtime = runtime  # DroidSpeakRuntime: fetch, export, announce (None: tree only)
        self._derived_namespaces: dict[Optional[str], set[str]] = {}  # base -> namespaces
        super().__init__(params)
        if runtime is not None:
            runtime.attach(self)

    # ---- tags and namespaces ----

    def tag_of(self, node: TreeNode) -> ModelTag:
        return decode_namespace(node.key.extra_key, self.model).tag

    def derived_namespace(self, sender: str, plan: LayerPlan | str, base: Optional[str] = None) -> str:
        """The ``extra_key`` under which this model's KV derived from ``sender`` lives."""
        tag = ModelTag.derived(self.model, sender, str(plan))
        namespace = encode_namespace(tag, base)
        self._derived_namespaces.setdefault(base, set()).add(namespace)
        return namespace

    def advertise_remote(
        self, sender: str, token_ids: Iterable[int], peer: str = "", base: Optional[str] = None
    ) -> None:
        """Record that peer model ``sender`` holds KV for ``token_ids``."""
        if sender == self.model:
            raise ValueError(f"{sender!r} is this server's own model, not a remote sender")
        self.remote_index.advertise(sender, token_ids, peer=peer, base=base)

    # ---- RadixCache overrides ----

    def reset(self) -> None:
        super().reset()  # WithdrawOnEvict.reset withdraws the native subtrees first
        self._derived_namespaces.clear()

    def insert(self, params: InsertParams) -> InsertResult:
        extra_key = params.key.extra_key if params.key is not None else None
        if is_tagged_namespace(extra_key):
            base = decode_namespace(extra_key, self.model).base
            self._derived_namespaces.setdefault(base, set()).add(extra_key)
            return super().insert(params)
        result = super().insert(params)
        if self.runtime is not None and params.key is not None:
            self.runtime.announce(params.key.raw_token_ids(), extra_key)
        return result

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        """SGLang's match; with a request, also report its foreign prefix and adopt a DERIVED one.

        A match never allocates, fetches, recomputes or inserts. A DERIVED hit (KV already
        here) is adopted: ``req.extra_key`` becomes its namespace and the match is redone
        there, so SGLang's own locking and ``cache_*_req`` inserts apply to the derived
        subtree. A REMOTE hit is only reported on the request (``FOREIGN_HIT_ATTR``, and
        whether the request named its plan, ``PLAN_FORCED_ATTR``): the runtime's import
        queue parks the request and imports it, after which this match finds it DERIVED.
        """
        native = super().match_prefix(params)
        req = params.req
        if req is None:
            return native
        if self._nothing_foreign():  # the common path: no request parameter is even read
            setattr(req, FOREIGN_HIT_ATTR, None)
            return native
        choice = OFF if getattr(req, FELL_BACK_ATTR, False) else request_plan_choice(req, self.num_layers)
        self.guard_blocked = None
        hit = None if choice is OFF else self._foreign_hit(params.key, len(native.device_indices), choice)
        if hit is None and self.guard_blocked is not None:
            self._note_guard_block(req)
        setattr(req, FOREIGN_HIT_ATTR, hit)
        setattr(req, PLAN_FORCED_ATTR, choice is not None)  # a LayerPlan or BlendPlan
        if hit is None or hit.tag.origin is not KVOrigin.DERIVED:
            return native
        if self.runtime is not None and getattr(req, JOB_ATTR, None) is None:  # not its own import
            self.runtime.metrics.record_hit("derived", hit.prefix_len, 0)
            record_derived(req, hit.tag.plan)
        req.extra_key = hit.namespace
        key = RadixKey(params.key.token_ids, hit.namespace, limit=params.key.limit, is_bigram=params.key.is_bigram)
        return super().match_prefix(dataclasses.replace(params, key=key))

    def _note_guard_block(self, req: Any) -> None:
        """Once per request: its foreign prefix was passed over because the quality guard
        tripped the pair, so it prefills normally; /metrics and meta_info say so."""
        if getattr(req, GUARD_NOTED_ATTR, False):
            return  # SGLang matches a waiting request more than once
        setattr(req, GUARD_NOTED_ATTR, True)
        record_fallback(req, GUARD_FALLBACK)
        if self.runtime is not None:
            self.runtime.metrics.record_fallback(GUARD_FALLBACK)

    def cache_finished_req(self, req: Any, is_insert: bool = True, **kwargs: Any) -> None:
        """SGLang's, then the runtime's quality guard sees the finished request (it may
        shadow-check a reused one; it never raises or blocks). Also called for retracted and
        aborted requests: the guard skips those (``Req.finished()``, FINISH_ABORT)."""
        super().cache_finished_req(req, is_insert, **kwargs)
        if self.runtime is not None:
            self.runtime.on_request_finished(req)

    # ---- DroidSpeak queries ----

    def match_prefix_split(self, params: MatchPrefixParams, plan: Optional[LayerPlan] = None) -> TaggedMatch:
        native = super().match_prefix(params)
        return TaggedMatch(native, self._foreign_hit(params.key, len(native.device_indices), plan))

    def match_for_export(
        self, token_ids, peer_model: str, base: Optional[str] = None
    ) -> Optional[ExportMatch]:
        """The longest local prefix this server may send to ``peer_model`` (None: nothing).

        ``token_ids`` has the type the tree's keys have (``array("q")`` in SGLang 0.5.17).
        """
        if peer_model == self.model:
            return None
        tags = [ModelTag.native(self.model)] + [
            decode_namespace(namespace, self.model).tag
            for namespace in sorted(self._derived_namespaces.get(base, ()))
        ]
        best: Optional[ExportMatch] = None
        for tag in tags:
            if not exportable_to(tag, peer_model, self.allow_derived_export):
                continue
            key = RadixKey(token_ids, encode_namespace(tag, base))
            match = super().match_prefix(MatchPrefixParams(key=key))
            if best is None or len(match.device_indices) > len(best.match.device_indices):
                best = ExportMatch(tag, match)
        return best if best is not None and len(best.match.device_indices) else None

    # ---- internals ----

    def _foreign_hit(
        self, key: RadixKey, native_len: int, plan: Optional[LayerPlan] = None
    ) -> Optional[ForeignHit]:
        """The longest foreign prefix beyond ``native_len``; ``plan`` forces that plan."""
        if self.disable or self.is_eagle or key.is_bigram:
            return None
        if self._nothing_foreign():
            return None
        base, tag = decode_namespace(key.extra_key, self.model)
        if tag.origin is not KVOrigin.NATIVE:
            return None  # the request already lives in a derived namespace
        tokens = key.page_aligned(self.page_size).raw_token_ids()
        floor = native_len + self.min_foreign_tokens
        derived_ns, derived_len = self._longest_derived(tokens, base, plan)
        remote, remote_plan = self._longest_planned_remote(tokens, base, plan)
        remote_len = self._floor_page(remote.prefix_len) if remote is not None else 0
        if derived_ns is not None and derived_len >= max(floor, remote_len):
            return self._derived_hit(tokens, derived_ns, native_len)
        if remote_len >= floor:
            tag = ModelTag.remote(remote.sender)
            return ForeignHit(tag, remote_len, native_len, remote_plan, peer=remote.peer)
        return None

    def _nothing_foreign(self) -> bool:
        """No derived KV here and no peer advertised anything: two cheap lookups."""
        return not self._derived_namespaces and not self.remote_index.senders()
