"""Replica state and the per-model choice: longest reusable prefix, else least loaded.

The router cannot see the servers' radix trees, so it keeps its own approximation: each
replica remembers the prompts it was recently sent, as a chain of hashes over the first
``prefix_chars`` characters in chunks of ``chunk_chars`` (hash i covers chunks 0..i, so
one hit means the whole prefix up to that chunk matches). A request's reusable prefix
on a replica is the longest chain it shares with that replica (native) or with one of
the replica's DroidSpeak senders (``peers``: servers of other models whose KV the
replica can fetch, cross-model). Nothing is tokenized; characters stand in for tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PickConfig:
    """Knobs of ``ReplicaSet.pick``. ``balance_abs``: a prefix winner is dropped for the
    least-loaded replica when it has more than this many extra requests in flight."""

    prefix_chars: int = 4096
    chunk_chars: int = 256
    lru_entries: int = 4096
    balance_abs: int = 16

    def __post_init__(self) -> None:
        for name in ("prefix_chars", "chunk_chars", "lru_entries"):
            if getattr(self, name) < 1:
                raise ValueError(f"PickConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.balance_abs < 0:
            raise ValueError(f"PickConfig.balance_abs must be >= 0, got {self.balance_abs}")


def prefix_chain(text: str, config: PickConfig) -> list[tuple[int, int]]:
    """``[(hash of chunks 0..i, characters covered)]`` for the first ``prefix_chars``."""
    chain, digest = [], 0
    head = text[: config.prefix_chars]
    for start in range(0, len(head), config.chunk_chars):
        chunk = head[start : start + config.chunk_chars]
        digest = hash((digest, chunk))
        chain.append((digest, start + len(chunk)))
    return chain


class PrefixLRU:
    """The chain hashes a replica was sent most recently, at most ``capacity`` of them."""

    def __init__(self, capacity: int):
        self._capacity = capacity
        self._entries: OrderedDict[int, None] = OrderedDict()

    def match(self, chain: Sequence[tuple[int, int]]) -> int:
        """Characters of the longest prefix of ``chain`` held here (0 if none)."""
        for digest, covered in reversed(chain):
            if digest in self._entries:
                return covered
        return 0

    def record(self, chain: Iterable[tuple[int, int]]) -> None:
        for digest, _ in chain:
            self._entries[digest] = None
            self._entries.move_to_end(digest)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()


@dataclass(eq=False)
class Replica:
    """One upstream server of ``model`` at ``url`` (no trailing slash)."""

    model: str
    url: str
    lru_entries: int = 4096
    in_flight: int = 0
    picked: int = 0
    healthy: bool = True
    last_failure: float = float("-inf")
    peers: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        self.prefixes = PrefixLRU(self.lru_entries)
        self.failed = asyncio.Event()  # set while marked failed: requests waiting on it move on

    def mark_failed(self, now: float) -> None:
        """Out of the pool and out of prefix affinity (what it cached may be gone) until a
        health probe or a clean answer marks it ok again; requests still waiting for its
        first byte are retried elsewhere (relay.py)."""
        self.healthy, self.last_failure = False, now
        self.prefixes.clear()
        self.failed.set()

    def mark_ok(self) -> None:
        self.healthy = True
        if self.failed.is_set():
            self.failed = asyncio.Event()

    def reusable(self, chain: Sequence[tuple[int, int]]) -> tuple[int, bool]:
        """(characters reusable here, whether that much is native)."""
        native = self.prefixes.match(chain)
        cross = max((p.prefixes.match(chain) for p in self.peers), default=0)
        return max(native, cross), native >= cross

    def to_json(self) -> dict:
        return {"url": self.url, "healthy": self.healthy, "in_flight": self.in_flight,
                "picked": self.picked, "peers": [p.url for p in self.peers]}


class ReplicaSet:
    """The replicas of one model and the choice among them."""

    def __init__(self, model: str, urls: Sequence[str], config: PickConfig | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if not urls:
            raise ValueError(f"model {model!r} has no replica URLs")
        self.model, self.config, self._clock = model, config or PickConfig(), clock
        self.replicas = [Replica(model, u, lru_entries=self.config.lru_entries) for u in urls]

    def __len__(self) -> int:
        return len(self.replicas)

    def pick(self, prompt_token_hint: str, exclude: Iterable[Replica] = ()) -> Replica | None:
        """The replica for a request whose prompt text starts with ``prompt_token_hint``.

        Candidates: healthy and not in ``exclude``. Winner: the longest reusable prefix (native
        before cross-model at equal length) unless it is more than ``balance_abs``
        requests busier than the least loaded; otherwise fewest in flight, then fewest
        picks, then list order. Records the prompt's chain on the winner and counts the
        pick; None when no candidate is left. Does not touch ``in_flight``.
        """
        excluded = set(map(id, exclude))
        pool = [r for r in self.replicas if r.healthy and id(r) not in excluded]
        if not pool:
            return None
        chain = prefix_chain(prompt_token_hint, self.config)
        least = min(pool, key=lambda r: (r.in_flight, r.picked))
        scored = [(r.reusable(chain), r) for r in pool]
        (chars, _native), best = max(scored, key=lambda s: (s[0][0], s[0][1], -s[1].in_flight))
        winner = least
        if chars > 0 and best.in_flight - least.in_flight <= self.config.balance_abs:
            winner = best
        winner.prefixes.record(chain)
        winner.picked += 1
        return winner

    def fail(self, replica: Replica) -> None:
        replica.mark_failed(self._clock())

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.healthy]


def link_peers(sets: dict[str, ReplicaSet], peers: dict[str, list[str]]) -> None:
    """Give each receiver replica (by URL) its DroidSpeak senders (by URL).

    Raises ValueError naming the URL that is not a configured replica, or a sender of
    the receiver's own model (native reuse needs no peer).
    """
    by_url = {r.url: r for s in sets.values() for r in s.replicas}
    for receiver_url, sender_urls in peers.items():
        receiver = by_url.get(receiver_url.rstrip("/"))
        if receiver is None:
            raise ValueError(f"peers: receiver {receiver_url!r} is not a replica URL")
        for sender_url in sender_urls:
            sender = by_url.get(sender_url.rstrip("/"))
            if sender is None:
                raise ValueError(f"peers[{receiver_url!r}]: sender {sender_url!r} is not a replica URL")
            if sender.model == receiver.model:
                raise ValueError(f"peers[{receiver_url!r}]: sender {sender_url!r} serves the same model")
            receiver.peers.append(sender)
