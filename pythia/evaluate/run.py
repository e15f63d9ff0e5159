"""evaluate_run: score every candidate (and the exact Bayes posterior on synthetic data) on
every slice, compare predicted and actual class distributions, pick champions, draw figures
and write the report files. The evaluate step of the flow calls this one function.

Work is vectorised per slice (candidate x split x eval region x target x label source);
there is no Python loop over rows.
"""
from __future__ import annotations

import inspect
import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from sklearn.metrics import log_loss

from pythia import storage
from pythia.config import GLOBAL_REGION
from pythia.evaluate import figures as figs
from pythia.evaluate.champions import DEFAULT_TOLERANCE, candidate_label, select_champions
from pythia.evaluate.metrics import (N_BINS, check_probabilities, clip_probabilities, class_distribution,
                                     gauge_scores, reliability_bins, score_predictions,
                                     total_variation_distance)
from pythia.features import (GENDER_CLASSES, LABEL_COLUMNS, TARGETS, age_to_bucket,
                             class_labels, marginals_from_joint)
from pythia.paths import join

log = logging.getLogger(__name__)

BAYES_MODEL = "bayes"
TEST_SETS = ("natural", "resampled", "natural_no_power_users")
LABEL_SOURCES = ("provider", "truth")
# test_set -> split Parquet it comes from
WEIGHT_COLUMN = "importance_weight"
SPLIT_OF_TEST_SET = {"validation": "validation", "natural": "test_natural",
                     "resampled": "test_resampled", "natural_no_power_users": "test_natural"}
REQUIRED_SPLITS = ("validation", "test_natural")
FRAME_COLUMNS = ("impression_id", "region", "is_power_user") + tuple(LABEL_COLUMNS.values())
METRIC_COLUMNS = ["model", "region", "config_id", "eval_region", "target", "test_set",
                  "label_source", "metric", "class", "value", "n"]
DIST_COLUMNS = ["model", "region", "config_id", "eval_region", "target", "test_set", "source",
                "class", "share", "n"]
MAX_MODELS_IN_BARS = 6  # per-class F1 figure: the best few candidates, or bars get unreadable


# ---------------------------------------------------------------- inputs

@dataclass
class _Frame:
    """One split's rows with label indices per source (-1 where a label is missing)."""

    split: str
    df: pd.DataFrame
    regions: np.ndarray
    power: np.ndarray
    labels: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    # importance weights that undo class resampling (1 / keep-rate of the row's class), when
    # the flow provides them: the validation day is resampled like train, but candidates are
    # compared on natural-prior probabilities, so their log-loss must be natural-weighted
    weights: np.ndarray | None = None


def _label_indices(values: pd.Series, n_classes: int, what: str) -> np.ndarray:
    """Label column -> int64 with -1 for missing; out-of-range values are a bug, so raise."""
    y = pd.to_numeric(values, errors="raise").astype("float64").to_numpy()
    out = np.where(np.isnan(y), -1, y).astype(np.int64)
    bad = (out < -1) | (out >= n_classes)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} labels outside [0, {n_classes}) "
                         f"(e.g. {out[bad][0]}); do the age edges match the ETL's?")
    return out


def _prepare_frames(test_frames: Mapping[str, pd.DataFrame], edges: Sequence[int]
                    ) -> dict[str, _Frame]:
    missing = [s for s in REQUIRED_SPLITS if test_frames.get(s) is None]
    if missing:
        raise ValueError(f"test_frames lacks split(s) {missing}; got {sorted(test_frames)}")
    frames: dict[str, _Frame] = {}
    for split, df in test_frames.items():
        if df is None or split not in SPLIT_OF_TEST_SET.values():
            continue
        absent = [c for c in FRAME_COLUMNS if c not in df.columns]
        if absent:
            raise ValueError(f"split {split!r} lacks columns {absent}")
        df = df.reset_index(drop=True)
        labels = {t: _label_indices(df[LABEL_COLUMNS[t]], len(class_labels(t, edges)),
                                    f"{split}.{LABEL_COLUMNS[t]}") for t in TARGETS}
        frames[split] = _Frame(split=split, df=df,
                               regions=df["region"].astype(str).to_numpy(dtype=object),
                               power=df["is_power_user"].fillna(False).astype(bool).to_numpy(),
                               labels={"provider": labels},
                               weights=(df[WEIGHT_COLUMN].astype("float64").to_numpy()
                                        if WEIGHT_COLUMN in df.columns else None))
    return frames


