"""A profile the profiler writes with ``cacheblend_budgets`` records those points under
``systems.cacheblend`` (served as blend:(k/L)@1), and loads back equal."""

from sglang_droidspeak.plan import load_profile
from sglang_droidspeak.plan.blend_plan import BlendPlan
from sglang_droidspeak.profiler.runner import ProfileConfig, run_profile
from test_profiler_run import SMALL, model_dirs, tokenizer  # noqa: F401 - fixtures


def test_written_profile_holds_the_cacheblend_points(tmp_path, model_dirs):  # noqa: F811
    run = run_profile(ProfileConfig(sender=str(model_dirs["a"]), receiver=str(model_dirs["b"]), num_examples=2,
                                    progress=False, plots=False, granularity=2, metric="agreement",
                                    max_new_tokens=6, out_dir=str(tmp_path / "p"), work_dir=str(tmp_path / "w"),
                                    generate=False, batch_size=4, cacheblend_budgets="3,2", **SMALL))
    profile = run.profile
    assert [p.plan for p in profile.systems] == [BlendPlan(4, 0.5, 1), BlendPlan(4, 0.75, 1)]
    rq = profile.receiver_quality
    assert [(p.quality, p.quality_drop) for p in profile.systems] == [
        (run.baselines[k], rq - run.baselines[k]) for k in ("cacheblend:2", "cacheblend:3")]
    assert load_profile(run.path) == profile
    assert [p["budget"] for p in profile.to_dict()["systems"]["cacheblend"]] == [2, 3]
