"""The README's main job end to end: ``droidspeak demo`` on the micro family and, by
default, on the real family (SmolLM2 base -> a LoRA fine-tune from its committed adapter).

Slow: builds the micro family on a fresh machine (minutes on 2 cores), then reuses the
cache; the real demo converts nothing (install_cpu.sh did) and merges one adapter.
Runs the installed console script in a subprocess, as a user would.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_prints_the_comparison_table():
    exe = shutil.which("droidspeak") or f"{sys.executable} -m sglang_droidspeak.cli"
    out = subprocess.run(f"{exe} demo --sender tester --receiver libwriter --corpus stdlib --split lib_heldout "
                         "--context-len 1024 --num-examples 6 --timing-repeats 1", shell=True, cwd=REPO,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "A=tester -> B=libwriter" in text
    rows = {name: re.search(rf"^{re.escape(name)}\s+([\d.]+)\s+(\d+)%\s+(True|False)\s+([\d.]+)", text, re.M)
            for name in ("B full prefill", "full reuse")}
    assert all(rows.values()), text
    full, reuse = rows["B full prefill"], rows["full reuse"]
    assert full.group(2) == "100" and full.group(3) == "True" and float(full.group(4)) == 1.0
    assert reuse.group(2) == "0"
    assert re.search(r"^DroidSpeak \[\d+, \d+\)", text, re.M), text


@pytest.mark.slow
def test_the_default_demo_runs_on_the_real_family_and_shows_each_systems_answer():
    exe = shutil.which("droidspeak") or f"{sys.executable} -m sglang_droidspeak.cli"
    out = subprocess.run(f"{exe} demo --num-examples 2 --timing-repeats 1", shell=True, cwd=REPO,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "A=smollm2-base -> B=smollm2-test-lora (30 layers); profile loaded from profiles/" in text
    answers = re.findall(r"^  (B full prefill|full reuse|DroidSpeak \[\d+, \d+\)|A alone \(no B\))\s+'", text, re.M)
    assert len(answers) == 4, text
    full = re.search(r"^B full prefill\s+[\d.]+\s+100%\s+True\s+1\.000", text, re.M)
    assert full, text
