"""The sender's announcements and the receiver's view of them (part of DroidSpeakRuntime).

    call                         side      effect
    announce(ids, base)          sender    PrefixAnnounce(stored=1) to every subscriber
    withdraw(ids, base)          sender    PrefixAnnounce(stored=0): "nothing from ids on"
    _on_announce(msg, peer)      receiver  RemotePrefixIndex.advertise / withdraw_prefix,
                                           credited to the replica (peer) it came from

``DirectoryRole`` is a mixin: it uses the runtime's ``announcer``, ``tree``, ``model``,
``fingerprint``, ``settings``, ``metrics`` and ``_warn_once``. Imports no SGLang.
"""

from __future__ import annotations

from typing import Any, Optional

from sglang_droidspeak.transfer.frames import PrefixAnnounce


class DirectoryRole:
    """Announce this server's prefixes; file peers' announcements in the remote index."""

    def announce(self, token_ids, base: Optional[str]) -> None:
        """Tell peers this server now holds native KV for ``token_ids`` (non-blocking)."""
        self._publish(token_ids, base, 1)

    def withdraw(self, token_ids, base: Optional[str]) -> None:
        """Tell peers this server holds nothing that starts with ``token_ids`` any more (it
        may still hold ``token_ids[:-1]``); receivers cut their entries back to that
        (``RemotePrefixIndex.withdraw_prefix``). Non-blocking; a lost message leaves a stale
        hint, whose fetch then ends in FetchError("evicted") and a fallback."""
        self._publish(token_ids, base, 0)

    def _publish(self, token_ids, base: Optional[str], stored: int) -> None:
        if self.announcer is None or len(token_ids) == 0:
            return
        msg = PrefixAnnounce(self.model, self.fingerprint, base or "", tuple(int(t) for t in token_ids),
                             self.settings.export_bind or "", stored)
        self.announcer.publish(msg)

    def _on_announce(self, msg: PrefixAnnounce, peer: Any = None) -> None:
        if peer is None or self.tree is None:
            return
        if msg.sender_model != peer.model:
            self._warn_once(f"model:{peer.announce}", "droidspeak: peer at %s announces model %r, configured as "
                            "%r; ignoring it", peer.announce, msg.sender_model, peer.model)
            return
        if msg.fingerprint != self.fingerprint:
            self._warn_once(f"incompatible:{msg.sender_model}", "droidspeak: peer %r has a different model "
                            "fingerprint; never sharing KV with it", msg.sender_model)
            self.metrics.record_fallback("incompatible")
            return
        base = msg.base or None
        if msg.stored:
            self.tree.remote_index.advertise(msg.sender_model, msg.token_ids, peer=peer.fetch, base=base)
        else:
            self.tree.remote_index.withdraw_prefix(msg.sender_model, msg.token_ids, base=base, peer=peer.fetch)
