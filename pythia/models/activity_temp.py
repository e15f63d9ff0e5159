"""A temperature per bin of the user's activity today (issue 15): AgeGender's logits are
divided by the temperature of the row's bin of ``user_impressions_today``, not by one.

Why: measured before it was built (docs/new-users.md, session 35), the models are a little
under-confident on light users and far over-confident on heavy ones (the default run's MLP
multipliers, fitted on validation: 0.875, 0.915, 1.018, 1.222, 2.175 from 0-2 to 100+
impressions), and one refitted temperature gains nothing. One temperature per bin, fitted on
the run's validation rows, took that MLP from 1.041 to 1.033 x the population posterior on
users no model saw, and past the class prior on power user-days.

Where: it is fitted on validation beside the head's global temperature (``Model.fit``), for
AgeGender only (gender and age are its marginals), and applied wherever a model's
probabilities are made: ``Model.predict_proba``, the bundle's NumPy scorer
(``scoring.runtime.FusedMLP``) and the ONNX graph (``scoring.onnx_graph``), which read the
export entry ``EXPORT_KEY``.

The bins are decided on the *normalised* column (the model input every one of those paths
has), with edges at half counts (``normalize(c - 0.5)``): a whole count is never near an edge,
so float32 and float64 paths put a row in the same bin. A missing count is normalised to the
mean (``NumericStats.normalize``) and takes that value's bin. A bin with fewer than
``MIN_BIN_ROWS`` validation rows keeps the head's global temperature, as does a bin whose own
fit would not beat it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from pythia import features
from pythia.config import TrainConfig
from pythia.config_parse import check_bins
from pythia.models import priors as pr
from pythia.models.export import ACTIVITY_TEMPERATURE
from pythia.models.links import link_probabilities

FEATURE = features.USER_IMPRESSIONS_TODAY
JOINT = "age_gender"
# A bin starts at each count: 0-2, 3-9, 10-29, 30-99, 100+ impressions today (the bins the
# session-35 measurement used); () = one temperature, as before.
DEFAULT_BINS = TrainConfig.activity_bins
# Fewer validation rows than this in a bin: the global temperature (one scalar per bin).
MIN_BIN_ROWS = 100
# The optional entry of an MLP's ``numpy_layers`` export: {"feature", "edges", "temperature"}.
EXPORT_KEY = ACTIVITY_TEMPERATURE


def normalized_edges(encoders: features.Encoders, counts: Sequence[int]) -> tuple[float, ...]:
    """The bins' edges on the normalised column: ``normalize(c - 0.5)`` per count."""
    stats = encoders.numeric[FEATURE]
    return tuple(float(e) for e in stats.normalize(np.asarray(counts, np.float64) - 0.5))


def bin_of(edges: Sequence[float], x: Any) -> np.ndarray:
    """Per row, its bin: how many edges its normalised value reaches (``x >= edge``)."""
    return np.searchsorted(np.asarray(edges, np.float64), np.asarray(x, np.float64),
                           side="right")


def scaled_probabilities(logits: np.ndarray, temperature: np.ndarray, link: str) -> np.ndarray:
    """``link(logits / T)`` with one T per row."""
    t = np.asarray(temperature, np.float64).reshape(-1, 1)
    return link_probabilities(np.asarray(logits, np.float64) / t, link)


@dataclass(frozen=True)
class ActivityTemperature:
    """The fitted temperatures: bin k holds counts in ``[counts[k-1], counts[k])``."""

    counts: tuple[int, ...]
    edges: tuple[float, ...]  # normalized_edges(counts)
    temperature: tuple[float, ...]  # per bin: len(counts) + 1
    rows: tuple[int, ...]  # validation rows per bin the fit saw
    fitted: tuple[bool, ...]  # False: the global temperature (too few rows, or no gain)

    def per_row(self, x: Any) -> np.ndarray:
        """Each row's temperature, from its normalised activity."""
        return np.asarray(self.temperature, np.float64)[bin_of(self.edges, x)]

    def to_json(self) -> dict[str, list]:
        return {"counts": list(self.counts), "edges": list(self.edges),
                "temperature": list(self.temperature), "rows": list(self.rows),
                "fitted": list(self.fitted)}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "ActivityTemperature":
        return cls(tuple(int(c) for c in doc["counts"]), tuple(float(e) for e in doc["edges"]),
                   tuple(float(t) for t in doc["temperature"]),
                   tuple(int(n) for n in doc["rows"]), tuple(bool(f) for f in doc["fitted"]))

    def export(self) -> dict[str, Any]:
        """The ``EXPORT_KEY`` entry: what a scorer needs to put a row in its bin."""
        return {"feature": FEATURE, "edges": list(self.edges),
                "temperature": list(self.temperature)}

    def describe(self) -> str:
        """e.g. '0-2: 1.31, 3-9: 1.25, ..., 100+: 0.52 (global 1.14, 88 rows)'."""
        starts = (0,) + self.counts
        names = [f"{a}-{b - 1}" for a, b in zip(starts, self.counts)] + [f"{starts[-1]}+"]
        return ", ".join(f"{n}: {t:.3f}" + ("" if f else f" (global, {r} rows)")
                         for n, t, r, f in zip(names, self.temperature, self.rows, self.fitted))


def fit(logits: np.ndarray, y: np.ndarray, activity: Any, encoders: features.Encoders,
        counts: Sequence[int], global_temperature: float, link: str = "softmax",
        min_rows: int | None = None) -> ActivityTemperature | None:
    """Per bin of ``activity`` (normalised), the temperature minimising the bin's validation
    log-loss of ``link(logits / T)``; None without bins, without the activity column, or when
    no bin has ``min_rows`` (default ``MIN_BIN_ROWS``) rows and a gain over the global one."""
    counts = check_bins(counts)
    min_rows = MIN_BIN_ROWS if min_rows is None else int(min_rows)
    if not counts or activity is None:
        return None
    edges = normalized_edges(encoders, counts)
    bins = bin_of(edges, activity)
    y = np.asarray(y, np.int64)
    temps, rows, fitted = [], [], []
    for k in range(len(counts) + 1):
        mask = bins == k
        rows.append(int(mask.sum()))
        t = float(global_temperature)
        if rows[-1] >= min_rows:
            z, yk = np.asarray(logits)[mask], y[mask]
            own = pr.fit_temperature(z, yk, link)

            def loss(temp: float) -> float:
                return pr.mean_log_loss(pr.apply_temperature(z, temp, link), yk)
            t = own if loss(own) < loss(t) else t
        temps.append(t)
        fitted.append(t != float(global_temperature))
    if not any(fitted):  # the global temperature everywhere: nothing to add
        return None
    return ActivityTemperature(counts, edges, tuple(temps), tuple(rows), tuple(fitted))


def to_json(fitted: ActivityTemperature | None) -> dict[str, list] | None:
    """What a model's meta and fit summary record (None: one temperature)."""
    return fitted.to_json() if fitted is not None else None


def from_json(doc: Mapping[str, Any] | None) -> ActivityTemperature | None:
    """``to_json``'s inverse (a model saved before the bins had none)."""
    return ActivityTemperature.from_json(doc) if doc else None


def with_activity(y: dict[str, np.ndarray], data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Validation labels ``y`` with the rows' normalised activity under ``FEATURE`` (what
    ``fit`` bins by), when ``data`` has the column."""
    if FEATURE in data:
        y[FEATURE] = np.asarray(data[FEATURE], np.float64)
    return y