def _attach_truth(frames: Mapping[str, _Frame], truth: pd.DataFrame, edges: Sequence[int]
                  ) -> None:
    """Add label_source 'truth' from the world's true demographics (joined on user_id)."""
    need = [c for c in ("user_id", "gender", "age") if c not in truth.columns]
    if need:
        raise ValueError(f"world.truth() lacks columns {need}")
    truth = truth.drop_duplicates("user_id")
    index = pd.Index(truth["user_id"].astype(str))
    g_all = pd.Series(truth["gender"]).map({g: i for i, g in enumerate(GENDER_CLASSES)})
    g_all = g_all.fillna(-1).astype(np.int64).to_numpy()
    age = pd.to_numeric(truth["age"], errors="coerce").to_numpy(dtype=float)
    a_all = np.where(np.isnan(age), -1, age_to_bucket(np.nan_to_num(age), edges))
    if "age_bucket" in truth.columns:  # ages given only as a bucket
        by_name = truth["age_bucket"].map({b: i for i, b in enumerate(class_labels("age", edges))})
        a_all = np.where(a_all < 0, by_name.fillna(-1).to_numpy(dtype=float), a_all)
    a_all = a_all.astype(np.int64)
    n_age = len(edges)
    for frame in frames.values():
        if "user_id" not in frame.df.columns:
            raise ValueError(f"split {frame.split!r} lacks user_id, needed to join the truth")
        pos = index.get_indexer(frame.df["user_id"].astype(str))
        g = np.where(pos >= 0, g_all[pos], -1)
        a = np.where(pos >= 0, a_all[pos], -1)
        frame.labels["truth"] = {"gender": g, "age": a,
                                 "age_gender": np.where((g >= 0) & (a >= 0), g * n_age + a, -1)}


def _list_column(table: pa.Table, name: str, k: int, what: str) -> np.ndarray:
    """A list<float> column of fixed length k -> (n, k) float32 array."""
    if name not in table.column_names:
        raise ValueError(f"{what}: predictions lack column {name!r}")
    col = table.column(name).combine_chunks()
    lengths = pc.list_value_length(col)
    if lengths.null_count or pc.any(pc.not_equal(lengths, k)).as_py():
        raise ValueError(f"{what}: every {name} must hold {k} probabilities")
    return pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, k)


def read_predictions(uri: str) -> pa.Table:
    """Read one candidate's predictions: a Parquet file, or a folder of part files."""
    fs, path = storage.filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        parts = [f for f in storage.list_files(uri) if f.endswith(".parquet")]
        if not parts:
            raise FileNotFoundError(f"no Parquet files under predictions folder {uri}")
        return pa.concat_tables([pq.read_table(io.BytesIO(storage.read_bytes(f)))
                                 for f in parts])
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))


@dataclass
class _Aligned:
    """A candidate's predictions aligned to a split: frame row positions and probabilities."""

    pos: np.ndarray
    probs: dict[str, np.ndarray]
    n_eligible: int

    @property
    def n_missing(self) -> int:
        return self.n_eligible - len(self.pos)


def _align(table: pa.Table, frame: _Frame, candidate_region: str, edges: Sequence[int],
           what: str) -> _Aligned:
    """Match prediction rows to the split rows the candidate should score (by impression_id).

    Duplicate impressions (resampling with replacement) share one prediction.
    """
    eligible = (np.arange(len(frame.df)) if candidate_region == GLOBAL_REGION
                else np.flatnonzero(frame.regions == candidate_region))
    for col in ("impression_id", "split"):
        if col not in table.column_names:
            raise ValueError(f"{what}: predictions lack column {col!r}")
    split_col = table.column("split")
    if pa.types.is_dictionary(split_col.type):
        split_col = split_col.cast(pa.string())
    sub = table.filter(pc.equal(split_col, frame.split))
    ids = sub.column("impression_id").to_numpy(zero_copy_only=False).astype(str)
    _, first = np.unique(ids, return_index=True)
    index = pd.Index(ids[first])
    hit = index.get_indexer(frame.df["impression_id"].astype(str).to_numpy()[eligible])
    found = hit >= 0
    rows = first[hit[found]]
    probs = {}
    for t in TARGETS:
        k = len(class_labels(t, edges))
        probs[t] = _list_column(sub.take(pa.array(rows, type=pa.int64())), f"p_{t}", k,
                                f"{what} [{frame.split}]")
    return _Aligned(pos=eligible[found], probs=probs, n_eligible=len(eligible))


# ---------------------------------------------------------------- scoring

def _slices(frame: _Frame, pos: np.ndarray, test_set: str, eval_regions: Sequence[str]
            ) -> list[tuple[str, np.ndarray]]:
    """(eval_region, boolean mask over pos) for every slice of a test set."""
    keep = ~frame.power[pos] if test_set == "natural_no_power_users" else np.ones(len(pos), bool)
    out = []
    for r in eval_regions:
        mask = keep if r == GLOBAL_REGION else keep & (frame.regions[pos] == r)
        out.append((r, mask))
    return out


