"""The SGLang 0.5.17 adapter: plugin entry point, tagged radix cache, settings.

The only subpackage that imports SGLang, and only lazily: ``plugin`` and ``settings``
import without SGLang; ``radix_cache`` needs it (see ``cpu_import`` for CPU machines).
"""
