"""The SGLang plugin: settings, import safety, entry point, backend registration.

Settings and import-safety tests need no SGLang. The registration tests use SGLang
0.5.17's real registry and ``create_tree_cache`` and are skipped where SGLang is not
importable (on CPU machines it comes from the folder ``cpu_import`` puts on sys.path).
The entry-point test needs the project installed (``pip install -e . --no-deps``).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from cpu_sglang import require_cpu_sglang

from sglang_droidspeak.plan import LayerPlan
from sglang_droidspeak.sglang import plugin
from sglang_droidspeak.sglang.settings import (
    CONFIG_ENV,
    DroidSpeakSettings,
    SettingsError,
    load_settings,
    parse_settings,
)

CONFIG = """
model: coder-b
min_foreign_tokens: 16
plans:
  - {sender: coder-a, receiver: coder-b, num_layers: 4, groups: [[0, 2]]}
"""


def test_defaults_when_no_config(monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    assert load_settings() == DroidSpeakSettings()
    assert DroidSpeakSettings().plan_lookup()("coder-a", "coder-b") is None


def test_config_file_from_env(monkeypatch, tmp_path):
    path = tmp_path / "droidspeak.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv(CONFIG_ENV, str(path))
    settings = load_settings()
    assert settings.model == "coder-b"
    assert (settings.min_foreign_tokens, settings.allow_derived_export) == (16, False)
    lookup = settings.plan_lookup()
    assert lookup("coder-a", "coder-b") == LayerPlan.contiguous(4, 0, 2)
    assert lookup("coder-b", "coder-a") is None


@pytest.mark.parametrize(
    "data, field",
    [
        ({"modle": "x"}, "modle"),
        ({"min_foreign_tokens": 0}, "min_foreign_tokens"),
        ({"allow_derived_export": "yes"}, "allow_derived_export"),
        ({"plans": [{"sender": "a", "receiver": "b", "num_layers": 4, "groups": [[2, 9]]}]}, "plans[0]"),
        ({"plans": [{"sender": "a", "receiver": "b", "groups": [[0, 1]]}]}, "plans[0]"),
    ],
)
def test_bad_config_names_the_field(data, field):
    with pytest.raises(SettingsError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_settings(data, where="cfg.yaml")


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(str(tmp_path / "absent.yaml"))


def test_plugin_module_imports_without_sglang():
    code = (
        "import sys, sglang_droidspeak.sglang.plugin; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sglang'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_entry_point_resolves_to_load():
    try:
        importlib.metadata.distribution("sglang-droidspeak")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("project not installed (pip install -e . --no-deps)")
    found = {ep.name: ep for ep in importlib.metadata.entry_points(group="sglang.srt.plugins")}
    assert found["droidspeak"].value == "sglang_droidspeak.sglang.plugin:load"
    assert found["droidspeak"].load() is plugin.load


@pytest.fixture
def sglang_mem_cache():
    require_cpu_sglang(at_module_level=False)
    from sglang.srt.mem_cache import registry

    return registry


def build_context(registry, **flags):
    from sglang.srt.mem_cache.allocator import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.cache_init_params import CacheInitParams
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool

    kv_pool = MHATokenToKVPool(32, 1, torch.float32, 2, 4, 4, "cpu", enable_memory_saver=False)
    allocator = TokenToKVPoolAllocator(32, torch.float32, "cpu", kv_pool, need_sort=False)
    req_pool = ReqToTokenPool(size=2, max_context_len=32, device="cpu", enable_memory_saver=False)
    server_args = SimpleNamespace(
        radix_cache_backend="droidspeak", served_model_name="served-b",
        enable_session_radix_cache=False, enable_streaming_session=False,
    )
    context = dict(
        server_args=server_args, params=CacheInitParams(False, req_pool, allocator, 1),
        is_hybrid_swa=False, is_hybrid_ssm=False, enable_hierarchical_cache=False,
        disable_radix_cache=False, effective_chunked_prefill_size=None, tp_worker=None,
        model_config=SimpleNamespace(model_path="/models/b"), tp_size=1, tp_rank=0, tp_group=None,
    )
    context.update(flags)
    return registry.TreeCacheBuildContext(**context)


def test_load_registers_the_backend_once(sglang_mem_cache):
    plugin.load()
    plugin.load()
    assert sglang_mem_cache.registered_radix_cache_backends().count("droidspeak") == 1
    assert sglang_mem_cache.get_radix_cache_factory("droidspeak") is plugin.build_droidspeak_cache


def test_sglang_builds_the_tagged_cache_from_config(sglang_mem_cache, monkeypatch, tmp_path):
    from sglang_droidspeak.sglang.radix_cache import DroidSpeakRadixCache

    path = tmp_path / "droidspeak.yaml"
    path.write_text(CONFIG)
    monkeypatch.setenv(CONFIG_ENV, str(path))
    plugin.load()
    cache = sglang_mem_cache.create_tree_cache(build_context(sglang_mem_cache))
    assert type(cache) is DroidSpeakRadixCache
    assert (cache.model, cache.min_foreign_tokens) == ("coder-b", 16)
    assert cache.plan_lookup("coder-a", "coder-b") == LayerPlan.contiguous(4, 0, 2)


def test_model_name_defaults_to_the_served_name(sglang_mem_cache, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    cache = plugin.build_droidspeak_cache(build_context(sglang_mem_cache))
    assert cache.model == "served-b"


def test_unsupported_cache_kinds_are_refused(sglang_mem_cache, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    with pytest.raises(ValueError, match="enable_hierarchical_cache"):
        plugin.build_droidspeak_cache(build_context(sglang_mem_cache, enable_hierarchical_cache=True))