def _score_slices(ident: Mapping[str, Any], frame: _Frame, test_set: str, aligned: _Aligned,
                  probs_by_source: Mapping[str, Mapping[str, np.ndarray]],
                  eval_regions: Sequence[str], edges: Sequence[int], actual: Mapping,
                  reference: Mapping[str, Mapping[str, np.ndarray]] | None = None
                  ) -> tuple[list[pd.DataFrame], list[pd.DataFrame]]:
    """Metrics and predicted-distribution rows of one scorer on one test set, every slice.

    ``probs_by_source`` maps label source -> {target: probabilities aligned to aligned.pos};
    a model has the same probabilities for every source, the Bayes gauge does not.
    ``reference`` (label source -> {target: exact posterior for every frame row}) adds the
    posterior's log-loss and macro F1 on exactly the rows the scorer was scored on.
    """
    metrics: list[pd.DataFrame] = []
    dists: list[pd.DataFrame] = []
    is_model = ident["model"] != BAYES_MODEL
    for region, mask in _slices(frame, aligned.pos, test_set, eval_regions):
        pos = aligned.pos[mask]
        n_expected = _n_expected(frame, test_set, region, ident["region"])
        if n_expected == 0:
            continue  # the region has no rows in this split
        base = dict(ident, eval_region=region, test_set=test_set)
        if is_model:
            metrics.append(pd.DataFrame([
                dict(base, target=None, label_source=None, metric="coverage",
                     value=len(pos) / n_expected, n=n_expected),
                dict(base, target=None, label_source=None, metric="n_missing_predictions",
                     value=float(n_expected - len(pos)), n=n_expected)]))
        if not len(pos):
            continue
        for target in TARGETS:
            names = class_labels(target, edges)
            for i, (source, probs) in enumerate(probs_by_source.items()):
                p = probs[target][mask]
                shares = class_distribution(p=p)
                if is_model and i == 0 and test_set != "validation":
                    dists += [pd.DataFrame(dict(base, target=target, source=kind,
                                                **{"class": list(names)}, share=share,
                                                n=len(pos)))
                              for kind, share in shares.items()]
                if source not in frame.labels:
                    continue
                y_all = frame.labels[source][target][pos]
                valid = y_all >= 0
                scored = score_predictions(y_all[valid], p[valid], names,
                                           ordinal=(target == "age"))
                if len(scored):
                    metrics.append(scored.assign(**base, target=target, label_source=source,
                                                 n=int(valid.sum())))
                    if frame.weights is not None and is_model:
                        w = frame.weights[pos][valid]
                        metrics.append(pd.DataFrame([dict(
                            base, target=target, label_source=source,
                            metric="log_loss_natural", n=int(valid.sum()),
                            value=float(log_loss(y_all[valid], clip_probabilities(p[valid]),
                                                 labels=np.arange(len(names)),
                                                 sample_weight=w)))]))
                    if reference is not None and source in reference:
                        ref_ll, ref_f1 = gauge_scores(y_all[valid],
                                                      reference[source][target][pos][valid])
                        metrics.append(pd.DataFrame([
                            dict(base, target=target, label_source=source, metric=name,
                                 value=value, n=int(valid.sum()))
                            for name, value in (("bayes_log_loss", ref_ll),
                                                ("bayes_macro_f1", ref_f1))]))
                metrics.append(pd.DataFrame([dict(base, target=target, label_source=source,
                                                  metric="n_unlabelled",
                                                  value=float((~valid).sum()), n=len(pos))]))
                key = (test_set, region, target, source)
                if key in actual and test_set != "validation":
                    metrics.append(pd.DataFrame([
                        dict(base, target=target, label_source=source, metric=f"tvd_{kind}",
                             value=total_variation_distance(share, actual[key]), n=len(pos))
                        for kind, share in shares.items()]))
    return metrics, dists


def _n_expected(frame: _Frame, test_set: str, eval_region: str, candidate_region: str) -> int:
    """Rows of a slice that a scorer of ``candidate_region`` is expected to cover."""
    keep = ~frame.power if test_set == "natural_no_power_users" else np.ones(len(frame.df), bool)
    if eval_region != GLOBAL_REGION:
        keep = keep & (frame.regions == eval_region)
    if candidate_region != GLOBAL_REGION:
        keep = keep & (frame.regions == candidate_region)
    return int(keep.sum())


