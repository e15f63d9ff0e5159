"""Bounded training samples for the models that fit on numpy arrays (TabNet, gbdt, logreg, the
class prior): at most ``max_rows`` rows of a split, class-stratified and seeded, read in two
streaming passes so that memory never holds more than about twice the cap.

The rule (``SAMPLE_RULE``): when the split (or its regions) has more rows than the cap, each
AgeGender class c keeps q_c rows, q_c proportional to its n_c rows (largest remainders; a class
with rows keeps at least one, taken from the largest quota), so the class shares — and the
training priors the prior correction divides by — stay those of the split to within a row. The
q_c rows kept are those with the smallest 64-bit SipHash of their impression id keyed by the
seed (ties in shard order): the same rows whatever the shard read order, a different uniform
draw for another seed. Copies of a resampled impression share their hash.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from pythia import features
from pythia.tfrecords import encode

STRATUM = features.LABEL_COLUMNS["age_gender"]  # the stratum: the joint AgeGender label
SAMPLE_RULE = ("at most max_rows rows per split: per AgeGender class a quota proportional to "
               "its rows (largest remainders, >= 1 row per class present), filled with the rows "
               "of smallest SipHash(impression_id, key=seed)")
ALL_ROWS_RULE = "all rows (the split is within max_rows)"
_ORDER = "__order"
_KEY = "__key"


def sample_quotas(counts: Mapping[int, int], max_rows: int) -> dict[int, int]:
    """Rows to keep per class: all of them within the cap, else proportional quotas summing
    to ``max_rows`` (largest remainders, ties to the smaller class id), every class present
    keeping at least one row.

    Raises:
        ValueError: ``max_rows`` < 1, or fewer than the number of classes present.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    present = {int(c): int(n) for c, n in sorted(counts.items()) if int(n) > 0}
    total = sum(present.values())
    if total <= max_rows:
        return dict(present)
    if len(present) > max_rows:
        raise ValueError(f"max_rows={max_rows} cannot keep a row of each of the "
                         f"{len(present)} classes present")
    classes = np.array(list(present), dtype=np.int64)
    n = np.array(list(present.values()), dtype=np.int64)
    exact = n * max_rows / total
    quota = np.floor(exact).astype(np.int64)
    short = max_rows - int(quota.sum())
    by_remainder = np.lexsort((classes, -(exact - quota)))  # largest remainder, then class id
    quota[by_remainder[:short]] += 1
    for i in np.flatnonzero(quota == 0):  # every class keeps a row, from the largest quota
        quota[int(np.argmax(quota))] -= 1
        quota[i] = 1
    return {int(c): int(q) for c, q in zip(classes, quota)}


def sample_keys(impression_ids: np.ndarray, seed: int) -> np.ndarray:
    """Each id's 64-bit SipHash keyed by ``seed`` (uint64): fixed per (id, seed) on every
    machine, independent across seeds."""
    key = f"{int(seed) % 10**16:016d}"
    return pd.util.hash_array(np.asarray(impression_ids, dtype=object), hash_key=key,
                              categorize=False)


def _prune(pool: dict[str, np.ndarray], quotas: Mapping[int, int],
           thresholds: np.ndarray) -> dict[str, np.ndarray]:
    """Keep each class's ``quota`` rows of smallest (key, arrival); once a class is full, a
    later row enters only with a smaller key than its largest kept (a tie loses: it arrived
    later), so ``thresholds`` drops the others before they are buffered."""
    y, key, order = pool[STRATUM], pool[_KEY], pool[_ORDER]
    keep = []
    for c, q in quotas.items():
        rows = np.flatnonzero(y == c)
        rows = rows[np.lexsort((order[rows], key[rows]))][:q]
        keep.append(rows)
        if len(rows) == q:
            thresholds[c] = key[rows[-1]]
    idx = np.sort(np.concatenate(keep))
    return {k: v[idx] for k, v in pool.items()}


