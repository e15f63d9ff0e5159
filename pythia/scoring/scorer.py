"""The bid-time scorer: a loaded bundle that turns impression requests into probabilities.

``Scorer.score`` handles one request (the bidder's hot path), ``score_batch`` many at once
(vectorised), ``score_arrays`` returns bare arrays (offline scoring, benchmarks, parity checks);
both batch methods also take the batch as columns (``RequestEncoder.encode_many``). Inputs are
cleaned at the boundary (``pythia.scoring.boundary``): no request makes it raise or return NaN.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.config import Geography
from pythia.features import TARGETS, Encoders
from pythia.scoring import columnar
from pythia.scoring.boundary import RequestEncoder
from pythia.scoring.bundle_doc import read_bundle_doc, read_encoders
from pythia.scoring.runtimes import runtime_of

# float32 by measurement (benchmarks/scoring_bench.py): one request ~10% faster (p50 24 vs
# 28 us), the batch path's first-layer matmul several times faster; it stays within 1e-5 of
# the Keras model (parity tests).
DEFAULT_DTYPE = "float32"


class Scorer:
    """Scores impression requests with a bundle's models.

    Build it with ``Scorer.load(path)`` or ``Scorer.from_run(...)``. Requests are dicts of the
    impression contract columns (docs/interfaces.md) with ``ts`` as epoch seconds or an ISO-8601
    string; a request without a usable ``ts`` is scored at the current time. See
    ``pythia.scoring.boundary`` for what happens to every kind of bad input.
    """

    def __init__(self, doc: Mapping[str, Any], encoders: Encoders, geo: Geography,
                 models: Mapping[str, Any],
                 slot_encoders: Mapping[str, Encoders] | None = None) -> None:
        self.doc = dict(doc)
        self.version = str(doc["version"])
        self.encoders = encoders
        self.geo = geo
        self.models = dict(models)
        self.labels = {t: tuple(features.class_labels(t, encoders.age_edges)) for t in TARGETS}
        self.encoder = RequestEncoder(encoders, geo, list(self.models))
        # a slot with encoders of its own (a kept previous champion) reads its rows through
        # them; the bundle's encoder routes every row
        self.slot_encoders = {region: RequestEncoder(own, geo, list(self.models))
                              for region, own in (slot_encoders or {}).items()}

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path: str, dtype: str = DEFAULT_DTYPE) -> "Scorer":
        """Load a bundle folder (local, or s3:// via a temporary local copy).

        Args:
            path: the bundle folder (a run's ``bundle_path`` artifact).
            dtype: arithmetic of the fused MLP, 'float32' (default) or 'float64'.
        """
        # Checked by prefix so that a local bundle never imports pyarrow (pythia.storage).
        if str(path).startswith(("s3://", "s3a://")):
            from pythia import storage

            with storage.local_copy(path) as folder:
                return cls._load_local(folder, dtype)
        return cls._load_local(os.path.abspath(path), dtype)

    @classmethod
    def _load_local(cls, folder: str, dtype: str) -> "Scorer":
        doc = read_bundle_doc(folder)
        encoders, own = read_encoders(folder, doc)
        geo = Geography(region_of_country=dict(doc["routing"]["region_of_country"]),
                        offsets=doc["utc_offsets"])
        models = {region: runtime_of(entry).load(folder, entry, own.get(region, encoders),
                                                 dtype)
                  for region, entry in doc["models"].items()}
        return cls(doc, encoders, geo, models, own)

    @classmethod
    def from_run(cls, run_id: str | None = None, flow_name: str = "DemoFlow",
                 dtype: str = DEFAULT_DTYPE) -> "Scorer":
        """Load the bundle of a flow run (default: the latest successful one).

        Reads the run's ``bundle_path`` artifact with the Metaflow client (imported here only).
        """
        from pythia.runs import bundle_path_of_run
        return cls.load(bundle_path_of_run(run_id, flow_name=flow_name), dtype=dtype)

    # ------------------------------------------------------------------ scoring
    def score(self, request: Any, now: float | None = None) -> dict[str, Any]:
        """Score one request.

        Args:
            request: a dict of impression contract fields (anything else counts as empty).
            now: epoch seconds to use when the request has no usable ``ts`` (default: now).

        Returns:
            ``{'gender': {'F': p, 'M': p}, 'age': {bucket: p}, 'age_gender': {class: p},
            'region': the region whose model scored it, 'model_version': bundle version}``.
        """
        if self.slot_encoders:  # route first, then encode once, by the slot's encoders
            encoder = self.slot_encoders.get(self.encoder.route_one(request), self.encoder)
            ids, numeric, region = encoder.encode_one(request, now)
        else:
            ids, numeric, region = self.encoder.encode_one(request, now)
        probs = self.models[region].predict_one(ids, numeric)
        labels = self.labels
        return {"gender": dict(zip(labels["gender"], probs["gender"])),
                "age": dict(zip(labels["age"], probs["age"])),
                "age_gender": dict(zip(labels["age_gender"], probs["age_gender"])),
                "region": region, "model_version": self.version}

    def score_openrtb(self, request: Any, ts: Any = None, now: float | None = None
                      ) -> list[dict[str, Any]]:
        """Score every ``imp`` of an OpenRTB 2.6 BidRequest; per imp the scores and the
        region/model that scored it (``pythia.scoring.openrtb``: the mapping used at ingest)."""
        from pythia.scoring.openrtb import score_openrtb
        return score_openrtb(self, request, ts=ts, now=now)

    def score_batch(self, requests: Any, now: float | None = None
                    ) -> list[dict[str, Any]]:
        """Score many requests at once; same output per request as ``score``.

        ``requests``: a sequence of request dicts, or columns (a dict of arrays, a pandas
        DataFrame, a pyarrow Table); see ``RequestEncoder.encode_many``.
        """
        probs, regions = self._score(requests, now)
        rows = {t: probs[t].tolist() for t in TARGETS}
        labels, version = self.labels, self.version
        return [{"gender": dict(zip(labels["gender"], g)), "age": dict(zip(labels["age"], a)),
                 "age_gender": dict(zip(labels["age_gender"], ag)), "region": r,
                 "model_version": version}
                for g, a, ag, r in zip(rows["gender"], rows["age"], rows["age_gender"],
                                       regions.tolist())]

    def score_arrays(self, requests: Any, now: float | None = None, slot: str | None = None
                     ) -> dict[str, np.ndarray]:
        """Score many requests; ``{target: (n, n_classes) float64}`` in ``class_labels`` order.

        ``requests`` as for ``score_batch``; columns (above all a pyarrow Table of dictionary
        columns) skip the per-row work of reading dicts, the fastest way to score offline.
        ``slot``: every row by that slot's model (e.g. the global one) instead of routing each
        to its region's.
        """
        if slot is None:
            return self._score_routed(requests, now)[0]
        if slot not in self.models:
            raise KeyError(f"bundle {self.version} has no {slot!r} slot (it has "
                           f"{', '.join(sorted(self.models))})")
        encoder = self.slot_encoders.get(slot, self.encoder)
        ids, numeric, _, _ = encoder.encode_routed(requests, now)
        return self.models[slot].predict(ids, numeric)

    def _score(self, requests: Any, now: float | None
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        probs, route_at, routes = self._score_routed(requests, now)
        return probs, np.array(routes, dtype=object)[route_at]

    def _score_routed(self, requests: Any, now: float | None
                      ) -> tuple[dict[str, np.ndarray], np.ndarray, list[str]]:
        ids, numeric, route_at, routes = self._encoded(requests, now)
        n = len(ids)
        if len(routes) == 1 and n:
            return self.models[routes[0]].predict(ids, numeric), route_at, routes
        out = {t: np.empty((n, len(self.labels[t]))) for t in TARGETS}
        for k in np.flatnonzero(np.bincount(route_at, minlength=len(routes))).tolist():
            rows = np.flatnonzero(route_at == k)
            probs = self.models[routes[k]].predict(ids[rows], numeric[rows])
            for t in TARGETS:
                out[t][rows] = probs[t]
        return out, route_at, routes

    def _encoded(self, requests: Any, now: float | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
        """``RequestEncoder.encode_routed``, each row by its slot's encoders: the bundle's, or
        the slot's own (a kept previous champion). The batch is read once. Other columns than
        Arrow's are routed first, and each encoder encodes only its rows (all of them in place,
        else a ``take`` of them); Arrow columns are encoded whole by the bundle's encoders,
        which route them, and again by each kept slot's with rows in the batch: an Arrow
        column costs per distinct value (its dictionary), so a take would save nothing and
        cost the take (benchmarks/kept_slot_bench.py)."""
        if not self.slot_encoders:
            return self.encoder.encode_routed(requests, now)
        columns, n = self.encoder.columns_of(requests)
        now = time.time() if now is None else now  # one clock for every encoder
        if columnar.all_arrow(columns):
            ids, numeric, route_at, routes = self.encoder.encode_columns(columns, n, now)
            for k, region in enumerate(routes):
                rows = route_at == k
                if region in self.slot_encoders and rows.any():
                    own_ids, own_numeric, _, _ = self.slot_encoders[region].encode_columns(
                        columns, n, now)
                    ids[rows], numeric[rows] = own_ids[rows], own_numeric[rows]
            return ids, numeric, route_at, routes
        route_at, routes = self.encoder.route_columns(columns, n)
        groups: dict[RequestEncoder, list[int]] = {}
        for k, region in enumerate(routes):
            groups.setdefault(self.slot_encoders.get(region, self.encoder), []).append(k)
        if len(groups) <= 1:  # one encoder for every row (or no row)
            encoder = next(iter(groups), self.encoder)
            return (*encoder.encode_columns(columns, n, now)[:2], route_at, routes)
        ids = numeric = None
        for encoder, ks in groups.items():
            rows = np.flatnonzero(np.isin(route_at, ks))
            taken = {c: columnar.take(v, rows) for c, v in columns.items()}
            own_ids, own_numeric, _, _ = encoder.encode_columns(taken, len(rows), now)
            if ids is None:
                ids = np.empty((n, own_ids.shape[1]), own_ids.dtype)
                numeric = np.empty((n, own_numeric.shape[1]), own_numeric.dtype)
            ids[rows], numeric[rows] = own_ids, own_numeric
        return ids, numeric, route_at, routes
