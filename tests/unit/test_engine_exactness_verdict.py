"""scripts/gpu/engine_exactness.py's verdict: every plan imports the context except 0:L, which
the receiver serves as its own normal prefill; a plan that should import and did not fails."""

from __future__ import annotations

import pytest
from script_module import load_script

exactness = load_script("gpu/engine_exactness.py")


def row(plan, reused, dlogp=0.01, fallbacks=0.0):
    return {"arch": "llama3", "backend": "triton", "plan": plan, "reused": reused, "greedy_same": True,
            "max_tf_dlogp": dlogp, "fallbacks": fallbacks}


@pytest.mark.parametrize("rows, verdict", [
    ([row("reuse", True), row("0:8", False), row("blend:0.3333@1", True)], "True"),
    ([row("reuse", False), row("0:8", False)], "False"),  # reuse fell back to a prefill
    ([row("reuse", True), row("0:8", True)], "False"),  # 0:L imported: not what the runtime promises
    ([row("reuse", True, dlogp=0.2)], "False"),
    ([row("reuse", True, fallbacks=1.0)], "False"),
])
def test_verdict(rows, verdict, capsys):
    exactness.summarize({"rows": rows})
    assert f"within 0.1 nats: {verdict}," in capsys.readouterr().out