def _actual_distributions(frames: Mapping[str, _Frame], eval_regions: Sequence[str],
                          edges: Sequence[int]) -> tuple[dict, pd.DataFrame]:
    """Label distributions per (test_set, eval_region, target, source), as dict and table."""
    actual: dict = {}
    rows = []
    for test_set in TEST_SETS:
        frame = frames.get(SPLIT_OF_TEST_SET[test_set])
        if frame is None:
            continue
        all_pos = np.arange(len(frame.df))
        for region, mask in _slices(frame, all_pos, test_set, eval_regions):
            for target in TARGETS:
                names = class_labels(target, edges)
                for source, labels in frame.labels.items():
                    y = labels[target][mask]
                    y = y[y >= 0]
                    if not len(y):
                        continue
                    share = class_distribution(y=y, n_classes=len(names))["labels"]
                    actual[(test_set, region, target, source)] = share
                    rows.append(pd.DataFrame({
                        "model": "labels", "region": None, "config_id": pd.NA,
                        "eval_region": region, "target": target, "test_set": test_set,
                        "source": f"{source}_labels", "class": list(names), "share": share,
                        "n": len(y)}))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=DIST_COLUMNS)
    return actual, table


def _candidate_ident(c: Mapping[str, Any]) -> dict[str, Any]:
    for key in ("model", "region", "predictions_uri"):
        if not c.get(key):
            raise ValueError(f"candidate {dict(c)!r} lacks {key!r}")
    return {"model": str(c["model"]), "region": str(c["region"]),
            "config_id": int(c.get("config_id", 0) or 0)}


def _eval_regions_of(candidate_region: str, present: Sequence[str]) -> list[str]:
    return [GLOBAL_REGION] + list(present) if candidate_region == GLOBAL_REGION else [
        candidate_region]


def _bayes_probs(world: Any, frame: _Frame, n_age: int, label_dates: bool = False
                 ) -> dict[str, dict[str, np.ndarray]]:
    """Exact posteriors on a split, marginalised to gender and age.

    Against truth: P(AgeGender | x), conditioned on the row's user being labelled by its
    provider when the world supports it (a labelled test set is that population). Against
    provider labels: P(provider's label | x, provider). ``label_dates`` passes each row's date
    to ``label_posterior``; the synthetic World documents the dateless form as the exact one
    for its realised labels (the dated form is a population average), so it is the default.
    """
    if "label_provider" not in frame.df.columns:
        raise ValueError(f"split {frame.split!r} lacks label_provider, needed for the gauge")
    providers = frame.df["label_provider"].to_numpy(dtype=object)
    if "providers" in inspect.signature(world.posterior).parameters:
        joint_truth = np.asarray(world.posterior(frame.df, providers=providers))
    else:
        joint_truth = np.asarray(world.posterior(frame.df))
    dates = frame.df["date"].to_numpy() if label_dates and "date" in frame.df.columns else None
    joint_label = np.asarray(world.label_posterior(frame.df, providers, dates))
    out = {}
    for source, joint in (("truth", joint_truth), ("provider", joint_label)):
        if joint.shape != (len(frame.df), 2 * n_age):
            raise ValueError(f"world posterior for {source} has shape {joint.shape}, expected "
                             f"({len(frame.df)}, {2 * n_age}): age edges differ from the world's")
        joint = check_probabilities(joint, 2 * n_age, f"bayes {source} posterior")
        out[source] = marginals_from_joint(joint, n_age)
    return out


# ---------------------------------------------------------------- tables

def _pivot_metric(metrics: pd.DataFrame, keys: list[str], metric: str) -> pd.DataFrame:
    sel = metrics[(metrics["metric"] == metric) & metrics["class"].isna()]
    return sel[keys + ["value", "n"]]


def _unstack(df: pd.DataFrame, index: list[str], columns: str, values: str) -> pd.DataFrame:
    """Long -> wide on observed key combinations only (pivot_table(dropna=False) would build
    their Cartesian product; dropna=True would drop the Bayes rows whose config_id is NA)."""
    wide = df.set_index(index + [columns])[values].unstack(columns).reset_index()
    wide.columns.name = None
    return wide


def build_gauge(metrics: pd.DataFrame) -> pd.DataFrame | None:
    """Model vs exact-posterior log-loss and macro F1, on the rows each model was scored on
    (None without a world)."""
    names = {"log_loss": "logloss", "macro_f1": "macro_f1", "bayes_log_loss": "bayes_logloss",
             "bayes_macro_f1": "bayes_macro_f1"}
    if not (metrics["metric"] == "bayes_log_loss").any():
        return None
    keys = ["model", "region", "config_id", "eval_region", "target", "test_set", "label_source"]
    sel = metrics[metrics["metric"].isin(list(names)) & metrics["class"].isna()
                  & metrics["test_set"].isin(TEST_SETS) & (metrics["model"] != BAYES_MODEL)]
    out = _unstack(sel.assign(metric=sel["metric"].map(names)), keys, "metric", "value")
    out = out.dropna(subset=["bayes_logloss"])
    out["ratio"] = out["logloss"] / out["bayes_logloss"]
    cols = keys + ["logloss", "bayes_logloss", "ratio", "macro_f1", "bayes_macro_f1"]
    return out[cols].sort_values(keys).reset_index(drop=True)


