"""scripts/sglang-cpu-pins.txt against SGLang 0.5.17's own metadata and this environment.

The pins file is the one list that scripts/install_cpu.sh installs from. A pin that
leaves what SGLang (or another pinned package) declares, or an environment that holds
another version than the pin, fails here with a message naming both versions.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from cpu_sglang import require_cpu_sglang
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PINS_FILE = Path(__file__).resolve().parents[2] / "scripts" / "sglang-cpu-pins.txt"
ENV_ONLY_MARK = "# --- environment only"  # pins below it are set only where already installed


def read_pins(text: str) -> dict[str, Version]:
    """``name==version`` lines (comments and blanks skipped) -> {canonical name: version}."""
    pins: dict[str, Version] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise ValueError(f"line {number}: {line!r} is not an exact pin (name==version)")
        name = canonicalize_name(req.name)
        if name in pins:
            raise ValueError(f"line {number}: {req.name} is pinned twice")
        pins[name] = Version(specs[0].version)
    return pins


def pin_conflicts(pins: dict[str, Version], owner: str, requires: list[str]) -> list[str]:
    """Pins that ``owner``'s Requires-Dist lines (base install, this platform) reject."""
    problems = []
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        pinned = pins.get(canonicalize_name(req.name))
        if pinned is not None and not req.specifier.contains(pinned, prereleases=True):
            problems.append(f"{req.name}: pinned {pinned}, but {owner} requires {req.name}{req.specifier}")
    return problems


PINS = read_pins(PINS_FILE.read_text())
ENV_ONLY = set(read_pins(PINS_FILE.read_text().partition(ENV_ONLY_MARK)[2].partition("\n")[2]))


def test_the_pins_file_holds_exact_pins_only():
    assert PINS[canonicalize_name("sglang")] == Version("0.5.17")
    assert PINS["transformers"] == Version("5.12.1")
    assert ENV_ONLY == {"kernels"} and "transformers" not in ENV_ONLY
    with pytest.raises(ValueError, match="not an exact pin"):
        read_pins("transformers>=5.0\n")
    with pytest.raises(ValueError, match="pinned twice"):
        read_pins("orjson==3.13.0\nORJSON==3.12.0\n")


def test_a_drifted_pin_is_reported_with_both_versions():
    drifted = dict(PINS, transformers=Version("5.24.0"))
    problems = pin_conflicts(drifted, "sglang 0.5.17", ["transformers==5.12.1", "torch==2.11.0"])
    assert problems == ["transformers: pinned 5.24.0, but sglang 0.5.17 requires transformers==5.12.1"]


def test_every_pin_satisfies_sglangs_own_metadata():
    require_cpu_sglang("sglang", at_module_level=False)
    dist = importlib.metadata.distribution("sglang")
    assert dist.version == str(PINS["sglang"])
    assert pin_conflicts(PINS, f"sglang {dist.version}", dist.requires or []) == []


def test_every_installed_pinned_package_is_the_pinned_version_and_agrees_with_the_others():
    require_cpu_sglang("sglang", at_module_level=False)
    problems = []
    for name, pinned in PINS.items():
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            if name in ENV_ONLY:
                continue
            problems.append(f"{name}: pinned {pinned}, not installed (run bash scripts/install_cpu.sh)")
            continue
        if Version(dist.version) != pinned:
            problems.append(f"{name}: pinned {pinned}, but {dist.version} is what imports here")
        problems += pin_conflicts(PINS, f"{name} {dist.version}", dist.requires or [])
    assert problems == []
