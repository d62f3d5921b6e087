"""Token windows, seeded batches and the LR schedule of the family build."""

from __future__ import annotations

import pytest
import torch

from sglang_droidspeak.family.config import FamilyConfig
from sglang_droidspeak.family.corpus import split_corpus
from sglang_droidspeak.family.data import batches, shuffled_files, spread_windows, windows
from sglang_droidspeak.family.train import Schedule


def test_windows_are_disjoint_and_drop_the_tail():
    token_ids = torch.arange(10)
    assert windows(token_ids, 3).tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    with pytest.raises(ValueError):
        windows(token_ids, 11)


def test_spread_windows_span_the_whole_stream():
    token_ids = torch.arange(100)
    spread = spread_windows(token_ids, 10, 4)  # starts 0, 30, 60, 90
    assert spread[:, 0].tolist() == [0, 30, 60, 90] and spread[-1, -1].item() == 99
    with pytest.raises(ValueError):
        spread_windows(token_ids, 101, 1)


def test_batches_are_seeded_and_cover_each_epoch():
    all_windows = torch.arange(5).unsqueeze(1)  # [5, 1]
    first = [b.flatten().tolist() for b in batches(all_windows, 2, 5, seed=3)]
    again = [b.flatten().tolist() for b in batches(all_windows, 2, 5, seed=3)]
    other = [b.flatten().tolist() for b in batches(all_windows, 2, 5, seed=4)]
    assert first == again and first != other
    flat = sum(first, [])
    assert len(flat) == 10 and sorted(flat[:5]) == [0, 1, 2, 3, 4]  # one full epoch first


def test_shuffled_files_is_a_seeded_subset_of_the_split():
    corpus = split_corpus()
    files = shuffled_files(corpus, "lib", seed=0)
    assert sorted(files) == list(corpus.files("lib")) and files != sorted(files)
    assert shuffled_files(corpus, "lib", seed=0, max_files=4) == files[:4]
    assert shuffled_files(corpus, "lib", seed=1)[:4] != files[:4]


def test_schedule_warms_up_then_decays_to_the_floor():
    schedule = Schedule(lr=1.0, warmup_steps=4, weight_decay=0.0, grad_clip=1.0)
    assert [schedule.lr_at(s, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule.lr_at(12, 20) == pytest.approx(0.55)
    assert schedule.lr_at(20, 20) == pytest.approx(0.1)


def test_config_rejects_non_gqa_and_bad_phases():
    with pytest.raises(ValueError):
        FamilyConfig(num_attention_heads=2, num_key_value_heads=2)
    with pytest.raises(ValueError):
        FamilyConfig(base_steps=10, base_long_steps=11)
    assert FamilyConfig().head_dim == 64 and FamilyConfig().tokens_per_step == 1024