def build_headline(metrics: pd.DataFrame, champions: pd.DataFrame,
                   gauge: pd.DataFrame | None) -> pd.DataFrame:
    """Per eval region: every scorer's log-loss and macro F1 per target on the natural test
    day (provider labels), its validation log-loss, the Bayes ratio and the champion flag."""
    ident = ["eval_region", "model", "region", "config_id"]
    nat = metrics[(metrics["test_set"] == "natural") & (metrics["label_source"] == "provider")
                  & metrics["class"].isna() & metrics["metric"].isin(["log_loss", "macro_f1"])]
    if nat.empty:
        return pd.DataFrame(columns=ident)
    nat = nat.assign(col=np.where(nat["metric"] == "log_loss", "logloss_", "macro_f1_")
                     + nat["target"].astype(str))
    head = _unstack(nat, ident, "col", "value")
    n = nat[nat["target"] == "age_gender"].groupby(ident, dropna=False)["n"].max()
    head = head.merge(n.rename("n").reset_index(), on=ident, how="left")
    val_rows = metrics[(metrics["test_set"] == "validation")
                       & (metrics["label_source"] == "provider")
                       & (metrics["target"] == "age_gender")]
    # the champion criterion: natural-weighted validation log-loss when available
    val_metric = ("log_loss_natural" if (val_rows["metric"] == "log_loss_natural").any()
                  else "log_loss")
    val = _pivot_metric(val_rows, ident, val_metric)
    head = head.merge(val.drop(columns="n").rename(columns={"value": "val_logloss"}),
                      on=ident, how="left")
    if gauge is not None and not gauge.empty:
        g = gauge[(gauge["test_set"] == "natural") & (gauge["label_source"] == "provider")]
        g = _unstack(g.assign(col="bayes_ratio_" + g["target"]), ident, "col", "ratio")
        head = head.merge(g, on=ident, how="left")
    champ = champions[champions["blessed"].astype(bool)][
        ["region", "model", "candidate_region", "config_id"]].rename(
        columns={"region": "eval_region", "candidate_region": "region"})
    champ = champ.assign(champion=True, config_id=champ["config_id"].astype("Int64"))
    head = head.merge(champ, on=ident, how="left")
    head["champion"] = head["champion"].astype("boolean").fillna(False).astype(bool)
    head = head.rename(columns={"region": "candidate_region"})
    ordered = ["eval_region", "model", "candidate_region", "config_id", "champion",
               "val_logloss"] + [f"{m}_{t}" for t in ("age_gender", "gender", "age")
                                 for m in ("logloss", "macro_f1")]
    ordered += sorted(c for c in head.columns if c.startswith("bayes_ratio_")) + ["n"]
    for c in ordered:
        if c not in head.columns:
            head[c] = np.nan
    head = head[ordered]
    head["_bayes"] = head["model"] == BAYES_MODEL
    head = head.sort_values(["eval_region", "champion", "_bayes", "val_logloss"],
                            ascending=[True, False, True, True], na_position="last")
    return head.drop(columns="_bayes").reset_index(drop=True)


# ---------------------------------------------------------------- figures

def _winner_label(champ: pd.Series) -> str:
    name = candidate_label(champ["model"], champ["candidate_region"], champ["config_id"])
    return name if champ["blessed"] else f"{name} (best, NOT blessed)"


