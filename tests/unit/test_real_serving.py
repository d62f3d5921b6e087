"""scripts/gpu/real_serving.py (+ serving_plans, serving_requests, serving_measure) on CPU: arguments, plans,
servers, the stream reader, scoring and summary math."""

from __future__ import annotations

import json
import math

import pytest
from script_module import load_script

from sglang_droidspeak.identity import ModelFingerprint
from sglang_droidspeak.plan.layer_plan import LayerPlan
from sglang_droidspeak.plan.profile import FrontierPoint, ModelRef, Profile

rs = load_script("gpu/real_serving.py")
sp = load_script("gpu/serving_plans.py")
sr = load_script("gpu/serving_requests.py")
sm = load_script("gpu/serving_measure.py")
ss = load_script("gpu/serving_summary.py")
EXACT = 1e-12


def profile(points: list[tuple[list, float]], receiver_quality: float = 0.9, num_layers: int = 30) -> Profile:
    fp = ModelFingerprint("LlamaForCausalLM", "llama", num_layers, 576, 9, 3, 64, 49152, 1e5, "null", "t")
    frontier = tuple(FrontierPoint(LayerPlan(num_layers, tuple(map(tuple, groups))), q, receiver_quality - q)
                     for groups, q in points)
    return Profile(ModelRef("smollm2-base", fp), ModelRef("smollm2-lib-full", fp), num_layers, "lcc", "agreement",
                   receiver_quality, 0.5, frontier, granularity=2)


def test_defaults_and_receiver_names():
    args = rs.build_parser().parse_args([])
    assert (args.receiver, args.num_prompts, args.context_len, args.backend, args.data_plane, args.control) == (
        "smollm2-lib-full", 64, 3072, "flashinfer", "cuda_ipc", True)
    assert sp.model_name("docs-lora") == sp.model_name("smollm2-docs-lora") == "smollm2-docs-lora"
    for bad in ("base", "smollm2-base", "lib"):
        with pytest.raises(ValueError, match="--receiver"):
            sp.model_name(bad)
    assert sp.HELDOUT == load_script("gpu/real_family.py").HELDOUT  # the profiles' own split per receiver
    assert sp.split_list("auto, reuse,0:10") == ["auto", "reuse", "0:10"]
    assert sp.split_list("0:2,6:8; reuse;") == ["0:2,6:8", "reuse"]


def test_plans_auto_best_and_fixed():
    p = profile([([], 0.5), ([[20, 22]], 0.6), ([[10, 18]], 0.84), ([[10, 20]], 0.86), ([[0, 30]], 0.9)])
    plans = sp.resolve_plans("auto,best,reuse,0:10,blend:0.3333", 30, p, 0, 0.05)
    assert [(x["label"], x["value"]) for x in plans] == [
        ("auto", "auto"), ("best", "10:20"), ("reuse", "reuse"), ("0:10", "0:10"), ("blend:0.3333", "blend:0.3333")]
    assert plans[0]["expected"] == "10:20"  # cheapest within drop 0.05: 0.86 (drop 0.04); 0:30 costs more
    assert sp.resolve_plans("best", 30, p, 8, 0.05)[0]["value"] == "10:18"  # at most 8 layers
    assert sp.resolve_plans("auto", 30, p, 0, 0.01)[0]["expected"] == "0:30"
    none = sp.resolve_plans("auto;best", 30, None, 0, 0.05)
    assert none[0]["expected"] is None and none[1]["value"] is None and "no profile" in none[1]["note"]
    assert sp.resolve_plans("best", 30, profile([([[0, 30]], 0.9)]), 0, 0.05)[0]["value"] is None
    with pytest.raises(ValueError, match="--plans"):
        sp.resolve_plans("0:40", 30, None, 0, 0.05)
    with pytest.raises(ValueError, match="not a reuse plan"):
        sp.resolve_plans("off", 30, None, 0, 0.05)
    assert sp.wire(LayerPlan(30, ((0, 2), (6, 8)))) == "0:2,6:8" and sp.wire(LayerPlan(30, ())) == "reuse"


