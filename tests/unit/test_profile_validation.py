"""A validated profile's YAML (profiler ``--validate-examples``): the ``validation`` section and
each point's ``selection_quality`` round-trip, bad ones name the field, and the committed
profiles (none validated) load as before."""

from pathlib import Path

import pytest
import yaml

from sglang_droidspeak.plan import FrontierPoint, LayerPlan, ProfileError, load_profile, save_profile
from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.plan.profile import Validation
from test_profile import _mutate, _profile, _write

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
VALIDATION = Validation(examples=64, seed=0, offset=32, selection_receiver_quality=0.625,
                        selection_full_reuse_quality=0.5)


def _validated():
    frontier = (FrontierPoint(LayerPlan.full_reuse(8), 0.40, 0.21, 0.5),
                FrontierPoint(LayerPlan.contiguous(8, 0, 2), 0.55, 0.61 - 0.55, 0.625))
    systems = (FrontierPoint(BlendPlan(8, 0.25, 1), 0.58, 0.61 - 0.58, 0.75),)
    return _profile(frontier=frontier, systems=systems, validation=VALIDATION)


def test_validated_profile_round_trips(tmp_path):
    profile = _validated()
    loaded = load_profile(save_profile(profile, tmp_path / "v.yaml"))
    assert loaded == profile
    data = profile.to_dict()
    assert data["validation"] == {"examples": 64, "seed": 0, "offset": 32, "selection_receiver_quality": 0.625,
                                  "selection_full_reuse_quality": 0.5}
    assert [p["selection_quality"] for p in data["frontier"]] == [0.5, 0.625]
    assert data["systems"]["cacheblend"][0]["selection_quality"] == 0.75
    assert list(data).index("validation") == list(data).index("full_reuse_quality") + 1


def test_unvalidated_profile_writes_neither_field():
    data = _profile().to_dict()
    assert "validation" not in data and not any("selection_quality" in p for p in data["frontier"])


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.yaml")), ids=lambda p: p.name)
def test_stored_profiles_are_unvalidated(path):
    profile = load_profile(path)
    assert profile.validation is None
    assert all(p.selection_quality is None for p in profile.points())


def _validated_data(fn):
    data = _validated().to_dict()
    fn(data)
    return data


@pytest.mark.parametrize("data, message", [
    (_validated_data(lambda d: d["validation"].update(examples=0)), r"validation.examples: must be an integer in 1.."),
    (_validated_data(lambda d: d["validation"].pop("seed")), r"validation.seed: required field is missing"),
    (_validated_data(lambda d: d["validation"].update(offset=-1)), r"validation.offset: must be an integer in 1.."),
    (_validated_data(lambda d: d["validation"].update(exmples=3)),
     r"validation: unknown field 'exmples' \(did you mean 'examples'\?\)"),
    (_validated_data(lambda d: d["validation"].update(selection_receiver_quality=1.5)),
     r"validation.selection_receiver_quality: must be a number in \[0, 1\], got 1.5"),
    (_validated_data(lambda d: d["frontier"][1].pop("selection_quality")),
     r"frontier\[1\].selection_quality: required: the profile has a validation section"),
    (_validated_data(lambda d: d["frontier"][0].update(selection_quality=2)),
     r"frontier\[0\].selection_quality: must be a number in \[0, 1\], got 2"),
    (_validated_data(lambda d: d["systems"]["cacheblend"][0].pop("selection_quality")),
     r"systems.cacheblend\[0\].selection_quality: required"),
    (_mutate(lambda d: d["frontier"][1].update(selection_quality=0.5)),
     r"frontier\[1\].selection_quality: only a profile with a validation section has it"),
    (_mutate(lambda d: d["frontier"][1].update(selection_qualty=0.5)),
     r"frontier\[1\]: unknown field 'selection_qualty' \(did you mean 'selection_quality'\?\)"),
])
def test_bad_validation_fields_are_named(tmp_path, data, message):
    with pytest.raises(ProfileError, match=message):
        load_profile(_write(tmp_path, yaml.safe_dump(data, sort_keys=False)))