def _region_figures(region: str, champ: pd.Series, metrics: pd.DataFrame,
                    dists: pd.DataFrame, winner: _Aligned | None, frame: _Frame,
                    bayes: Mapping[str, Mapping[str, np.ndarray]] | None,
                    edges: Sequence[int]) -> dict[str, bytes]:
    """The four figures of one eval region (natural test day)."""
    out: dict[str, bytes] = {}
    sel = metrics[(metrics["eval_region"] == region) & (metrics["test_set"] == "natural")
                  & (metrics["label_source"] == "provider")]
    val = metrics[(metrics["eval_region"] == region) & (metrics["test_set"] == "validation")
                  & (metrics["metric"] == "log_loss") & (metrics["target"] == "age_gender")
                  & (metrics["label_source"] == "provider")]
    order = val.sort_values("value")
    keep = [candidate_label(r.model, r.region, r.config_id)
            for r in order.itertuples()][:MAX_MODELS_IN_BARS]
    f1 = sel[(sel["metric"] == "f1") & sel["class"].notna()].copy()
    f1["who"] = [BAYES_MODEL if m == BAYES_MODEL else candidate_label(m, r, c)
                 for m, r, c in zip(f1["model"], f1["region"], f1["config_id"])]
    f1 = f1[f1["who"].isin(keep + [BAYES_MODEL])]
    panels = _class_panels(f1, "who", "value", edges)
    if panels:
        out[f"per_class_f1__{region}"] = figs.plot_bar_panels(
            panels, f"{region}: per-class F1 on the natural test day (provider labels)", "F1")
    if winner is None:
        return out
    mask = dict(_slices(frame, winner.pos, "natural", [region]))[region]
    pos = winner.pos[mask]
    title = _winner_label(champ)
    conf_panels, rel_panels = {}, {}
    for t in TARGETS:
        names = class_labels(t, edges)
        p = winner.probs[t][mask].astype(np.float64)
        curves = {}
        for source in ("provider", "truth"):
            if source not in frame.labels:
                continue
            y = frame.labels[source][t][pos]
            valid = y >= 0
            if not valid.any():
                continue
            if source == "provider":
                conf_panels[t] = (y[valid], p[valid].argmax(axis=1), names)
            curves[f"model vs {source}"] = reliability_bins(y[valid], p[valid], N_BINS)
            if bayes is not None and source in bayes:
                pb = bayes[source][t][pos]
                curves[f"bayes vs {source}"] = reliability_bins(y[valid], pb[valid], N_BINS)
        if curves:
            rel_panels[t] = curves
    if conf_panels:
        out[f"confusion__{region}"] = figs.plot_confusion(
            conf_panels, f"{region}: {title}, normalised confusion (natural test, provider labels)")
    if rel_panels:
        out[f"reliability__{region}"] = figs.plot_reliability(
            rel_panels, f"{region}: {title}, reliability (natural test day)")
    d = dists[(dists["eval_region"] == region) & (dists["test_set"] == "natural")]
    is_winner = ((d["model"] == champ["model"]) & (d["region"] == champ["candidate_region"])
                 & (d["config_id"].fillna(-1) == int(champ["config_id"])))
    d = d[is_winner | (d["model"] == "labels")]
    bars = _class_panels(d, "source", "share", edges)
    if bars:
        out[f"distribution__{region}"] = figs.plot_bar_panels(
            bars, f"{region}: predicted vs actual class shares, {title} (natural test day)",
            "share of impressions")
    return out


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


# ---------------------------------------------------------------- entry point

