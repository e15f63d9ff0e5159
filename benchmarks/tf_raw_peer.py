"""A like-for-like TensorFlow peer of ``Scorer.score_arrays``: raw request columns in, the
scorer's probabilities out, all inside one ``tf.function`` (used by ``scoring_bench.py``).

What the graph does, from the bundle's own documents (the portable rules of
``pythia.scoring.onnx_export.encoders_document`` and the offset table's JSON):

* each categorical source column (a string tensor; missing = ``""``) looked up in a
  ``tf.lookup.StaticHashTable`` built from the same vocabulary: ``""`` -> missing, a value
  outside the vocabulary (or longer than ``MAX_VALUE_CHARS``) -> OOV; a regional feature
  (``region_device_make``) looks up ``region|value`` with the country's region from the
  bundle's map (missing / OOV where its column's id is);
* the UTC offset in the graph: country -> zone series (hash table), the subdivision code
  (stripped, upper-cased, prefixed ``COUNTRY-``) -> its own series where the table has one,
  then ``tf.searchsorted`` over every series' transitions laid end to end (the layout of
  ``pythia.geo.OffsetTable``);
* local hour / day of week and their ids, ``hour_sin`` / ``hour_cos`` normalised as
  ``NumericStats.normalize`` does (float64, then float32); the activity counter
  (``user_impressions_today``, a float64 tensor, NaN = unknown) through the encoders'
  transform (log1p, or none; a negative count is unknown) and the same z-score, unknown -> 0;
* the Keras model, then AgeGender's logits calibrated as the bundle does
  (``calibrated_joint``): with the bundle's temperature and prior ratio
  (``softmax(z / T + log r)``), or, when the bundle bins AgeGender by activity, without the
  head's deep logits in the wide-only bins and at each bin's temperature; gender / age are
  its marginals.

Its inputs are tensors already: ``ts`` as int64 epoch seconds (no ISO-8601 parsing, no
fallback to the current time, no non-string cells), and there is one model (no routing by
country): the bench's batches need nothing more, and ``check_peer`` compares it with the
scorer row by row.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from pythia import features
from pythia.config import OTHER_REGION
from pythia.features import (CATEGORICAL, COUNTRY, DERIVED, FEATURES, GEO_REGION, LOG1P,
                             MISSING_ID, NUMERIC_FEATURES, OOV_ID, REGIONAL, REGIONAL_FEATURES, TS,
                             Encoders)
from pythia.scoring.boundary import MAX_VALUE_CHARS

# pythia.geo.offsets' key layout: series j occupies [j * BLOCK, (j + 1) * BLOCK)
_TS_MIN, _TS_MAX = -(2 ** 35), 2 ** 35
_BLOCK = _TS_MAX - _TS_MIN

SOURCE_COLUMNS = [f.source for f in FEATURES
                  if f.kind == CATEGORICAL and f.source not in (DERIVED, REGIONAL)]
STRING_COLUMNS = list(dict.fromkeys([COUNTRY, GEO_REGION] + SOURCE_COLUMNS))
# numeric features read from a request column of their own name (the activity counter)
COUNT_COLUMNS = [f.name for f in FEATURES if f.kind != CATEGORICAL and f.source != DERIVED]


def calibrated_joint(keras_model: Any, export: Mapping[str, Any]):
    """``joint(x)``: AgeGender's probabilities of a batch of model inputs as the bundle
    computes them (``pythia.scoring.runtime``): ``softmax(z / T + log r)``, or with a
    temperature per activity bin (the export's ``activity_temperature`` entry)
    ``softmax(z' / T_bin + log r)``, where z' leaves out the head's deep logits (its kernel
    part) in the wide-only bins."""
    import tensorflow as tf

    from pythia.models import activity_temp as at
    from pythia.models.mlp_valid import network_outputs

    with np.errstate(divide="ignore"):
        log_ratio = tf.constant(np.log(np.asarray(export["prior_ratio"]["age_gender"])),
                                tf.float32)
    entry = export.get(at.EXPORT_KEY)
    if entry is None:
        scale = 1.0 / float(export["temperature"]["age_gender"])
        return lambda x: tf.nn.softmax(keras_model(x, training=False)["age_gender"] * scale
                                       + log_ratio, axis=-1)
    edges = tf.constant(np.asarray(entry["edges"], np.float64))
    inverse = tf.constant(1.0 / np.asarray(entry["temperature"], np.float64), tf.float32)
    gates = entry.get("deep")
    off = None if gates is None else tf.constant(1.0 - np.asarray(gates, np.float64),
                                                  tf.float32)
    outputs = network_outputs(keras_model, deep=off is not None)

    def joint(x):
        out = outputs(x)
        z = out["age_gender"]
        activity = tf.cast(tf.reshape(x[entry["feature"]], [1, -1]), tf.float64)
        bins = tf.reshape(tf.searchsorted(edges[None, :], activity, side="right"), [-1])
        if off is not None:
            z = z - out[at.DEEP] * tf.gather(off, bins)[:, None]
        return tf.nn.softmax(z * tf.gather(inverse, bins)[:, None] + log_ratio, axis=-1)
    return joint


def _series(offsets_doc: Mapping[str, Any]) -> tuple[dict, list, list]:
    """(zone -> series id, transitions per series, offsets per series); series 0 is UTC."""
    zones = offsets_doc["zones"]
    series_of, transitions, offsets = {}, [[_TS_MIN]], [[0]]
    for zone, entry in zones.items():
        if "same_as" not in entry:
            series_of[zone] = len(transitions)
            transitions.append(entry["transitions"])
            offsets.append(entry["offsets_minutes"])
    for zone, entry in zones.items():
        if "same_as" in entry:
            series_of[zone] = series_of[entry["same_as"]]
    return series_of, transitions, offsets


def make_raw_peer(keras_model: Any, encoders: Encoders, offsets_doc: Mapping[str, Any],
                  export: Mapping[str, Any], region_of_country: Mapping[str, str]):
    """A ``tf.function`` taking ``{column: tensor}`` (``STRING_COLUMNS`` as tf.string,
    ``ts`` as tf.int64) and returning ``{gender, age, age_gender}`` float32 probabilities;
    ``region_of_country``: the bundle's map (``Geography.region_of_country``)."""
    import tensorflow as tf

    unknown = [f.name for f in FEATURES if f.kind != CATEGORICAL and (
        f.name not in ("hour_sin", "hour_cos") if f.source == DERIVED
        else encoders.numeric[f.name].transform not in (None, LOG1P))]
    if unknown:
        raise NotImplementedError(f"the TF peer derives only hour_sin/hour_cos and reads "
                                  f"counters (log1p or as they are), not {unknown}")

    def table(keys: list, values: list, default: int):
        init = tf.lookup.KeyValueTensorInitializer(
            tf.constant(keys, tf.string), tf.constant(values, tf.int64))
        return tf.lookup.StaticHashTable(init, default_value=default)

    vocab_tables = {}
    for f in FEATURES:
        if f.kind == CATEGORICAL and f.source not in (DERIVED, REGIONAL):
            vocab = encoders.vocabularies[f.name]
            kept = [v for v in vocab.values if len(v) <= MAX_VALUE_CHARS]
            vocab_tables[f.name] = (f.source, table(kept + [""], [vocab.encode_one(v) for v in kept]
                                                    + [MISSING_ID], OOV_ID))
    region_table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(region_of_country), tf.string),
        tf.constant(list(region_of_country.values()), tf.string)), default_value=OTHER_REGION)
    regional_tables = {f.name: (f.of, table(encoders.vocabularies[f.name].values, [
        encoders.vocabularies[f.name].encode_one(v)
        for v in encoders.vocabularies[f.name].values], OOV_ID)) for f in REGIONAL_FEATURES}
    # derived categoricals are looked up as decimal strings: a dense table per small int
    hour_ids = tf.constant([encoders.vocabularies["local_hour"].encode_one(str(h))
                            for h in range(24)], tf.int64)
    dow_ids = tf.constant([encoders.vocabularies["local_dow"].encode_one(str(d))
                           for d in range(7)], tf.int64)
    stats = {n: encoders.numeric[n] for n in NUMERIC_FEATURES}

    series_of, transitions, offsets = _series(offsets_doc)
    country_table = table(list(offsets_doc["countries"]),
                          [series_of[z] for z in offsets_doc["countries"].values()], 0)
    sub_table = table(list(offsets_doc["subdivisions"]),
                      [series_of[z] for z in offsets_doc["subdivisions"].values()], -1)
    keys = tf.constant(np.concatenate([j * _BLOCK + (np.asarray(t, np.int64) - _TS_MIN)
                                       for j, t in enumerate(transitions)]), tf.int64)
    minutes = tf.constant(np.concatenate([np.asarray(o, np.int64) for o in offsets]), tf.int64)
    starts = tf.constant(np.cumsum([0] + [len(t) for t in transitions[:-1]]), tf.int64)

    joint_of = calibrated_joint(keras_model, export)
    n_age = len(encoders.age_edges)
    n_gender = len(features.GENDER_CLASSES)

    def utc_offset(ts, country, region):
        country_sid = country_table.lookup(country)
        code = tf.strings.upper(tf.strings.strip(region))
        prefix = tf.strings.join([country, "-"])
        width = tf.strings.length(prefix)
        prefixed = tf.where(tf.strings.substr(code, tf.zeros_like(width), width) == prefix,
                            code, tf.strings.join([prefix, code]))
        sub_sid = sub_table.lookup(prefixed)
        sid = tf.where((sub_sid >= 0) & (tf.strings.length(code) > 0), sub_sid, country_sid)
        query = sid * _BLOCK + (tf.clip_by_value(ts, _TS_MIN, _TS_MAX - 1) - _TS_MIN)
        pos = tf.searchsorted(keys, query, side="right", out_type=tf.int64) - 1
        return tf.gather(minutes, tf.maximum(pos, tf.gather(starts, sid)))

    signature = [{**{c: tf.TensorSpec([None], tf.string, name=c) for c in STRING_COLUMNS},
                  **{c: tf.TensorSpec([None], tf.float64, name=c) for c in COUNT_COLUMNS},
                  TS: tf.TensorSpec([None], tf.int64, name=TS)}]
    # the encoders' transform, as NumericStats.normalize applies it
    transforms = {name: encoders.numeric[name].transform for name in COUNT_COLUMNS}

    @tf.function(input_signature=signature)
    def peer(columns):
        ts = columns[TS]
        offset = utc_offset(ts, columns[COUNTRY], columns[GEO_REGION])
        local_minutes = tf.math.floordiv(ts, 60) + offset
        hour = tf.math.floormod(tf.math.floordiv(local_minutes, 60), 24)
        dow = tf.math.floormod(tf.math.floordiv(local_minutes, 1440) + 3, 7)
        x = {name: t.lookup(columns[source]) for name, (source, t) in vocab_tables.items()}
        region = region_table.lookup(columns[COUNTRY])
        for name, (of, t) in regional_tables.items():  # missing / OOV where its column's is
            ids = t.lookup(tf.strings.join([region, columns[of]], separator="|"))
            x[name] = tf.where(x[of] <= OOV_ID, x[of], ids)
        x["local_hour"] = tf.gather(hour_ids, hour)
        x["local_dow"] = tf.gather(dow_ids, dow)
        angle = tf.cast(hour, tf.float64) * (2.0 * math.pi / 24.0)
        raw = {"hour_sin": tf.sin(angle), "hour_cos": tf.cos(angle)}
        for name in COUNT_COLUMNS:  # a negative or unknown (NaN) count: unknown
            count = columns[name]
            unknown = tf.fill(tf.shape(count), tf.constant(math.nan, tf.float64))
            known = tf.where(count >= 0, count, unknown)
            raw[name] = tf.math.log1p(known) if transforms[name] == LOG1P else known
        for name in NUMERIC_FEATURES:
            s = stats[name]
            z = (raw[name] - s.mean) / (s.std if s.std > 0 else 1.0)
            x[name] = tf.cast(tf.where(tf.math.is_finite(z), z, tf.zeros_like(z)), tf.float32)
        joint = joint_of(x)
        cube = tf.reshape(joint, [-1, n_gender, n_age])
        return {"gender": tf.reduce_sum(cube, axis=2), "age": tf.reduce_sum(cube, axis=1),
                "age_gender": joint}

    return peer


