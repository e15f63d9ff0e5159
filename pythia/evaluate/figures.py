"""Report figures as PNG bytes: per-class F1, confusion matrices, reliability diagrams and
predicted-vs-actual class distributions.

Figures are built with the object-oriented ``matplotlib.figure.Figure`` API (Agg canvas, no
pyplot state), so nothing needs closing and a notebook's backend is left alone.
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

_DPI = 90


def _new_figure(n_panels: int, width_per_panel: float = 5.0, height: float = 4.0
                ) -> tuple[Figure, Sequence]:
    fig = Figure(figsize=(width_per_panel * n_panels, height), layout="tight")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, axes


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return buf.getvalue()


def _grouped_bars(ax, table: pd.DataFrame, ylabel: str) -> None:
    """One group of bars per index entry (class), one bar per column (series)."""
    n_series = max(len(table.columns), 1)
    width = 0.8 / n_series
    x = np.arange(len(table.index))
    for i, col in enumerate(table.columns):
        ax.bar(x + (i - (n_series - 1) / 2) * width, table[col].to_numpy(dtype=float),
               width=width, label=str(col))
    ax.set_xticks(x)
    crowded = len(x) > 4
    ax.set_xticklabels([str(c) for c in table.index], rotation=45 if crowded else 0,
                       ha="right" if crowded else "center")
    ax.set_ylabel(ylabel)


def _figure_legend(fig: Figure, axes: Sequence) -> None:
    """One legend under the panels (per-axes legends hide bars)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="upper center",
                   bbox_to_anchor=(0.5, 0.0), ncol=min(len(seen), 6), fontsize=8)


def plot_bar_panels(panels: Mapping[str, pd.DataFrame], title: str, ylabel: str) -> bytes:
    """Grouped bar charts, one panel per key (target); each DataFrame is class x series."""
    if not panels:
        raise ValueError(f"no data to plot for {title!r}")
    fig, axes = _new_figure(len(panels))
    for ax, (name, table) in zip(axes, panels.items()):
        _grouped_bars(ax, table, ylabel)
        ax.set_title(name)
    _figure_legend(fig, axes)
    fig.suptitle(title)
    return figure_png(fig)


def plot_confusion(panels: Mapping[str, tuple[np.ndarray, np.ndarray, Sequence[str]]],
                   title: str) -> bytes:
    """Row-normalised confusion matrices; panels map target -> (y_true, y_pred, class_names)."""
    if not panels:
        raise ValueError(f"no data to plot for {title!r}")
    fig, axes = _new_figure(len(panels), width_per_panel=5.5, height=5.0)
    for ax, (name, (y, pred, names)) in zip(axes, panels.items()):
        ConfusionMatrixDisplay.from_predictions(
            y, pred, labels=np.arange(len(names)), display_labels=list(names),
            normalize="true", ax=ax, colorbar=False, include_values=len(names) <= 6,
            values_format=".2f", xticks_rotation="vertical")
        ax.set_title(f"{name} (rows: true class)")
    fig.suptitle(title)
    return figure_png(fig)


def plot_reliability(panels: Mapping[str, Mapping[str, pd.DataFrame]], title: str) -> bytes:
    """Reliability diagrams; panels map target -> {curve label: reliability_bins table}."""
    if not panels:
        raise ValueError(f"no data to plot for {title!r}")
    fig, axes = _new_figure(len(panels), width_per_panel=4.5, height=4.5)
    for ax, (name, curves) in zip(axes, panels.items()):
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
        for label, bins in curves.items():
            used = bins[bins["count"] > 0]
            ax.plot(used["confidence"], used["accuracy"], marker="o", markersize=3, label=label)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-label probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(name)
    _figure_legend(fig, axes)
    fig.suptitle(title)
    return figure_png(fig)
