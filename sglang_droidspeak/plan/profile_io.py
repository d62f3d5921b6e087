"""Load, validate and save profile YAML files (format: see ``plan.profile``).

Every rule, next to the field it guards: unknown keys are errors (with the closest known
key); qualities are finite numbers in [0, 1]; ``quality_drop`` is in [-1, 1] and equals
``receiver_quality - quality`` (a plan may beat the receiver's own prefill, never by a
made-up margin); ``sensitivity`` holds ``num_layers`` finite numbers; the frontier's groups
are valid LayerPlans on the granularity, sorted by recomputed layers; the optional
``systems`` section follows ``plan.profile_systems``' rules. The optional ``validation``
section holds all of VALIDATION_KEYS (``examples`` >= 1, ``seed`` >= 0, ``offset`` >= 1,
qualities in [0, 1]); with it every point carries ``selection_quality``, without it none does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from sglang_droidspeak.identity import IncompatibleModels, ModelFingerprint, check_compatible
from sglang_droidspeak.plan.layer_plan import LayerPlan, PlanError
from sglang_droidspeak.plan.profile import FORMAT_VERSION, FrontierPoint, ModelRef, Profile, Validation
from sglang_droidspeak.plan.profile_systems import OPTIONAL_POINT_KEYS, measured_quality, parse_systems
from sglang_droidspeak.validation import FieldError, Section, is_number
from sglang_droidspeak.yaml_io import FileLoadError, read_yaml_file


class ProfileError(FieldError):
    """A profile file that cannot be used; the message names the file, the line and the field."""


class _Section(Section):
    error = ProfileError


PROFILE_KEYS = ("format_version", "sender", "receiver", "num_layers", "dataset", "metric", "granularity", "created",
                "tool_version", "receiver_quality", "full_reuse_quality", "validation", "sensitivity", "frontier",
                "systems")
OPTIONAL_KEYS = ("granularity", "validation", "sensitivity", "systems")
POINT_KEYS = ("groups", "num_recomputed_layers", "quality", "quality_drop", "selection_quality")
VALIDATION_KEYS = ("examples", "seed", "offset", "selection_receiver_quality", "selection_full_reuse_quality")


def _text(s: Section, key: str) -> str:
    """A string, possibly empty (``tool_version``, ``created``)."""
    value = s.get(key)
    if not isinstance(value, str):
        s.fail(key, "must be a string", value)
    return value


def _model_ref(top: Section, role: str) -> ModelRef:
    block = top.child(role, ("name", "fingerprint"), required=("name", "fingerprint"))
    try:
        fingerprint = ModelFingerprint.from_dict(block.get("fingerprint"), where=f"{role}.fingerprint")
    except ValueError as e:
        raise ProfileError.at(top.where, f"{role}.fingerprint", str(e), top.lines, show_path=False) from None
    return ModelRef(block.string("name"), fingerprint)


def _plan(point: Section, num_layers: int, granularity: int) -> LayerPlan:
    groups = point.items("groups", non_empty=False)
    if not all(isinstance(g, list) and len(g) == 2 for g in groups):
        point.fail("groups", "each group must be a [start, end] pair", groups)
    try:
        plan = LayerPlan(num_layers, tuple(tuple(g) for g in groups))
    except PlanError as e:
        point.fail("groups", str(e))
    bounds = [b for g in plan.groups for b in (g.start, g.end) if b != num_layers]
    if any(b % granularity for b in bounds):
        point.fail("groups", f"bounds {plan.to_list()} not multiples of granularity {granularity}")
    if point.integer("num_recomputed_layers", 0) != plan.num_recomputed_layers:
        point.fail("num_recomputed_layers", f"groups recompute {plan.num_recomputed_layers}",
                   point.get("num_recomputed_layers"))
    return plan


def _frontier(top: Section, num_layers: int, granularity: int, receiver_quality: float,
              validated: bool) -> tuple[FrontierPoint, ...]:
    points = []
    required = tuple(k for k in POINT_KEYS if k not in OPTIONAL_POINT_KEYS)
    for i in range(len(top.items("frontier"))):
        point = top.item("frontier", i, POINT_KEYS, required=required)
        plan = _plan(point, num_layers, granularity)
        points.append(FrontierPoint(plan, *measured_quality(point, receiver_quality, validated)))
    counts = [p.num_recomputed_layers for p in points]
    if counts != sorted(counts):
        top.fail("frontier", f"must be sorted by num_recomputed_layers, got {counts}")
    return tuple(points)


def _sensitivity(top: Section, num_layers: int) -> tuple[float, ...] | None:
    values = top.get("sensitivity", None)
    if values is None:
        return None
    if not isinstance(values, list) or len(values) != num_layers or not all(is_number(x) for x in values):
        top.fail("sensitivity", f"must be {num_layers} finite numbers", values)
    return tuple(float(x) for x in values)


def _validation(top: Section) -> Validation | None:
    if top.get("validation", None) is None:
        return None
    block = top.child("validation", VALIDATION_KEYS, required=VALIDATION_KEYS)
    return Validation(examples=block.integer("examples", 1), seed=block.integer("seed", 0),
                      offset=block.integer("offset", 1),
                      selection_receiver_quality=block.number("selection_receiver_quality", 0.0, 1.0),
                      selection_full_reuse_quality=block.number("selection_full_reuse_quality", 0.0, 1.0))


def parse_profile(data: Any, where: str = "<profile>", lines: Optional[Mapping[str, int]] = None) -> Profile:
    """Validate a profile's parsed YAML; raise ProfileError naming ``where``, the line (with
    ``lines``, the loader's index) and the field."""
    required = tuple(k for k in PROFILE_KEYS if k not in OPTIONAL_KEYS)
    top = _Section(data, where, "", PROFILE_KEYS, required, lines)
    version = top.integer("format_version", 0)
    if version != FORMAT_VERSION:
        top.fail("format_version", f"is {version}, this tool reads {FORMAT_VERSION}")
    sender, receiver = _model_ref(top, "sender"), _model_ref(top, "receiver")
    try:
        check_compatible(sender.fingerprint, receiver.fingerprint, sender.name, receiver.name)
    except IncompatibleModels as e:
        top.fail("receiver", f"fingerprint: {e}")
    num_layers = top.integer("num_layers", 1)
    if num_layers != receiver.fingerprint.num_layers:
        top.fail("num_layers", f"is {num_layers}, fingerprints say {receiver.fingerprint.num_layers}")
    granularity = top.choice("granularity", 1, (1, 2))
    receiver_quality = top.number("receiver_quality", 0.0, 1.0)
    validation = _validation(top)
    validated = validation is not None
    return Profile(
        sender=sender, receiver=receiver, num_layers=num_layers,
        dataset=top.string("dataset"), metric=top.string("metric"), receiver_quality=receiver_quality,
        full_reuse_quality=top.number("full_reuse_quality", 0.0, 1.0),
        frontier=_frontier(top, num_layers, granularity, receiver_quality, validated), granularity=granularity,
        sensitivity=_sensitivity(top, num_layers), created=_text(top, "created"),
        tool_version=_text(top, "tool_version"), systems=parse_systems(top, num_layers, receiver_quality, validated),
        validation=validation,
    )


def load_profile(path: str | Path) -> Profile:
    """Read (yaml_io's strict loader) and validate the profile at ``path``."""
    try:
        loaded = read_yaml_file(path)
    except FileLoadError as e:
        raise ProfileError(str(e), str(path), "", e.problem, e.line) from None
    return parse_profile(loaded.data, str(path), loaded.lines)


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
