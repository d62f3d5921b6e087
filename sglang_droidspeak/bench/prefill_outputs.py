"""The result files of ``droidspeak bench-prefill`` (JSON, Markdown, PNG), written and replotted.

    write_outputs(result, out)   rows (first config: main table), warnings, then ``out``
                                 (JSON), ``out``.md and ``out``.png; a sweep or import
                                 splits add a section and ``-sweep.png`` (sweep_section)
    replot(paths, out)           one result: its .md and .png again; several: merged into ``out``
    reuse_warnings(samples)      samples whose cache hit contradicts their plan
Imports no SGLang or torch; matplotlib only inside the report modules' ``plot``.
"""

from __future__ import annotations

import json
from pathlib import Path

from sglang_droidspeak.bench import kernel_profile
from sglang_droidspeak.bench import prefill_report as rep
from sglang_droidspeak.bench import sweep_report as sweep
from sglang_droidspeak.bench import ttft_split


def reuse_warnings(samples: list[dict]) -> list[str]:
    """Samples whose cache hit contradicts their plan (a fallback: the number is not that system's)."""
    return [f"length {s['length']} plan {s['plan']} repeat {s['repeat']}: cached_tokens {s['cached_tokens']}"
            + (" but plan 'off' must not reuse" if s["plan"] == rep.FULL else " < context: fell back to prefill")
            for s in samples if s["reused_context"] == (s["plan"] == rep.FULL)]


def replot(paths: list[Path], out: Path) -> list[Path]:
    """One result: its .md and .png again, beside it. Several: their samples merged (plans in
    first-seen order, the first one's header fields, every card kept) into ``out`` and beside it."""
    results = [json.loads(p.read_text()) for p in paths]
    if len(results) == 1:
        return write_outputs(results[0], paths[0], json_too=False)
    merged = {**results[0], "merged_from": [str(p) for p in paths],
              "command": " + ".join(r.get("command", "?") for r in results),
              "card": "; ".join(dict.fromkeys(r.get("card", "?") for r in results)),
              "plans": list(dict.fromkeys(p for r in results for p in r["plans"])),
              "samples": [s for r in results for s in r["samples"]]}
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_outputs(merged, out)


def write_outputs(result: dict, out: Path, plot: bool = True, json_too: bool = True) -> list[Path]:
    """``out`` (JSON, with rows and warnings), ``out``.md and, if ``plot``, ``out``.png."""
    main = first_config_samples(result)
    rows = rep.table_rows(rep.median_ttft(main), result["plans"], result["num_layers"])
    result["rows"] = rep.rows_to_json(rows)
    result["warnings"] = reuse_warnings(result["samples"])
    md, png = out.with_suffix(".md"), out.with_suffix(".png")
    report = rep.markdown_report(result, rows) + sweep_section(result, out, plot)
    report += ttft_split.markdown_section(main, rep.FULL,
                                          lambda plan: rep.recomputed_layers(plan, result["num_layers"]))
    if result.get("profiles"):
        report += kernel_profile.markdown_section(result["profiles"])
    if result["warnings"]:
        report += "\nWarnings (these samples did not run the named system):\n\n" + "".join(
            f"- {w}\n" for w in result["warnings"])
    md.write_text(report)
    if plot:
        result["plot"] = rep.plot(rows, png) or str(png)
    if json_too:
        out.write_text(json.dumps(result, indent=1))
    return [out, md] + ([png] if plot and result["plot"] == str(png) else [])


def first_config_samples(result: dict) -> list[dict]:
    """Full prefill and the first config's samples: the main table (old results: all)."""
    configs = result.get("configs") or []
    if not configs:
        return result["samples"]
    first = sweep.Config(**configs[0])
    return [s for s in result["samples"] if s["plan"] == rep.FULL or sweep.config_of(s) == first]


def sweep_section(result: dict, out: Path, plot: bool) -> str:
    """The pipelining / link table (and ``-sweep.png``) when the run is a sweep or has import splits."""
    configs = result.get("configs") or []
    has_split = any(s.get("total_ms") is not None for s in result["samples"])
    if len(configs) < 2 and not has_split:
        return ""
    rows = sweep.sweep_rows(result["samples"], rep.FULL)
    result["sweep_rows"] = sweep.rows_to_json(rows)
    text = ("\n## Pipelining and link rate\n\n" + "Import split from the receiver's /metrics; bound = "
            f"{sweep.BOUND_FACTOR} x max(recompute, fetch) + suffix (suffix = TTFT - import).\n\n"
            + sweep.markdown_table(rows))
    if plot:
        png = out.with_name(out.stem + "-sweep.png")
        result["sweep_plot"] = sweep.plot(rows, png) or str(png)
    return text
