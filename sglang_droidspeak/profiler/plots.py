"""PNG plots of a profile: per-layer sensitivity, (start, end) heatmap, Pareto frontier."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sglang_droidspeak.plan import LayerPlan, Profile  # noqa: E402


def _title(profile: Profile) -> str:
    return f"{profile.sender.name} -> {profile.receiver.name} ({profile.dataset}, {profile.metric})"


def plot_sensitivity(profile: Profile, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(range(profile.num_layers), profile.sensitivity or [0.0] * profile.num_layers, color="tab:red")
    ax.set(xlabel="layer reused from the sender (all others recomputed)", ylabel=f"{profile.metric} drop",
           title=_title(profile))
    ax.set_xticks(range(profile.num_layers))
    return _save(fig, path)


def plot_heatmap(profile: Profile, scores: Mapping[LayerPlan, float], path: Path) -> Path:
    """Quality of each contiguous group [s, e): rows s, columns e (blank where e <= s)."""
    num_layers = profile.num_layers
    grid = np.full((num_layers, num_layers + 1), np.nan)  # [start, end]
    for plan, quality in scores.items():
        if len(plan.groups) == 1:
            grid[plan.groups[0].start, plan.groups[0].end] = quality
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(grid[:, 1:], origin="lower", cmap="viridis", aspect="auto",
                      extent=(0.5, num_layers + 0.5, -0.5, num_layers - 0.5))
    fig.colorbar(image, ax=ax, label=profile.metric)
    ax.set(xlabel="end layer e (exclusive)", ylabel="start layer s", title=_title(profile))
    return _save(fig, path)


def plot_frontier(profile: Profile, scores: Mapping[LayerPlan, float], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    contiguous = [(p.num_recomputed_layers, q) for p, q in scores.items() if len(p.groups) <= 1]
    ax.scatter(*zip(*contiguous), s=14, color="0.6", label="contiguous groups")
    layers = [p.num_recomputed_layers for p in profile.frontier]
    validated = profile.validation is not None
    ax.plot(layers, [p.quality for p in profile.frontier], "o-", color="tab:blue",
            label="Pareto frontier" + (" (validation examples)" if validated else ""))
    if validated:
        ax.plot(layers, [p.selection_quality for p in profile.frontier], "x:", color="tab:blue",
                label="the same plans on the selection examples")
    ax.axhline(profile.receiver_quality, ls="--", color="tab:green", label="receiver full prefill")
    ax.axhline(profile.full_reuse_quality, ls=":", color="tab:red", label="full reuse")
    ax.set(xlabel="recomputed layers", ylabel=profile.metric, title=_title(profile))
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_profile_plots(profile: Profile, scores: Mapping[LayerPlan, float], stem: Path) -> tuple[Path, ...]:
    """Write ``<stem>.sensitivity.png``, ``<stem>.heatmap.png`` and ``<stem>.frontier.png``."""
    return (
        plot_sensitivity(profile, Path(f"{stem}.sensitivity.png")),
        plot_heatmap(profile, scores, Path(f"{stem}.heatmap.png")),
        plot_frontier(profile, scores, Path(f"{stem}.frontier.png")),
    )


def plot_quality_vs_compute(rows: list[dict], metrics: list[str], title: str, path: Path) -> Path:
    """DroidSpeak's frontier and the CacheBlend-style baseline against recompute fraction,
    one panel per metric."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
    ends = [r for r in rows if r["system"] in ("plan:reuse-all", "receiver")]  # shared by both curves
    for ax, metric in zip(axes, metrics):
        for prefix, style, label in (("plan:", "o-", "DroidSpeak (layer groups)"),
                                     ("cacheblend:", "s--", "CacheBlend-style (tokens)")):
            chosen = [r for r in rows if r["system"].startswith(prefix)] + (ends if prefix == "cacheblend:" else [])
            ax.plot(*zip(*sorted((r["recompute_fraction"], r[metric]) for r in chosen)), style, label=label)
        for system, color, label in (("receiver", "tab:green", "receiver full prefill"),
                                     ("sender", "tab:gray", "sender alone")):
            ax.axhline(next(r[metric] for r in rows if r["system"] == system), ls=":", color=color, label=label)
        ax.set(xlabel="recompute fraction of the prefix (layer-tokens)", ylabel=metric, title=f"{title}: {metric}")
    axes[0].legend(fontsize=8)
    return _save(fig, path)