def test_server_specs(tmp_path):
    args = rs.build_parser().parse_args(["--backend", "flashinfer-paged", "--port-base", "100", "--zmq-base", "200"])
    specs = sr.server_specs(args, "smollm2-test-lora", tmp_path / "m", tmp_path / "p")
    assert [(s["name"], s["port"], s["model"]) for s in specs] == [
        ("smollm2-base", 100, str(tmp_path / "m/smollm2-base")),
        ("smollm2-test-lora", 101, str(tmp_path / "m/smollm2-test-lora")),
        ("smollm2-base-ctl", 102, str(tmp_path / "m/smollm2-base"))]
    sender, receiver, control = (s["config"] for s in specs)
    assert sender == {"model": "smollm2-base", "export_bind": "tcp://127.0.0.1:200",
                      "announce_bind": "tcp://127.0.0.1:201", "data_plane": "cuda_ipc"}
    peer = [{"model": "smollm2-base", "fetch": "tcp://127.0.0.1:200", "announce": "tcp://127.0.0.1:201"}]
    assert receiver["peers"] == control["peers"] == peer
    assert receiver["profiles_dir"] == str(tmp_path / "p") and "profiles_dir" not in control
    assert all(s["backend"] == "flashinfer" and s["env"] == {"SGLANG_FLASHINFER_USE_PAGED": "1"} for s in specs)
    assert "--skip-tokenizer-init" in specs[0]["extra"] and "bfloat16" in specs[0]["extra"]
    from sglang_droidspeak.sglang.settings import parse_settings
    for s in specs:  # the plugin accepts every config
        parse_settings(json.loads(json.dumps(s["config"])), where=s["name"])
    no_ctl = rs.build_parser().parse_args(["--no-control", "--backend", "triton"])
    specs = sr.server_specs(no_ctl, "smollm2-lib-full", tmp_path, tmp_path)
    assert len(specs) == 2 and specs[0]["env"] == {} and specs[0]["backend"] == "triton"


def _clock(times):
    it = iter(times)
    return lambda: next(it)


def test_read_stream_cumulative_and_incremental():
    cumulative = [b'data: {"output_ids": [5], "meta_info": {"completion_tokens": 1}}', b"",
                  b'data: {"output_ids": [5, 5, 7], "meta_info": {"completion_tokens": 3, "cached_tokens": 9}}',
                  b"data: [DONE]", b'data: {"output_ids": [1]}']
    got = sr.read_stream(cumulative, _clock([2.0, 3.0]))
    assert got == {"ids": [5, 5, 7], "meta": {"completion_tokens": 3, "cached_tokens": 9}, "first_token_at": 2.0}
    incremental = [b'data: {"output_ids": [], "meta_info": {"completion_tokens": 0}}',
                   b'data: {"output_ids": [5], "meta_info": {"completion_tokens": 1}}',
                   b'data: {"output_ids": [5], "meta_info": {"completion_tokens": 2}}',
                   b'data: {"output_ids": [7, 8], "meta_info": {"completion_tokens": 4}}', b"data: [DONE]"]
    got = sr.read_stream(incremental, _clock([1.5, 9, 9]))
    assert got["ids"] == [5, 5, 7, 8] and got["first_token_at"] == 1.5
    ahead = [b'data: {"output_ids": [1, 2, 3], "meta_info": {"completion_tokens": 2}}']  # reference grew meanwhile
    assert sr.read_stream(ahead, _clock([0]))["ids"] == [1, 2, 3]
    with pytest.raises(RuntimeError, match="error chunk"):
        sr.read_stream([b'data: {"error": {"message": "boom"}}'], _clock([]))


def test_counters_and_deltas():
    before = sr.counters('# HELP x\nsglang:droidspeak_fallbacks_total{model="r",reason="no_plan"} 1.0\n'
                         'sglang:droidspeak_tokens_reused_total{model="r"} 100.0\n'
                         'sglang:droidspeak_exports_total{model="r"} 4.0\n')
    assert before == {"fallbacks_total{reason=no_plan}": 1.0, "tokens_reused_total": 100.0}
    after = sr.counters('sglang:droidspeak_fallbacks_total{model="r",reason="no_plan"} 1.0\n'
                        'sglang:droidspeak_fallbacks_total{model="r",reason="fetch_timeout"} 1.0\n'
                        'sglang:droidspeak_foreign_hits_total{model="r",origin="remote"} 2.0\n'
                        'sglang:droidspeak_tokens_reused_total{model="r"} 3172.0\n')
    assert sr.counter_delta(before, after) == {"fallbacks_total{reason=fetch_timeout}": 1.0,
                                               "foreign_hits_total{origin=remote}": 2.0,
                                               "tokens_reused_total": 3072.0}


