"""``check_cluster``: can this cluster config be served, and which pairs will share KV?

Checks, beyond what loading the config validates:
- every model directory fingerprints (``identity.fingerprint_model_dir``); one that is not
  on this machine is listed in ``missing_models`` (the config is valid; ``ok`` is False,
  so ``serve`` refuses), one that exists but does not fingerprint is an error;
- every ordered pair of models: compatible (equal fingerprints) or not; an incompatible
  pair is a warning (both models are still served, they just never share KV);
- for every pair not known to be incompatible, ``<profiles_dir>/<sender>__<receiver>.yaml``:
  missing is a warning (normal prefill for the pair); unreadable or invalid, or made for
  other models (names, or fingerprints when loaded) is an error; a profile with no
  frontier point within ``slo.max_quality_drop`` is a warning;
- replicas sharing a GPU: a warning that says how SGLang sizes their pools (below).

With ``load_fingerprints=False`` no model directory is read: compatibility is unknown
(``PairStatus.compatible is None``) and profiles are checked by name only.
Imports no SGLang.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional

from sglang_droidspeak.cluster.check_machine import missing_model_dirs
from sglang_droidspeak.cluster.config import ClusterConfig
from sglang_droidspeak.identity import IncompatibleModels, ModelFingerprint, check_compatible, fingerprint_model_dir
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.plan.profile_io import ProfileError, load_profile, profile_filename

# SGLang sizes a KV pool as mem_fraction x GPU memory minus what is in use when the server
# starts (other servers included), so fractions on one
# GPU do not add up: every server needs a fraction above what the others already took.


@dataclass(frozen=True)
class PairStatus:
    """One ordered pair: ``receiver`` reuses KV that ``sender`` computed."""

    sender: str
    receiver: str
    compatible: Optional[bool]        # None: unknown (a fingerprint was not loaded)
    reason: str = ""                  # why incompatible or unknown; "" when compatible
    profile: str = "-"                # ok | missing | malformed | mismatch | - (incompatible: not looked at)
    plan: Optional[LayerPlan] = None  # cheapest frontier point within slo.max_quality_drop


@dataclass(frozen=True)
class CheckReport:
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    pairs: tuple[PairStatus, ...]
    fingerprints: Mapping[str, ModelFingerprint] = field(default_factory=dict, compare=False)
    missing_models: tuple[str, ...] = ()  # model directories not on this machine (check_machine.py)

    @property
    def ok(self) -> bool:
        """Servable here: no errors and every model directory present."""
        return not self.errors and not self.missing_models

    def pair(self, sender: str, receiver: str) -> PairStatus:
        return next(p for p in self.pairs if (p.sender, p.receiver) == (sender, receiver))

    def may_share(self, sender: str, receiver: str) -> bool:
        """False only for pairs known to be incompatible."""
        return self.pair(sender, receiver).compatible is not False


def check_cluster(config: ClusterConfig, load_fingerprints: bool = True) -> CheckReport:
    """Check a validated config against the file system; never raises for bad models or profiles."""
    errors: list[str] = []
    warnings: list[str] = []
    fingerprints = _fingerprints(config, errors) if load_fingerprints else {}
    pairs = []
    for i, sender in enumerate(config.models):
        for j, receiver in enumerate(config.models):
            if i != j:
                status = _compat(sender.name, receiver.name, fingerprints, load_fingerprints)
                if status.compatible is False and i < j:
                    warnings.append(f"{status.reason}: normal prefill between them")
                if status.compatible is not False:
                    status = _profile(config, status, fingerprints, errors, warnings)
                pairs.append(status)
    warnings += _gpu_sharing(config)
    missing = tuple(missing_model_dirs(config)) if load_fingerprints else ()
    return CheckReport(tuple(errors), tuple(warnings), tuple(pairs), fingerprints, missing)


def _fingerprints(config: ClusterConfig, errors: list[str]) -> dict[str, ModelFingerprint]:
    found = {}
    for i, model in enumerate(config.models):
        at = f"{config.source}: models[{i}].path"
        if not Path(model.path).exists():
            continue  # a missing_models line, not an error: the config itself is fine
        if not Path(model.path).is_dir():
            errors.append(f"{at}: {model.path} is not a directory")
            continue
        try:
            found[model.name] = fingerprint_model_dir(model.path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            errors.append(f"{at}: cannot fingerprint {model.path}: {exc}")
    return found


def _compat(sender: str, receiver: str, fingerprints: Mapping[str, ModelFingerprint], loaded: bool) -> PairStatus:
    if sender not in fingerprints or receiver not in fingerprints:
        why = "fingerprints not loaded" if not loaded else "a fingerprint could not be read"
        return PairStatus(sender, receiver, None, why)
    try:
        check_compatible(fingerprints[sender], fingerprints[receiver], sender, receiver)
    except IncompatibleModels as exc:
        return PairStatus(sender, receiver, False, str(exc))
    return PairStatus(sender, receiver, True)


def _profile(config: ClusterConfig, status: PairStatus, fingerprints: Mapping[str, ModelFingerprint],
             errors: list[str], warnings: list[str]) -> PairStatus:
    """``status`` with its profile column and plan filled in; appends to errors/warnings."""
    s, r = status.sender, status.receiver
    path = Path(config.profiles_dir) / profile_filename(s, r)
    if not path.is_file():
        warnings.append(f"{s} -> {r}: no profile: normal prefill for this pair ({path} not found)")
        return _with(status, "missing")
    try:
        profile = load_profile(path)
    except ProfileError as exc:
        errors.append(f"{s} -> {r}: {exc}")
        return _with(status, "malformed")
    problem = _mismatch(profile, s, r, fingerprints)
    if problem:
        errors.append(f"{s} -> {r}: {path}: {problem}")
        return _with(status, "mismatch")
    point = profile.cheapest_within(config.slo.max_quality_drop)
    if point is None:
        warnings.append(f"{s} -> {r}: no frontier point within max_quality_drop "
                        f"{config.slo.max_quality_drop:g}: normal prefill for this pair")
    return _with(status, "ok", point.plan if point else None)


def _mismatch(profile, sender: str, receiver: str, fingerprints: Mapping[str, ModelFingerprint]) -> str:
    """Why ``profile`` is not for this pair, or ""."""
    if (profile.sender.name, profile.receiver.name) != (sender, receiver):
        return f"it is for {profile.sender.name} -> {profile.receiver.name}"
    for role, name in (("sender", sender), ("receiver", receiver)):
        want = fingerprints.get(name)
        if want is not None and getattr(profile, role).fingerprint != want:
            return f"{role}.fingerprint does not match the model {name}"
    return ""


def _with(status: PairStatus, profile: str, plan: Optional[LayerPlan] = None) -> PairStatus:
    return PairStatus(status.sender, status.receiver, status.compatible, status.reason, profile, plan)


def _gpu_sharing(config: ClusterConfig) -> list[str]:
    """One warning per GPU that carries more than one replica."""
    by_gpu: dict[tuple[str, int], list[tuple[str, float]]] = {}
    for ref in config.replicas():
        for gpu in ref.replica.gpus:
            label = f"{ref.model.name}[{ref.replica_index}]"
            by_gpu.setdefault((ref.replica.host, gpu), []).append((label, ref.replica.mem_fraction))
    warnings = []
    for (host, gpu), users in by_gpu.items():
        if len(users) < 2:
            continue
        names = ", ".join(f"{label} ({f:g})" for label, f in users)
        warnings.append(f"{host} GPU {gpu}: shared by {names}; SGLang counts the others' memory "
                        "against each mem_fraction: cap the pools with --max-total-tokens")
    return warnings
