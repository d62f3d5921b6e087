"""sglang-droidspeak: cross-model KV-cache reuse for SGLang (DroidSpeak, arXiv 2411.02820).

Subpackages, one concern each (only ``sglang`` imports SGLang internals):

    identity   model fingerprints; who may share KV with whom
    plan       LayerPlan, profile YAML, the online policy
    reference  the method on Hugging Face models (golden reference, profiler engine)
    family     the project's own micro model family (corpus, tokenizer, training)
    tasks      held-out evaluation sets and metrics
    profiler   sensitivity probe, contiguous-group search, Pareto frontier, plots
    sglang     the SGLang 0.5.17 plugin
"""

__version__ = "0.1.0"