def test_statistics_exact_values():
    assert ss.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert ss.first_divergence([1, 2, 3], [1, 9, 3]) == 1
    assert ss.first_divergence([1, 2], [1, 2, 3]) == 2 and ss.first_divergence([], [4]) == 0
    lo, hi = ss.wilson(32, 64)
    half = 1.96 * math.sqrt(0.25 / 64 + 1.96 ** 2 / (4 * 64 ** 2)) / (1 + 1.96 ** 2 / 64)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half), abs=EXACT)
    assert ss.wilson(64, 64)[1] == 1.0 and ss.wilson(64, 64)[0] == pytest.approx(64 / (64 + 1.96 ** 2), abs=EXACT)
    assert ss.wilson(0, 0) == (0.0, 1.0)
    assert ss.mean_ci([1.0, 0.0, 1.0, 0.0]) == {"mean": 0.5, "ci95": round(1.96 * math.sqrt(1 / 3 / 4), 6), "n": 4}
    assert ss.mean_ci([0.25]) == {"mean": 0.25, "ci95": 0.0, "n": 1}
    assert ss.mean_ci([])["mean"] is None
    assert ss.pcts([10.0, 20.0, 30.0, 40.0]) == {"p50": 25.0, "p90": 37.0, "mean": 25.0}


def _row(receiver, prompt, plan, ids, ttft, cached, own_ids=(1, 2, 3), **extra):
    r = {"receiver": receiver, "prompt": prompt, "plan": plan, "value": plan, "ids": list(ids), "ttft_ms": ttft,
         "cached": cached, "exact": list(ids) == list(own_ids), "first_divergence": ss.first_divergence(
             list(ids), list(own_ids)), "edit_sim": 1.0 if list(ids) == list(own_ids) else 0.5, "gen_sim": 0.8,
         "task_edit_sim": 0.6}
    r.update(extra)
    return r


def test_summary_per_plan():
    rows = [_row("r", 0, "own", (1, 2, 3), 40.0, 0), _row("r", 1, "own", (1, 2, 3), 60.0, 0),
            _row("r", 0, "reuse", (1, 2, 3), 10.0, 3071, exact_radix=True,
                 counters={"tokens_reused_total": 3072.0}, **{"import": {"total_ms": 4.0}}),
            _row("r", 1, "reuse", (1, 9, 3), 30.0, 3072, exact_radix=False,
                 counters={"fallbacks_total{reason=no_plan}": 1.0}, **{"import": {"total_ms": None}}),
            {"receiver": "r", "prompt": 2, "plan": "reuse", "value": "reuse", "error": "HTTPError"}]
    s = rs.summarize(rows, 3072)
    own, reuse = s["r"]["own"], s["r"]["reuse"]
    assert own["n"] == 2 and own["ttft_ms"] == {"p50": 50.0, "p90": 58.0, "mean": 50.0} and "exact" not in own
    assert (reuse["n"], reuse["errors"], reuse["reused"], reuse["exact"], reuse["exact_rate"]) == (2, 1, 2, 1, 0.5)
    assert reuse["exact_ci95"] == [round(x, 6) for x in ss.wilson(1, 2)]
    assert reuse["first_divergence_mean"] == 1.0 and reuse["exact_vs_radix"] == 1
    assert reuse["edit_sim"] == {"mean": 0.75, "ci95": round(1.96 * math.sqrt(0.125 / 2), 6), "n": 2}
    assert reuse["ttft_ms"]["p50"] == 20.0 and reuse["own_ttft_ms"]["p50"] == 50.0 and reuse["ttft_speedup_p50"] == 2.5
    assert reuse["fallbacks"] == {"fallbacks_total{reason=no_plan}": 1.0}
    assert reuse["import_total_ms"]["p50"] == 4.0
    text = rs.table(s)
    assert "reuse" in text and "1/2 r1" in text and "no_plan:1" in text