def sample_chunks(chunks: Any, quotas: Mapping[int, int], seed: int,
                  buffer_rows: int | None = None) -> dict[str, np.ndarray]:
    """The rows ``quotas`` selects (see the module rule) from numpy-dict ``chunks`` of one
    split, in arrival order. Memory: about ``buffer_rows`` (default 2 x the quotas' sum) plus a
    chunk (each prune copies the buffer once)."""
    cap = sum(quotas.values())
    buffer_rows = buffer_rows or 2 * max(cap, 1)
    n_classes = max(quotas, default=-1) + 1
    thresholds = np.full(max(n_classes, 1), np.iinfo(np.uint64).max, dtype=np.uint64)
    parts: list[dict[str, np.ndarray]] = []
    pending, seen = 0, 0
    for chunk in chunks:
        n = len(chunk[encode.ID_COLUMN])
        y = np.asarray(chunk[STRATUM], dtype=np.int64)
        unknown = sorted(set(np.unique(y).tolist()) - set(quotas))
        if unknown:
            raise ValueError(f"{STRATUM} value(s) {unknown} have no quota: did the split "
                             f"change between the counting and the sampling pass?")
        key = sample_keys(chunk[encode.ID_COLUMN], seed)
        take = np.flatnonzero(key < thresholds[y])
        part = {k: np.asarray(v)[take] for k, v in chunk.items()}
        part.update({_KEY: key[take], _ORDER: seen + take.astype(np.int64)})
        parts.append(part)
        pending += len(take)
        seen += n
        if pending > buffer_rows:
            parts = [_prune(_join(parts), quotas, thresholds)]
            pending = len(parts[0][_KEY])
    if not parts:
        raise ValueError("no rows to sample from")
    out = _prune(_join(parts), quotas, thresholds)
    return {k: v for k, v in out.items() if k not in (_KEY, _ORDER)}


def _join(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _listed_rows(manifest: Mapping[str, Any], split: str, regions: list[str] | None
                 ) -> int | None:
    """Rows of the split (or its regions) by the manifest; None when it does not say."""
    entry = (manifest.get("splits") or {}).get(split) or {}
    if regions is None:
        return int(entry["rows"]) if "rows" in entry else None
    by_region = entry.get("rows_by_region")
    return None if by_region is None else sum(int(by_region.get(r, 0)) for r in regions)


def load_sample(manifest: Mapping[str, Any], split: str, regions: list[str] | None,
                max_rows: int, seed: int, chunk_rows: int = 65_536
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A split (or its regions) as ``load_numpy`` gives it, bounded to ``max_rows`` rows by the
    module's rule (``max_rows`` = 0: every row), and the record of the draw.

    Within the cap (by the manifest's row counts) the split is read whole in one pass; over
    it, one pass counts the classes (parsing the label only) and one keeps the sample.

    Returns:
        (numpy dict, record): the record holds split, rule, max_rows, seed, stratum,
        rows_available, rows_used and, when sampled, the rows per class before and after.
    """
    from pythia.tfrecords.reader import count_labels, iter_numpy, load_numpy

    if max_rows < 0:
        raise ValueError(f"max_rows must be >= 0 (0 = every row), got {max_rows}")
    record = {"split": split, "max_rows": int(max_rows), "seed": int(seed), "stratum": STRATUM}
    listed = _listed_rows(manifest, split, regions)
    counts = ({} if max_rows == 0 or (listed is not None and listed <= max_rows)
              else count_labels(manifest, split, regions, STRATUM))
    if sum(counts.values()) <= max_rows:
        data = load_numpy(manifest, split, regions)
        n = len(data[encode.ID_COLUMN])
        return data, dict(record, rule=ALL_ROWS_RULE, rows_available=n, rows_used=n)
    quotas = sample_quotas(counts, max_rows)
    data = sample_chunks(iter_numpy(manifest, split, regions, chunk_rows=chunk_rows), quotas,
                         seed)
    return data, sampled_record(record, counts, data[STRATUM])


def sampled_record(record: Mapping[str, Any], counts: Mapping[int, int], y_kept: np.ndarray
                   ) -> dict[str, Any]:
    """``record`` (split, max_rows, seed, stratum) completed for a drawn sample: the rule, the
    rows available and used, and both per class (``counts``: the split's rows per class)."""
    used = np.bincount(np.asarray(y_kept, dtype=np.int64), minlength=max(counts) + 1)
    return dict(record, rule=SAMPLE_RULE, rows_available=int(sum(counts.values())),
                rows_used=int(len(y_kept)),
                rows_by_class_available={str(c): int(n) for c, n in counts.items()},
                rows_by_class_used={str(c): int(used[c]) for c in counts})
