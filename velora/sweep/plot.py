"""sweep.png: validation macro-F1 by LoRA rank (or learning rate), a line per value of the other swept settings,
beside the train-minus-validation macro-F1 gap (the guide's overfitting signal: r=16 at 98.2% train, 85.3%
validation). Error bars are the spread over seeds; pruned configurations are crosses at the score they were
stopped at; the chosen one is ringed."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure

from velora.sweep.space import SWEPT, shown

LOG_AXES = {"lora_r": 2, "learning_rate": 10, "per_device_train_batch_size": 2, "lora_alpha": 2}
MAX_LINES = 8  # more series than this (a TPE search's continuous learning rates): points only, no legend


def _x_axis(rows: list[dict], swept: Sequence[str]) -> tuple[str | None, dict]:
    """The setting on the x axis and each of its values' position (None: the trial number)."""
    name = next((n for n in ("lora_r", "learning_rate", *swept) if n in swept), None)
    if name is None:
        return None, {r["trial"]: r["trial"] for r in rows}
    values = sorted({r[name] for r in rows}, key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0,
                                                            str(v)))
    numeric = all(isinstance(v, (int, float)) for v in values)
    return name, {v: (v if numeric else i) for i, v in enumerate(values)}


def plot_sweep(rows: list[dict], swept: Sequence[str], path: Path, best_trial: int | None) -> Path:
    x_name, positions = _x_axis(rows, swept)
    series_names = [n for n in swept if n != x_name]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[n] for n in series_names)].append(row)
    many = len(groups) > MAX_LINES
    fig = Figure(figsize=(11, 4.4))  # no pyplot: no global figure state, no GUI backend
    ax_val, ax_gap = fig.subplots(1, 2)
    x_of = (lambda r: positions[r[x_name]]) if x_name else (lambda r: r["trial"])
    for key, members in sorted(groups.items(), key=lambda item: str(item[0])):
        members.sort(key=x_of)
        label = ", ".join(f"{SWEPT[n][1]} {shown(v)}" for n, v in zip(series_names, key)) or "all runs"
        done = [m for m in members if m["state"] == "complete" and m["val_macro_f1"] is not None]
        colour = None
        if done:
            bars = ax_val.errorbar([x_of(m) for m in done], [m["val_macro_f1"] for m in done],
                                   yerr=[m["val_macro_f1_std"] or 0 for m in done], marker="o", capsize=3,
                                   linestyle="none" if many else "-", label=None if many else label)
            colour = bars[0].get_color()
            gaps = [m for m in done if m["gap"] is not None]
            ax_gap.plot([x_of(m) for m in gaps], [m["gap"] for m in gaps], marker="s", color=colour,
                        linestyle="none" if many else "-", label=None if many else label)
        pruned = [m for m in members if m["state"] == "pruned" and m["val_macro_f1"] is not None]
        if pruned:
            ax_val.scatter([x_of(m) for m in pruned], [m["val_macro_f1"] for m in pruned], marker="x", s=60,
                           color=colour or "grey", label=None if many else f"{label} (pruned)")
    best = next((r for r in rows if r["trial"] == best_trial), None)
    if best is not None:
        ax_val.scatter([x_of(best)], [best["val_macro_f1"]], s=320, facecolors="none", edgecolors="black",
                       linewidths=1.5, label=f"chosen: trial {best_trial}", zorder=5)
    _label_x(ax_val, x_name, positions)
    _label_x(ax_gap, x_name, positions)
    several_seeds = any("," in str(r.get("seeds", "")) for r in rows)
    ax_val.set(ylabel="validation macro-F1",
               title="Validation macro-F1" + (" (mean ± std over seeds)" if several_seeds else ""))
    ax_gap.axhline(0, color="grey", linewidth=0.8)
    ax_gap.set(ylabel="train − validation macro-F1", title="Overfitting: training split minus validation")
    for ax in (ax_val, ax_gap):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _label_x(ax, name: str | None, positions: dict) -> None:
    if name is None:
        ax.set_xlabel("trial")
        return
    numeric = all(isinstance(v, (int, float)) for v in positions)
    if numeric and name in LOG_AXES and len(positions) > 1:
        ax.set_xscale("log", base=LOG_AXES[name])
    if len(positions) <= 10:  # a tick per value; a TPE search's many values keep the default ticks
        ax.set_xticks(list(positions.values()), [shown(v) for v in positions])
        ax.minorticks_off()
    ax.set_xlabel(name)