def _synthetic_corpus():
    from sglang_droidspeak.real.corpus import bucket, corpus_from_members

    names = [f"django/m{i}.py" for i in range(400) if bucket(f"django/m{i}.py") < 0.1][:4]
    members = {name: "".join(f"def func_{f}_{i}(alpha, beta):\n    value_{i} = compute_{i}(alpha, beta + {i})\n"
                             f"    return value_{i}\n\n" for i in range(60)).encode() for f, name in enumerate(names)}
    return corpus_from_members("django==test", "0" * 64, members)


def test_dry_run_builds_prompts_and_plans(tmp_path, monkeypatch, capsys):
    from real_model import real_base_dir

    import sglang_droidspeak.real.corpus as corpus_module

    real_base_dir()  # the tokenizer of the dry run (every variant carries the base's)
    monkeypatch.setattr(corpus_module, "load_real_corpus", _synthetic_corpus)
    (tmp_path / "p").mkdir()
    from sglang_droidspeak.plan.profile_io import save_profile
    save_profile(profile([([[10, 20]], 0.86), ([[0, 30]], 0.9)]),
                 tmp_path / "p" / "smollm2-base__smollm2-lib-full.yaml")
    assert rs.main(["--dry-run", "--models-dir", str(tmp_path / "m"), "--profiles-dir", str(tmp_path / "p"),
                    "--num-prompts", "3", "--context-len", "64", "--query-len", "8"]) == 0
    out = capsys.readouterr().out
    assert "prompts: 3 lcc examples (+1 warm-up) from lib_heldout, prompt lengths [72]" in out
    assert "plan smollm2-lib-full   best          -> 10:20" in out
    assert ("plan smollm2-lib-full   auto          -> auto  plugin: cheapest frontier point within drop 0.05: "
            "10:20") in out
    assert "plan smollm2-lib-full   group:2       -> None  no frontier group of exactly 2 layers" in out
    assert "plan smollm2-lib-full   group:10      -> 10:20  profile's frontier at 10 layers: quality 0.8600" not in out
    assert "plan smollm2-lib-full   cacheblend:4  -> blend:0.133333@1  the plugin's plan for a cacheblend:4 point" in out
    # sender prefill + (own, context, radix + 8 plans with a value) + control (own, context, radix + reuse)
    assert "requests: 16 per prompt, 64 in all" in out
    with pytest.raises(SystemExit, match="--receiver"):
        rs.main(["--dry-run", "--receiver", "base"])


def test_dumps_indents_all_but_the_rows():
    for x in ({"a": {"z": [1, 2]}, "rows": [{"b": [1, 2]}, {"c": None}]}, {"a": 1, "rows": []},
              {"rows": [{"x": 1}]}, {}):
        assert json.loads(sm.dumps(x)) == x
    assert sm.dumps({"a": 1, "rows": [{"b": [1, 2]}]}) == '{\n "a": 1,\n "rows": [\n  {"b":[1,2]}\n ]\n}\n'


class FakeSGLang:
    """/generate (streaming or not), /flush_cache, /metrics of one receiver or sender, as the
    script uses them. Greedy ids follow the prompt; plan "0:10" changes the 4th token; plans
    other than "off" reuse the sender's context (cached = its length) and count reused tokens;
    "auto" counts a no_plan fallback and prefills normally."""

    def __init__(self, name: str, sender_seen: list):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.name, self.own, self.sender_seen, self.counts = name, [], sender_seen, {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def do_GET(self):
                body = "".join(f'sglang:droidspeak_{k}{{model="{fake.name}"{l}}} {v}\n'
                               for (k, l), v in fake.counts.items()).encode()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("content-length") or 0))
                if self.path == "/flush_cache":
                    fake.own.clear()
                    self.send_response(200)
                    self.end_headers()
                    return
                self.send_response(200)
                self.end_headers()
                for line in fake.answer(json.loads(raw)):
                    self.wfile.write(line)

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def count(self, key, label="", n=1):
        self.counts[(key, label)] = self.counts.get((key, label), 0) + n

    def answer(self, body):
        ids, params = body["input_ids"], body["sampling_params"]
        plan = (params.get("custom_params") or {}).get("droidspeak_plan", "auto")
        prefix = lambda seen: max((ss.first_divergence(ids, p) or len(p) for p in seen), default=0)  # noqa: E731
        if self.sender_seen is None:  # the sender
            self.sender_seen_list.append(list(ids))
            cached = 0
        elif plan in ("off", "auto"):
            cached = prefix(self.own)
            if plan == "auto":
                self.count("fallbacks_total", ',reason="no_plan"')
        else:
            cached = prefix(self.sender_seen)
            self.count("tokens_reused_total", "", cached)
        self.own.append(list(ids))
        out = [100 + (sum(ids) + i) % 50 for i in range(params["max_new_tokens"])]
        if plan == "0:10" and len(out) > 3:
            out[3] += 1
        meta = {"completion_tokens": len(out), "cached_tokens": cached, "prompt_tokens": len(ids)}
        if not body.get("stream"):
            return [json.dumps({"output_ids": out, "meta_info": meta}).encode()]
        return [b"data: " + json.dumps({"output_ids": out[:k], "meta_info": {**meta, "completion_tokens": k}}).encode()
                + b"\n\n" for k in range(1, len(out) + 1)] + [b"data: [DONE]\n\n"]

    def metrics(self):
        import urllib.request
        with urllib.request.urlopen(self.url + "/metrics") as r:
            return r.read().decode()

    def alive(self):
        return True


