"""Benchmarks that run against live SGLang servers (issue 6).

    prefill          ``droidspeak bench-prefill``: receiver TTFT against context length for
                     full prefill, full KV reuse and DroidSpeak plans (runs the servers)
    prefill_model    its model dir (Llama-3.1-8B shapes, dummy weights) and servers
    prefill_report   its pure part: table rows, speedup / ideal / efficiency, Markdown, plot
    prefill_outputs  its result JSON, .md and .png (written after every length) and --replot
    quality_latency  ``droidspeak quality-latency``: quality (micro family, CPU) against TTFT
                     (8B bench, GPU) by compute budget; DroidSpeak vs CacheBlend at equal latency
    quality_latency_map, _compare, _report   its budget -> TTFT mapping, comparison, outputs
    throughput       ``droidspeak bench-throughput``: a multi-agent workload at Poisson QPS,
                     TTFT / TBT / E2E per system and the highest QPS meeting a TTFT SLO
    workload         its seeded MetaGPT-like sessions (coder > tester [> reviewer])
    load_driver      its asyncio client: streaming /generate, one RequestRecord per request
    throughput_stats percentiles, per-point summaries, max QPS at SLO (pure)
    throughput_report, throughput_outputs   Markdown / PNG; the result JSON and replot
    throughput_servers   --launch: one 8B-shaped dummy server per model (sender + receivers)

Nothing here imports SGLang or torch at module import: the servers are subprocesses.
"""
