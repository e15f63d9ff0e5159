"""Report figures as PNG bytes: per-class F1, confusion matrices, reliability diagrams and
predicted-vs-actual class distributions, four per eval region (``draw_figures``). Every figure
is drawn from aggregates — the metric tables and the per-slice sums of streaming evaluation
(confusion counts, reliability bins) — never from rows.

Figures are built with the object-oriented ``matplotlib.figure.Figure`` API (Agg canvas, no
pyplot state), so nothing needs closing and a notebook's backend is left alone. Their layout is
constrained (it places the suptitle and the legend under the panels itself), so a figure is laid
out once and saved as is: ``bbox_inches="tight"`` would measure every text again.
"""
from __future__ import annotations

import io
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from pythia import threads
from pythia.evaluate.forked import map_forked
from pythia.evaluate.frames import JOINT_TARGET, PROVIDER, TRUTH
from pythia.evaluate.slices import BAYES_MODEL, NATURAL, candidate_label
from pythia.evaluate.sums import SliceSums
from pythia.features import TARGETS, VALIDATION, class_labels

_DPI = 90
MAX_MODELS_IN_BARS = 6  # per-class F1 figure: the best few candidates, or bars get unreadable


def _new_figure(n_panels: int, width_per_panel: float = 5.0, height: float = 4.0
                ) -> tuple[Figure, Sequence]:
    fig = Figure(figsize=(width_per_panel * n_panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, axes


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
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
        fig.legend(list(seen.values()), list(seen), loc="outside lower center",
                   ncol=min(len(seen), 6), fontsize=8)


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


def plot_confusion(panels: Mapping[str, tuple[np.ndarray, Sequence[str]]], title: str) -> bytes:
    """Row-normalised confusion matrices; panels map target -> (counts, class_names), counts
    a (true class, predicted class) matrix."""
    if not panels:
        raise ValueError(f"no data to plot for {title!r}")
    fig, axes = _new_figure(len(panels), width_per_panel=5.5, height=5.0)
    for ax, (name, (counts, names)) in zip(axes, panels.items()):
        counts = np.asarray(counts, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))
        ConfusionMatrixDisplay(share, display_labels=list(names)).plot(
            ax=ax, colorbar=False, include_values=len(names) <= 6, values_format=".2f",
            xticks_rotation="vertical")
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


# ---------------------------------------------------------------- the report's figures

def draw_figures(champions: pd.DataFrame, metrics: pd.DataFrame, distributions: pd.DataFrame,
                 sums: SliceSums, workers: int | None = None) -> dict[str, bytes]:
    """The figures of every champion's region on the natural test day, as
    {'<kind>__<region>': png bytes}.

    Args:
        champions: the champions table (one row per eval region).
        metrics, distributions: the long tables of the run.
        sums: the per-slice sums of streaming evaluation (the winners' confusion counts and
            reliability bins, and the exact posterior's on the same rows).
        workers: processes drawing regions at once (``forked``; default: the task's cores).
    """
    def region_figures(champ: pd.Series) -> dict[str, bytes]:
        region = champ["region"]
        out = _per_class_f1(region, metrics, sums.edges)
        if not pd.isna(champ["model"]):
            out.update(_winner_figures(region, champ, sums))
            out.update(_distribution(region, champ, distributions, sums.edges))
        return out

    figures: dict[str, bytes] = {}
    for part in map_forked(region_figures,
                           [pd.Series(c._asdict()) for c in champions.itertuples(index=False)],
                           threads.thread_budget() if workers is None else workers):
        figures.update(part)
    return figures


def _winner_label(champ: pd.Series) -> str:
    name = candidate_label(champ["model"], champ["candidate_region"], champ["config_id"])
    return name if champ["blessed"] else f"{name} (best, NOT blessed)"


def _per_class_f1(region: str, metrics: pd.DataFrame, edges: Sequence[int]
                  ) -> dict[str, bytes]:
    """Per-class F1 of the best few candidates by validation log-loss, and of the posterior."""
    sel = metrics[(metrics["eval_region"] == region) & (metrics["test_set"] == NATURAL)
                  & (metrics["label_source"] == PROVIDER)]
    val = metrics[(metrics["eval_region"] == region) & (metrics["test_set"] == VALIDATION)
                  & (metrics["metric"] == "log_loss") & (metrics["target"] == JOINT_TARGET)
                  & (metrics["label_source"] == PROVIDER)]
    keep = [candidate_label(r.model, r.region, r.config_id)
            for r in val.sort_values("value").itertuples()][:MAX_MODELS_IN_BARS]
    f1 = sel[(sel["metric"] == "f1") & sel["class"].notna()].copy()
    f1["who"] = [BAYES_MODEL if m == BAYES_MODEL else candidate_label(m, r, c)
                 for m, r, c in zip(f1["model"], f1["region"], f1["config_id"])]
    panels = _class_panels(f1[f1["who"].isin(keep + [BAYES_MODEL])], "who", "value", edges)
    if not panels:
        return {}
    return {f"per_class_f1__{region}": plot_bar_panels(
        panels, f"{region}: per-class F1 on the natural test day (provider labels)", "F1")}


def _winner_figures(region: str, champ: pd.Series, sums: SliceSums) -> dict[str, bytes]:
    """Confusion matrices and reliability diagrams of the region's winner."""
    out: dict[str, bytes] = {}
    key = (champ["model"], champ["candidate_region"], int(champ["config_id"]))
    title = _winner_label(champ)
    conf_panels, rel_panels = {}, {}
    for t in TARGETS:
        curves = {}
        for source in (PROVIDER, TRUTH):
            stats = sums.label_stats(key, NATURAL, region, t, source)
            if stats is None or stats.n == 0:
                continue
            if source == PROVIDER:
                conf_panels[t] = (stats.confusion, class_labels(t, sums.edges))
            curves[f"model vs {source}"] = stats.top.table()
            if stats.reference is not None and sums.gauge_note is None:
                curves[f"bayes vs {source}"] = stats.reference.top.table()
        if curves:
            rel_panels[t] = curves
    if conf_panels:
        out[f"confusion__{region}"] = plot_confusion(
            conf_panels, f"{region}: {title}, normalised confusion (natural test, provider labels)")
    if rel_panels:
        out[f"reliability__{region}"] = plot_reliability(
            rel_panels, f"{region}: {title}, reliability (natural test day)")
    return out


def _distribution(region: str, champ: pd.Series, dists: pd.DataFrame, edges: Sequence[int]
                  ) -> dict[str, bytes]:
    """The winner's predicted class shares next to the label shares."""
    d = dists[(dists["eval_region"] == region) & (dists["test_set"] == NATURAL)]
    is_winner = ((d["model"] == champ["model"]) & (d["region"] == champ["candidate_region"])
                 & (d["config_id"].fillna(-1) == int(champ["config_id"])))
    bars = _class_panels(d[is_winner | (d["model"] == "labels")], "source", "share", edges)
    if not bars:
        return {}
    return {f"distribution__{region}": plot_bar_panels(
        bars, f"{region}: predicted vs actual class shares, {_winner_label(champ)} "
        "(natural test day)", "share of impressions")}


def _class_panels(df: pd.DataFrame, columns: str, values: str, edges: Sequence[int]
                  ) -> dict[str, pd.DataFrame]:
    """Per target: a class x ``columns`` table of ``values`` in class order (figure panels)."""
    panels = {}
    for t in TARGETS:
        part = df[df["target"] == t]
        if len(part):
            panels[t] = part.pivot_table(index="class", columns=columns, values=values,
                                         aggfunc="first").reindex(class_labels(t, edges))
    return panels
