"""Plugin settings: a YAML file named by ``$DROIDSPEAK_CONFIG``, defaults when unset.

    model: coder-b                 # this server's model name (default: served model name)
    allow_derived_export: false    # may derived KV be sent to a third model?
    min_foreign_tokens: 16         # report a foreign hit only if it adds this many tokens
    plans:                         # inline LayerPlans until profiles are wired in
      - {sender: coder-a, receiver: coder-b, num_layers: 32, groups: [[0, 8]]}

Imports no SGLang: the scheduler process reads it while building the tree cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml

from sglang_droidspeak.plan.layer_plan import LayerPlan, PlanError

CONFIG_ENV = "DROIDSPEAK_CONFIG"
PlanLookup = Callable[[str, str], Optional[LayerPlan]]


class SettingsError(ValueError):
    """A config file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class PairPlan:
    sender: str
    receiver: str
    plan: LayerPlan


@dataclass(frozen=True)
class DroidSpeakSettings:
    model: Optional[str] = None
    allow_derived_export: bool = False
    min_foreign_tokens: int = 1
    plans: tuple[PairPlan, ...] = ()

    def plan_lookup(self) -> PlanLookup:
        """``(sender, receiver) -> LayerPlan | None`` over the inline plans."""
        table = {(p.sender, p.receiver): p.plan for p in self.plans}
        return lambda sender, receiver: table.get((sender, receiver))


_KEYS = {"model", "allow_derived_export", "min_foreign_tokens", "plans"}
_PLAN_KEYS = {"sender", "receiver", "num_layers", "groups"}


def load_settings(path: Optional[str] = None) -> DroidSpeakSettings:
    """Settings from ``path``, else from ``$DROIDSPEAK_CONFIG``, else the defaults."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return DroidSpeakSettings()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SettingsError(f"{path}: cannot read: {exc}") from exc
    return parse_settings(data, where=str(path))


def parse_settings(data: Any, where: str = "<settings>") -> DroidSpeakSettings:
    if not isinstance(data, Mapping):
        raise SettingsError(f"{where}: expected a mapping, got {type(data).__name__}")
    unknown = set(data) - _KEYS
    if unknown:
        raise SettingsError(f"{where}: unknown field(s) {sorted(unknown)}")
    model = data.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise SettingsError(f"{where}: 'model' must be a non-empty string, got {model!r}")
    allow = data.get("allow_derived_export", False)
    if not isinstance(allow, bool):
        raise SettingsError(f"{where}: 'allow_derived_export' must be true or false, got {allow!r}")
    min_tokens = data.get("min_foreign_tokens", 1)
    if not isinstance(min_tokens, int) or isinstance(min_tokens, bool) or min_tokens < 1:
        raise SettingsError(f"{where}: 'min_foreign_tokens' must be an int >= 1, got {min_tokens!r}")
    plans = data.get("plans") or []
    if not isinstance(plans, list):
        raise SettingsError(f"{where}: 'plans' must be a list, got {plans!r}")
    pair_plans = tuple(_pair_plan(entry, f"{where}: plans[{i}]") for i, entry in enumerate(plans))
    return DroidSpeakSettings(model, allow, min_tokens, pair_plans)


def _pair_plan(entry: Any, where: str) -> PairPlan:
    if not isinstance(entry, Mapping) or set(entry) != _PLAN_KEYS:
        raise SettingsError(f"{where}: expected exactly the fields {sorted(_PLAN_KEYS)}, got {entry!r}")
    sender, receiver, groups = entry["sender"], entry["receiver"], entry["groups"]
    if not (isinstance(sender, str) and sender and isinstance(receiver, str) and receiver):
        raise SettingsError(f"{where}: 'sender' and 'receiver' must be non-empty strings")
    if not isinstance(groups, list) or not all(isinstance(g, list) and len(g) == 2 for g in groups):
        raise SettingsError(f"{where}: 'groups' must be a list of [start, end] pairs, got {groups!r}")
    try:
        plan = LayerPlan(entry["num_layers"], tuple(tuple(g) for g in groups))
    except PlanError as exc:
        raise SettingsError(f"{where}: {exc}") from exc
    return PairPlan(sender, receiver, plan)
