"""Evaluation I/O at the edges: the split rows and candidates' predictions in, the synthetic
world when the source has one, the report files out; and split rows as bid-time requests for
scoring them with a previous run's bundle.
"""
from __future__ import annotations

import io
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pythia import storage
from pythia.evaluate.frames import EVAL_SPLITS, JOINT_TARGET, WEIGHT_COLUMN
from pythia.evaluate.slices import (Aligned, EvalData, align, candidate_ident, candidate_key,
                                    candidate_label)
from pythia.features import REQUEST_COLUMNS, TS, TS_SECONDS, VALIDATION, Y_AGE_GENDER
from pythia.paths import join

# a bid-time request: the contract columns the features read (ts as epoch seconds), and the id
REPORT_TABLES = ("metrics", "distributions", "gauge", "champions", "headline")
JSON_TABLES = ("metrics", "champions", "headline", "gauge")


# ---------------------------------------------------------------- inputs

def importance_weights(y_age_gender: Any, split_manifest: Mapping[str, Any], split: str,
                       n_age: int) -> np.ndarray:
    """1 / keep-rate of each row's resampling class: weights that turn a resampled split's
    averages into natural-distribution averages (Horvitz-Thompson).

    Args:
        y_age_gender: the rows' AgeGender label indices.
        split_manifest: the ETL's manifest; ``rates[split][class]`` are the keep-rates of the
            ``resample_target`` classes (absent: 1, the split was not resampled).
        split: the split the rows come from.
        n_age: number of age buckets.
    """
    from pythia.etl.splits import target_class
    rates = split_manifest.get("rates", {}).get(split, {})
    target = split_manifest.get("resample_target", JOINT_TARGET)
    by_class = np.array([float(rates.get(str(target_class(c, target, n_age)), 1.0))
                         for c in range(2 * n_age)])
    weight = np.divide(1.0, by_class, out=np.zeros_like(by_class), where=by_class > 0)
    y = pd.to_numeric(pd.Series(y_age_gender), errors="raise").astype("float64").to_numpy()
    labelled = y >= 0  # NaN is not: unlabelled rows are never scored, their weight unused
    if (y[labelled] >= len(weight)).any():
        raise ValueError(f"{split}: AgeGender labels outside [0, {len(weight)}) (e.g. "
                         f"{int(y[y >= len(weight)][0])}); do the age edges match the ETL's?")
    out = np.ones(len(y))
    out[labelled] = weight[y[labelled].astype(np.int64)]
    return out


def read_split_frames(split_manifest: Mapping[str, Any], age_edges: Sequence[int]
                      ) -> dict[str, pd.DataFrame]:
    """The evaluated splits' rows (validation, natural and resampled test day) as pandas; the
    validation rows carry importance weights that undo its class resampling."""
    paths = split_manifest["paths"]
    frames = {split: storage.read_frame(paths[split]) for split in EVAL_SPLITS if split in paths}
    if VALIDATION in frames:
        frames[VALIDATION][WEIGHT_COLUMN] = importance_weights(
            frames[VALIDATION][Y_AGE_GENDER].to_numpy(), split_manifest, VALIDATION,
            len(age_edges))
    return frames


def read_world(source_path: str | None) -> Any:
    """The synthetic world behind a source (it carries its truth), or None for real data."""
    if not source_path or not storage.exists(join(source_path, "truth")):
        return None
    from pythia.synth import load_world
    return load_world(source_path)


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


class AlignedPredictions:
    """Candidates' predictions aligned to split rows, read once per (candidate, split) when
    first asked for (the champion check and the figures need only the winners')."""

    def __init__(self, candidates: Sequence[Mapping[str, Any]], data: EvalData) -> None:
        self._by_key = {candidate_key(candidate_ident(c)): c for c in candidates}
        self._data = data
        self._cache: dict[tuple, Aligned] = {}

    def __call__(self, key: tuple, split: str) -> Aligned:
        """``key`` is (model, candidate region, config id)."""
        if (key, split) not in self._cache:
            table = read_predictions(self._by_key[key]["predictions_uri"])
            self._cache[(key, split)] = align(table, self._data.frames[split], key[1],
                                              self._data.edges, candidate_label(*key))
        return self._cache[(key, split)]


# ---------------------------------------------------------------- the previous bundle

def rows_to_requests(rows: pd.DataFrame) -> list[dict]:
    """Split-Parquet rows as bid-time requests (contract columns, ts in epoch seconds)."""
    cols = [c for c in REQUEST_COLUMNS if c in rows.columns]
    frame = rows[cols].astype(object).where(rows[cols].notna(), None)
    frame[TS] = rows[TS_SECONDS].astype("int64").to_numpy()
    return frame.to_dict("records")


def bundle_scorer(bundle_uri: str) -> Callable[[str, pd.DataFrame], dict[str, np.ndarray]]:
    """A ``previous(region, rows)`` for ``evaluate.run`` that scores split rows with a bid-time
    bundle (the bundle routes each row to its region's model itself)."""
    from pythia.scoring import Scorer
    scorer = Scorer.load(bundle_uri)

    def previous(region: str, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return scorer.score_arrays(rows_to_requests(rows))
    return previous


# ---------------------------------------------------------------- outputs

def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def write_reports(results: Mapping[str, Any], reports_uri: str) -> list[str]:
    """Write tables (Parquet), metrics.json and figures/*.png under ``reports_uri``; returns
    the written URIs."""
    written = []
    for name in REPORT_TABLES:
        df = results.get(name)
        if df is None:
            continue
        uri = join(reports_uri, f"{name}.parquet")
        storage.write_bytes_atomic(uri, _parquet_bytes(df))
        written.append(uri)
    # pandas writes the records (NaN/NA -> null) far faster than json.dumps over dicts
    parts = [f'"{name}": {results[name].to_json(orient="records")}'
             for name in JSON_TABLES if results.get(name) is not None]
    parts.append(f'"gauge_note": {json.dumps(results.get("gauge_note"))}')
    uri = join(reports_uri, "metrics.json")
    storage.write_bytes_atomic(uri, ("{" + ", ".join(parts) + "}").encode())
    written.append(uri)
    for name, png in sorted(results.get("figures", {}).items()):
        uri = join(reports_uri, "figures", f"{name}.png")
        storage.write_bytes_atomic(uri, png)
        written.append(uri)
    return written
