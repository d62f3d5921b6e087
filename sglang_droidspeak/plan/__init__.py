"""Layer plans, profile files and the online policy."""

from sglang_droidspeak.plan.layer_plan import LayerGroup, LayerPlan, PlanError
from sglang_droidspeak.plan.profile import FrontierPoint, ModelRef, Profile
from sglang_droidspeak.plan.profile_io import (
    ProfileError,
    find_profile,
    load_profile,
    parse_profile,
    profile_filename,
    save_profile,
)

__all__ = [
    "FrontierPoint", "LayerGroup", "LayerPlan", "ModelRef", "PlanError", "Profile", "ProfileError",
    "find_profile", "load_profile", "parse_profile", "profile_filename", "save_profile",
]
