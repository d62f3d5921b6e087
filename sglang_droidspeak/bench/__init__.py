"""Benchmarks that run against live SGLang servers (issue 6).

    prefill          ``droidspeak bench-prefill``: receiver TTFT against context length for
                     full prefill, full KV reuse and DroidSpeak plans (runs the servers)
    prefill_model    its model dir (Llama-3.1-8B shapes, dummy weights) and servers
    prefill_report   its pure part: table rows, speedup / ideal / efficiency, Markdown, plot

Nothing here imports SGLang or torch at module import: the servers are subprocesses.
"""