def arrow_to_tensors(table: Any) -> dict:
    """The peer's inputs from a pyarrow Table of (dictionary) string columns, numeric
    counters and int64 ts: nulls as ``""`` (strings) or NaN (counters, also when the column
    is absent), strings as tf.string, counters as tf.float64, ts as tf.int64 (the conversion
    a TF server pays)."""
    import pyarrow as pa
    import tensorflow as tf

    out = {}
    n = table.num_rows
    for c in STRING_COLUMNS:
        if c not in table.column_names:
            out[c] = tf.constant([""] * n, tf.string)
            continue
        col = table.column(c).cast(pa.string()).fill_null("")
        out[c] = tf.constant(col.to_numpy(zero_copy_only=False), tf.string)
    for c in COUNT_COLUMNS:
        values = (table.column(c).cast(pa.float64()).fill_null(math.nan).to_numpy()
                  if c in table.column_names else np.full(n, math.nan))
        out[c] = tf.constant(values, tf.float64)
    out[TS] = tf.constant(table.column(TS).to_numpy(), tf.int64)
    return out


def check_peer(peer: Any, scorer: Any, table: Any, atol: float = 1e-5) -> float:
    """Max |peer - scorer| over every probability of ``table``'s rows; raises above ``atol``
    (timings of a peer that computes something else would mean nothing)."""
    got = peer(arrow_to_tensors(table))
    want = scorer.score_arrays(table)
    diff = max(float(np.max(np.abs(got[t].numpy() - want[t]))) for t in want)
    if not diff <= atol:
        raise AssertionError(f"the TF raw-in peer differs from Scorer.score_arrays by {diff:.2e} "
                             f"(> {atol:.0e}): fix the peer before timing it")
    return diff