def evaluate_run(candidates: Sequence[Mapping[str, Any]],
                 test_frames: Mapping[str, pd.DataFrame], world: Any,
                 previous: Callable[[str, pd.DataFrame], Mapping[str, np.ndarray] | None] | None,
                 age_edges: Sequence[int], reports_uri: str, *,
                 previous_id: str | None = None, tolerance: float = DEFAULT_TOLERANCE,
                 make_figures: bool = True) -> dict[str, Any]:
    """Evaluate every candidate, pick champions, draw figures and write the report files.

    Args:
        candidates: train-step records {model, region, config_id, predictions_uri, model_dir,
            val_logloss: {target: float}, …}.
        test_frames: split name ('validation', 'test_natural', 'test_resampled') -> the split
            Parquet rows as pandas.
        world: the synthetic World (truth + Bayes gauge) or None on real data.
        previous: scores rows with the previous run's champion of a region
            (``previous(region, rows) -> {target: (n, K) probabilities}`` or None when it has no
            champion there); None when there is no previous run. Its ``pathspec`` attribute,
            or ``previous_id``, names it in the champion reasons.
        age_edges: the run's age bucket edges.
        reports_uri: folder (local or s3://) for metrics/distributions/champions files and
            ``figures/*.png``.
        previous_id: name of the previous run for the reason text.
        tolerance: relative test log-loss regression against the previous champion allowed.
        make_figures: draw figures (the tables are the same either way).

    Returns:
        {'metrics', 'distributions', 'gauge' (None without a world), 'champions', 'headline',
        'figures' ({name: png bytes}), 'report_files' ([uris])}.
    """
    if not candidates:
        raise ValueError("no candidates to evaluate: did every train task fail?")
    edges = tuple(int(e) for e in age_edges)
    n_age = len(edges)
    frames = _prepare_frames(test_frames, edges)
    if world is not None:
        _attach_truth(frames, world.truth(), edges)
    present = sorted(set().union(*(set(f.regions) for f in frames.values())))
    eval_regions = [GLOBAL_REGION] + present
    actual, actual_table = _actual_distributions(frames, eval_regions, edges)
    idents = [_candidate_ident(c) for c in candidates]
    keys = [(i["model"], i["region"], i["config_id"]) for i in idents]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate candidates (model, region, config_id): {keys}")
    by_key = dict(zip(keys, candidates))

    # exact posteriors first: every model's slices are gauged on their own rows
    gauge_note = None
    bayes_probs: dict[str, dict] = {}
    if world is not None:
        try:
            for split in sorted({SPLIT_OF_TEST_SET[t] for t in TEST_SETS} & set(frames)):
                bayes_probs[split] = _bayes_probs(world, frames[split], n_age)
        except ValueError as exc:  # e.g. custom age edges on a world built with others
            gauge_note = f"Bayes gauge skipped: {exc}"
            log.warning(gauge_note)
            bayes_probs = {}

    metric_parts: list[pd.DataFrame] = []
    dist_parts: list[pd.DataFrame] = [actual_table]
    for ident, cand in zip(idents, candidates):
        what = candidate_label(ident["model"], ident["region"], ident["config_id"])
        table = read_predictions(cand["predictions_uri"])
        for test_set in ("validation",) + TEST_SETS:
            frame = frames.get(SPLIT_OF_TEST_SET[test_set])
            if frame is None:
                continue
            aligned = _align(table, frame, ident["region"], edges, what)
            src = {s: aligned.probs for s in frame.labels}
            m, d = _score_slices(ident, frame, test_set, aligned, src,
                                 _eval_regions_of(ident["region"], present), edges, actual,
                                 bayes_probs.get(frame.split))
            metric_parts += m
            dist_parts += d
        reported = (cand.get("val_logloss") or {}).get("age_gender")
        if reported is not None:
            metric_parts.append(pd.DataFrame([dict(
                ident, eval_region=ident["region"], target="age_gender", test_set="validation",
                label_source="provider", metric="reported_val_logloss", value=float(reported),
                n=np.nan)]))
        del table

    ident = {"model": BAYES_MODEL, "region": GLOBAL_REGION, "config_id": pd.NA}
    for test_set in TEST_SETS:  # the posterior itself on every slice, for tables and figures
        frame = frames.get(SPLIT_OF_TEST_SET[test_set])
        if frame is None or frame.split not in bayes_probs:
            continue
        all_rows = _Aligned(np.arange(len(frame.df)), {}, len(frame.df))
        metric_parts += _score_slices(ident, frame, test_set, all_rows, bayes_probs[frame.split],
                                      eval_regions, edges, actual)[0]

    metrics = pd.concat([p for p in metric_parts if len(p)], ignore_index=True)
    metrics = metrics[METRIC_COLUMNS].astype({"config_id": "Int64", "value": float})
    distributions = _with_tvd(pd.concat([p for p in dist_parts if len(p)], ignore_index=True),
                              metrics)
    gauge = build_gauge(metrics)

    # ---- champions
    winners: dict[tuple, _Aligned] = {}

    def winner_on(key: tuple, split: str) -> _Aligned:
        if (key, split) not in winners:
            cand = by_key[key]
            winners[(key, split)] = _align(read_predictions(cand["predictions_uri"]),
                                           frames[split], key[1], edges,
                                           candidate_label(*key))
        return winners[(key, split)]

    scores = _champion_scores(metrics, idents, candidates, present)
    prev_name = previous_id or getattr(previous, "pathspec", None) or "previous run"

    def previous_check(region: str, best: Mapping) -> tuple:
        key = (best["model"], best["candidate_region"], int(best["config_id"]))
        frame = frames["test_natural"]
        al = winner_on(key, "test_natural")
        mask = dict(_slices(frame, al.pos, "natural", [region]))[region]
        pos = al.pos[mask]
        y = frame.labels["provider"]["age_gender"][pos]
        try:
            prev = previous(region, frame.df.iloc[pos].reset_index(drop=True))
        except Exception as exc:  # a broken previous bundle must not block this run
            log.warning("previous champion for %s could not score: %s", region, exc)
            return None, None, 0, f"{prev_name} could not score these rows ({exc})"
        if prev is None or prev.get("age_gender") is None:
            return None, None, 0, f"{prev_name} has no champion for {region}"
        k = 2 * n_age
        pp = check_probabilities(prev["age_gender"], k, f"{prev_name} p_age_gender ({region})")
        if len(pp) != len(pos):
            raise ValueError(f"{prev_name} returned {len(pp)} rows for {len(pos)} in {region}")
        valid = y >= 0
        if not valid.any():
            return None, None, 0, f"no labelled test rows in {region} to compare with"
        cur = check_probabilities(al.probs["age_gender"][mask], k)
        labels = np.arange(k)
        return (float(log_loss(y[valid], clip_probabilities(pp[valid]), labels=labels)),
                float(log_loss(y[valid], clip_probabilities(cur[valid]), labels=labels)),
                int(valid.sum()),
                f"previous = {prev_name}")

    champions = select_champions(scores, eval_regions,
                                 previous_check if previous is not None else None, tolerance)
    champions["config_id"] = champions["config_id"].astype("Int64")
    headline = build_headline(metrics, champions, gauge)

    figures: dict[str, bytes] = {}
    if make_figures:
        for champ in champions.itertuples(index=False):
            champ = pd.Series(champ._asdict())
            winner = None
            if pd.notna(champ["model"]):
                key = (champ["model"], champ["candidate_region"], int(champ["config_id"]))
                winner = winner_on(key, "test_natural")
            figures.update(_region_figures(
                champ["region"], champ, metrics, distributions, winner, frames["test_natural"],
                bayes_probs.get("test_natural"), edges))
    results = {"metrics": metrics, "distributions": distributions, "gauge": gauge,
               "champions": champions, "headline": headline, "figures": figures,
               "gauge_note": gauge_note}
    results["report_files"] = write_reports(results, reports_uri)
    return results


