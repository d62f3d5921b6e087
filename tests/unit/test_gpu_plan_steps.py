"""Every session step docs/GPU_PLAN.md tells a lease to run exists, and every option it passes
to a Python step is one that step's parser knows: a typo found here costs nothing, one found
on the lent GPU costs a lease (the device budget is 30 minutes a session)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from script_module import load_script

REPO = Path(__file__).resolve().parents[2]
PLAN = (REPO / "docs" / "GPU_PLAN.md").read_text()
START = re.compile(r"session\.sh start \d+ ([^`;|&]*(?:&[^`;|&]*)*)")
PARSED = {"real_family", "real_quality", "real_serving", "guard_check"}  # steps whose .py has build_parser()


def planned_steps() -> list[str]:
    """Each STEP token of every `session.sh start SECONDS STEP...` command in the plan."""
    steps = []
    for match in START.finditer(PLAN):
        for token in match.group(1).split():
            steps += [part for part in token.strip("'\"").split("&") if part]  # 'a&b': quoted for the shell
    return steps


def test_quoted_parallel_steps_are_two_steps(monkeypatch):
    monkeypatch.setitem(globals(), "PLAN", "`DS_SESSION=sg bash scripts/gpu/session.sh start 3 'gpu_tests&engine_receiver' "
                        "engine_bench`")
    assert planned_steps() == ["gpu_tests", "engine_receiver", "engine_bench"]


def test_the_plan_names_steps():
    steps = planned_steps()
    assert {"real_family", "engine_bench", "guard_check", "real_serving"} <= {s.split(":")[0] for s in steps}


@pytest.mark.parametrize("step", sorted(set(planned_steps())))
def test_each_planned_step_exists_and_its_options_parse(step):
    name, _, args = step.partition(":")
    assert (REPO / "scripts" / "gpu" / f"{name}.sh").is_file(), f"{step}: no scripts/gpu/{name}.sh"
    if name not in PARSED or not args:
        return
    parser = load_script(f"gpu/{name}.py").build_parser()
    known = parser._option_string_actions
    words = args.split("+")
    unknown = [w for w in words if w.startswith("--") and w.split("=")[0] not in known]
    assert not unknown, f"{step}: {name}.py does not know {unknown}"