def test_measure_against_fake_servers(tmp_path):
    from real_model import real_base_dir
    from tokenizers import Tokenizer

    from sglang_droidspeak.tasks import TaskExample

    seen: list = []
    sender = FakeSGLang(sp.SENDER, None)
    sender.sender_seen_list = seen
    servers = {sp.SENDER: sender, "smollm2-lib-full": FakeSGLang("smollm2-lib-full", seen),
               sp.CONTROL: FakeSGLang(sp.CONTROL, seen)}
    examples = [TaskExample("lcc", f"f{i}.py", tuple(range(10 + i, 74 + i)), (5, 6, 7), "x = 1", 3, 10)
                for i in range(3)]
    args = rs.build_parser().parse_args(["--announce-wait", "0", "--context-len", "64", "--new-tokens", "6"])
    plans = sp.resolve_plans("auto,reuse,0:10", 30, None, 0, 0.05)
    control = sp.resolve_plans("reuse", 30, None, 0, 0.05)
    result, rows, out = {"date": "d"}, [], tmp_path / "r.json"
    scorer = rs.Scorer(Tokenizer.from_file(str(real_base_dir() / "tokenizer.json")))
    sm.measure(servers, "smollm2-lib-full", plans, control, examples, scorer, args, result, rows, out)
    try:
        assert sorted({r["prompt"] for r in rows}) == [0, 1]  # the warm-up (examples[-1]) is not recorded
        main = [r for r in rows if r["receiver"] == "smollm2-lib-full"]
        assert [r["plan"] for r in main if r["prompt"] == 0] == ["own", "radix", "auto", "reuse", "0:10"]
        by = {(r["prompt"], r["plan"]): r for r in main}
        assert by[(0, "own")]["cached"] == 0 and by[(0, "radix")]["cached"] == 64 and by[(0, "reuse")]["cached"] == 64
        assert by[(0, "auto")]["cached"] == 0 and by[(0, "auto")]["counters"] == {"fallbacks_total{reason=no_plan}": 1}
        assert by[(0, "reuse")]["counters"] == {"tokens_reused_total": 64}
        assert by[(0, "reuse")]["exact"] and by[(0, "reuse")]["exact_radix"] and "ids" not in by[(0, "reuse")]
        fixed = by[(0, "0:10")]
        assert not fixed["exact"] and fixed["first_divergence"] == 3 and len(fixed["ids"]) == 6
        assert all(r["ttft_ms"] is not None and r["ttft_ms"] <= r["e2e_ms"] for r in rows)
        s = result["summary"]
        assert s["smollm2-lib-full"]["reuse"]["exact"] == 2 and s["smollm2-lib-full"]["reuse"]["reused"] == 2
        assert s["smollm2-lib-full"]["0:10"]["exact"] == 0 and s["smollm2-lib-full"]["auto"]["reused"] == 0
        assert s[sp.CONTROL]["reuse"]["exact_vs_radix"] == 2
        saved = json.loads(out.read_text())
        assert saved["summary"] == s and len(saved["rows"]) == len(rows) == 2 * (5 + 3)
    finally:
        for server in servers.values():
            server.http.shutdown()
