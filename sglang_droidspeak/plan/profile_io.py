"""Load, validate and save profile YAML files (format: see ``plan.profile``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from sglang_droidspeak.identity import IncompatibleModels, ModelFingerprint, check_compatible
from sglang_droidspeak.plan.layer_plan import LayerPlan, PlanError
from sglang_droidspeak.plan.profile import FORMAT_VERSION, FrontierPoint, ModelRef, Profile
from sglang_droidspeak.yaml_io import load_yaml


class ProfileError(ValueError):
    """A profile file that cannot be used; the message names the file and the field."""


_TYPES = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}


def _field(data: Mapping[str, Any], name: str, kind: type, where: str, required: bool = True) -> Any:
    if name not in data:
        if required:
            raise ProfileError(f"{where}: missing field '{name}'")
        return None
    value = data[name]
    ok = isinstance(value, (int, float) if kind is float else kind) and not isinstance(value, bool)
    if not ok:
        raise ProfileError(f"{where}: field '{name}' must be {_TYPES[kind]}, got {value!r}")
    return float(value) if kind is float else value


def _model_ref(data: Mapping[str, Any], role: str, where: str) -> ModelRef:
    block = _field(data, role, dict, where)
    name = _field(block, "name", str, f"{where}: {role}")
    try:
        fingerprint = ModelFingerprint.from_dict(_field(block, "fingerprint", dict, f"{where}: {role}"))
    except ValueError as e:
        raise ProfileError(f"{where}: {role}.{e}") from e
    return ModelRef(name, fingerprint)


def _frontier(data: Mapping[str, Any], num_layers: int, granularity: int, where: str) -> tuple[FrontierPoint, ...]:
    entries = _field(data, "frontier", list, where)
    if not entries:
        raise ProfileError(f"{where}: field 'frontier' is empty")
    points = []
    for i, entry in enumerate(entries):
        at = f"{where}: frontier[{i}]"
        if not isinstance(entry, Mapping):
            raise ProfileError(f"{at}: expected a mapping, got {entry!r}")
        groups = _field(entry, "groups", list, at)
        if not all(isinstance(g, list) and len(g) == 2 for g in groups):
            raise ProfileError(f"{at}.groups: each group must be a [start, end] pair, got {groups!r}")
        try:
            plan = LayerPlan(num_layers, tuple(tuple(g) for g in groups))
        except PlanError as e:
            raise ProfileError(f"{at}.groups: {e}") from e
        bounds = [b for g in plan.groups for b in (g.start, g.end) if b != num_layers]
        if any(b % granularity for b in bounds):
            raise ProfileError(f"{at}.groups: bounds {plan.to_list()} not multiples of granularity {granularity}")
        num = _field(entry, "num_recomputed_layers", int, at)
        if num != plan.num_recomputed_layers:
            raise ProfileError(f"{at}: num_recomputed_layers={num} but groups recompute {plan.num_recomputed_layers}")
        points.append(FrontierPoint(plan, _field(entry, "quality", float, at), _field(entry, "quality_drop", float, at)))
    counts = [p.num_recomputed_layers for p in points]
    if counts != sorted(counts):
        raise ProfileError(f"{where}: frontier must be sorted by num_recomputed_layers, got {counts}")
    return tuple(points)


def parse_profile(data: Any, where: str = "<profile>") -> Profile:
    """Validate a profile's parsed YAML; raise ProfileError naming ``where`` and the field."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"{where}: expected a YAML mapping at top level, got {type(data).__name__}")
    version = _field(data, "format_version", int, where)
    if version != FORMAT_VERSION:
        raise ProfileError(f"{where}: field 'format_version' is {version}, this tool reads {FORMAT_VERSION}")
    sender, receiver = _model_ref(data, "sender", where), _model_ref(data, "receiver", where)
    try:
        check_compatible(sender.fingerprint, receiver.fingerprint, sender.name, receiver.name)
    except IncompatibleModels as e:
        raise ProfileError(f"{where}: fingerprint: {e}") from e
    num_layers = _field(data, "num_layers", int, where)
    if num_layers != receiver.fingerprint.num_layers:
        raise ProfileError(f"{where}: field 'num_layers' is {num_layers}, fingerprints say {receiver.fingerprint.num_layers}")
    granularity = _field(data, "granularity", int, where, required=False) or 1
    if granularity not in (1, 2):
        raise ProfileError(f"{where}: field 'granularity' must be 1 or 2, got {granularity}")
    sensitivity = _field(data, "sensitivity", list, where, required=False)
    if sensitivity is not None:
        if len(sensitivity) != num_layers or not all(isinstance(x, (int, float)) for x in sensitivity):
            raise ProfileError(f"{where}: field 'sensitivity' must be {num_layers} numbers")
        sensitivity = tuple(float(x) for x in sensitivity)
    return Profile(
        sender=sender, receiver=receiver, num_layers=num_layers,
        dataset=_field(data, "dataset", str, where), metric=_field(data, "metric", str, where),
        receiver_quality=_field(data, "receiver_quality", float, where),
        full_reuse_quality=_field(data, "full_reuse_quality", float, where),
        frontier=_frontier(data, num_layers, granularity, where), granularity=granularity,
        sensitivity=sensitivity, created=str(_field(data, "created", str, where)),
        tool_version=_field(data, "tool_version", str, where),
    )


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        data = load_yaml(path.read_text())
    except OSError as e:
        raise ProfileError(f"{path}: cannot read ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML ({e})") from e
    return parse_profile(data, str(path))


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write atomically; ``load_profile(save_profile(p, f)) == p``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(profile.to_dict(), sort_keys=False))
    tmp.replace(path)
    return path


def profile_filename(sender_name: str, receiver_name: str) -> str:
    return f"{sender_name}__{receiver_name}.yaml"


def find_profile(profiles_dir: str | Path, sender: ModelRef, receiver: ModelRef) -> Profile | None:
    """The profile for this exact pair (names and fingerprints), or None if there is none."""
    path = Path(profiles_dir) / profile_filename(sender.name, receiver.name)
    if not path.is_file():
        return None
    profile = load_profile(path)
    for role, want in (("sender", sender), ("receiver", receiver)):
        if getattr(profile, role).fingerprint != want.fingerprint:
            raise ProfileError(f"{path}: {role}.fingerprint does not match the served model {want.name}")
    return profile