def _with_tvd(dists: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Add tvd_provider / tvd_truth to the predicted-distribution rows."""
    tv = metrics[metrics["metric"].str.startswith("tvd_")]
    if tv.empty:
        return dists.astype({"config_id": "Int64"})
    tv = tv.assign(source=tv["metric"].str.slice(4),
                   col="tvd_" + tv["label_source"].astype(str))
    wide = _unstack(tv, ["model", "region", "config_id", "eval_region", "target", "test_set",
                         "source"], "col", "value")
    dists = dists.astype({"config_id": "Int64"})
    return dists.merge(wide, on=["model", "region", "config_id", "eval_region", "target",
                                 "test_set", "source"], how="left")


def _champion_scores(metrics: pd.DataFrame, idents: Sequence[Mapping],
                     candidates: Sequence[Mapping], present: Sequence[str]) -> pd.DataFrame:
    """Per (candidate, region it can score): validation log-loss and eligibility."""
    rows = []
    for ident, cand in zip(idents, candidates):
        mine = metrics[(metrics["model"] == ident["model"])
                       & (metrics["region"] == ident["region"])
                       & (metrics["config_id"] == ident["config_id"]).fillna(False)]
        for region in _eval_regions_of(ident["region"], present):
            here = mine[mine["eval_region"] == region]

            def pick(test_set: str, metric: str) -> float:
                v = here[(here["test_set"] == test_set) & (here["metric"] == metric)
                         & ((here["label_source"] == "provider") | here["label_source"].isna())
                         & (here["target"].isna() | (here["target"] == "age_gender"))
                         & here["class"].isna()]["value"]
                return float(v.iloc[0]) if len(v) else np.nan

            # natural-weighted when the flow gave importance weights (see _Frame.weights)
            val_ll = pick("validation", "log_loss_natural")
            if not np.isfinite(val_ll):
                val_ll = pick("validation", "log_loss")
            val_cov = pick("validation", "coverage")
            test_cov = pick("natural", "coverage")
            reason = None
            if not np.isfinite(val_ll) and val_cov == 0 and region == ident["region"]:
                # no validation predictions at all: fall back to the train step's own figure
                val_ll = pick("validation", "reported_val_logloss")
                val_cov = 1.0 if np.isfinite(val_ll) else val_cov
            if np.isfinite(val_cov) and val_cov < 1:
                reason = f"predictions cover {val_cov:.1%} of the validation rows"
            elif np.isfinite(test_cov) and test_cov < 1:
                reason = f"predictions cover {test_cov:.1%} of the natural test rows"
            elif not np.isfinite(val_ll):
                reason = "no validation log-loss (no labelled validation rows?)"
            rows.append({"eval_region": region, "model": ident["model"],
                         "candidate_region": ident["region"], "config_id": ident["config_id"],
                         "model_dir": cand.get("model_dir"), "val_logloss": val_ll,
                         "eligible": reason is None, "ineligible_reason": reason})
    return pd.DataFrame(rows, columns=["eval_region", "model", "candidate_region", "config_id",
                                       "model_dir", "val_logloss", "eligible",
                                       "ineligible_reason"])


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def write_reports(results: Mapping[str, Any], reports_uri: str) -> list[str]:
    """Write tables (Parquet), metrics.json and figures/*.png under ``reports_uri``."""
    written = []
    for name in ("metrics", "distributions", "gauge", "champions", "headline"):
        df = results.get(name)
        if df is None:
            continue
        uri = join(reports_uri, f"{name}.parquet")
        storage.write_bytes_atomic(uri, _parquet_bytes(df))
        written.append(uri)
    # pandas writes the records (NaN/NA -> null) far faster than json.dumps over dicts
    parts = [f'"{name}": {results[name].to_json(orient="records")}'
             for name in ("metrics", "champions", "headline", "gauge")
             if results.get(name) is not None]
    parts.append(f'"gauge_note": {json.dumps(results.get("gauge_note"))}')
    uri = join(reports_uri, "metrics.json")
    storage.write_bytes_atomic(uri, ("{" + ", ".join(parts) + "}").encode())
    written.append(uri)
    for name, png in sorted(results.get("figures", {}).items()):
        uri = join(reports_uri, "figures", f"{name}.png")
        storage.write_bytes_atomic(uri, png)
        written.append(uri)
    return written
