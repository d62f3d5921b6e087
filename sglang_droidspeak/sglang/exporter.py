"""Sender side: answer a FetchRequest from the local tree, KV pool and E pool.

Runs on the scheduler thread (``FetchServer.poll`` from the scheduler-loop hook), so
the tree is never touched concurrently and the exported slots cannot be evicted while
they are read. Only the exact requested prefix is served, from NATIVE KV (derived KV
only when ``allow_derived_export``); anything else is a FetchError and the receiver
falls back to its own prefill.

    step                       what
    checks                     fingerprint, model, layer range (FetchError: bad_request, ...)
    the plane's refusal        the request's ``plane`` must have a sender here (else
                               FetchError plane_unavailable: the receiver uses zmq); its
                               ``refusal`` runs before anything is sent
    the prefix                 the exact requested tokens, NATIVE (else evicted)
    E, then the plane          E on demand (launched; the answer parks, yielding
                               PENDING, until it has run), then the prefix matched again
                               (it may have been evicted meanwhile) and the plane's
                               ``export``: LayerChunks on zmq, a GPU copy on cuda_ipc, a
                               channel on nccl (planes/)

E comes from ``compute_e`` rather than from a store filled during prefill: a capture
hook inside the decoder layer produced wrong rows on the GPU under SGLang's default
breakable prefill CUDA graphs (2026-11-28, docs/results/gpu-integration-2026-11-28.md),
so the sender recomputes layers [0, s) for the prefix when a receiver asks for E_s.
"""

from __future__ import annotations

from array import array
from typing import Any, Callable, Iterator, Optional

from sglang_droidspeak.transfer.fetch import PENDING
from sglang_droidspeak.transfer.frames import FetchError, FetchRequest, Message
from sglang_droidspeak.transfer.planes.base import PlaneSender

EComputer = Callable[[list, tuple], Any]  # (token_ids, layers) -> {layer: [n, hidden]} or a PendingE


def _check(request: FetchRequest, model: str, fingerprint: str, num_layers: int) -> Optional[FetchError]:
    rid = request.request_id
    if request.fingerprint != fingerprint:
        return FetchError(rid, "fingerprint_mismatch", f"{model} has fingerprint {fingerprint[:16]}")
    if request.sender_model != model:
        return FetchError(rid, "bad_request", f"this server serves {model!r}, not {request.sender_model!r}")
    layers = request.reused_layers + request.e_layers
    if any(layer >= num_layers for layer in layers):
        return FetchError(rid, "bad_request", f"layer out of range [0, {num_layers})")
    return None


def _plane_refusal(request: FetchRequest, sender: Optional[PlaneSender]) -> Optional[FetchError]:
    if sender is None:
        from sglang_droidspeak.transfer.planes import registry

        code = registry.spec(request.plane).unavailable_code
        return FetchError(request.request_id, code, f"this sender is not on the {request.plane} plane")
    return sender.refusal(request)


def export_messages(request: FetchRequest, *, model: str, fingerprint: str, tree: Any,
                    compute_e: EComputer, num_layers: int, senders: dict) -> Iterator[Message]:
    """The answer to ``request``: what its plane's sender (``senders[request.plane]``)
    yields, ending in FetchDone, or a single FetchError.

    E is computed on demand by ``compute_e`` (this model's layers [0, s) over the prefix,
    from its own embeddings; no KV is written), not read from a capture pool.
    """
    sender = senders.get(request.plane)
    error = _check(request, model, fingerprint, num_layers) or _plane_refusal(request, sender)
    if error is not None:
        yield error
        return
    slots = _prefix_slots(request, tree)
    if isinstance(slots, FetchError):
        yield slots
        return
    e = compute_e(list(request.token_ids), request.e_layers) if request.e_layers else {}
    if not isinstance(e, dict):  # a PendingE: park until its forward has run
        try:
            while not e.ready():
                yield PENDING
        finally:
            e = e.take()  # also when the answer is closed while parked
        slots = _prefix_slots(request, tree)  # matched again: ticks passed; within this one nothing evicts it
        if isinstance(slots, FetchError):
            yield slots
            return
    yield from sender.export(request, slots, e)


def _prefix_slots(request: FetchRequest, tree: Any) -> Any:
    """The prefix's slots [num_tokens] (NATIVE), or FetchError evicted."""
    num_tokens = len(request.token_ids)
    match = tree.match_for_export(array("q", request.token_ids), request.receiver_model)
    if match is None or len(match.match.device_indices) < num_tokens:
        have = 0 if match is None else len(match.match.device_indices)
        return FetchError(request.request_id, "evicted", f"holds {have} of {num_tokens} prefix tokens")
    return match.match.device_indices[:num_tokens]
