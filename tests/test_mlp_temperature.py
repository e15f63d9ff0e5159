"""The MLP's validation pass in bounded memory (``pythia.models.mlp_valid``): early stopping's
loss sums every row batch by batch, the temperature is fitted on at most ``max_train_rows``
rows drawn by the training-sample rule. Within the cap the temperatures are those of every
row; over it the held arrays stay at the cap and the temperature near the full-data one.
Validation data is skewed (a class of one row, a class absent) and comes in uneven batches.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from pythia import features
from pythia.config import TrainConfig
from pythia.models import MODELS
from pythia.models import priors as pr
from pythia.models.mlp_valid import (ValidationSample, losses_of, natural_loss_sums,
                                     shipped_val_losses)
from pythia.tfrecords.sample import ALL_ROWS_RULE, SAMPLE_RULE
from test_models import HPARAMS, N_AGE, make_encoders, make_split, uniform_priors

# AgeGender shares from common to rare; class 5 gets a single row below, class 4 none
SKEW = np.array([0.45, 0.3, 0.15, 0.07, 0.0, 0.03])


def skewed(n: int, seed: int) -> dict[str, np.ndarray]:
    """``make_split`` rows with skewed AgeGender classes: one row of class 5, none of 4."""
    d = make_split(n, seed, SKEW / SKEW.sum())
    rare = np.flatnonzero(d["y_age_gender"] == 5)
    d["y_age_gender"][rare[1:]] = 0  # a single row of class 5 remains
    d["y_gender"], d["y_age"] = d["y_age_gender"] // N_AGE, d["y_age_gender"] % N_AGE
    d["impression_id"] = np.array([f"imp-{seed}-{i:06d}" for i in range(n)], dtype=object)
    return d


def batches(d: dict, sizes: list[int], with_ids: bool = True) -> list[tuple[dict, dict]]:
    """``(features, labels)`` batches of the given sizes (ids as bytes, like tf.data)."""
    names = features.FEATURE_NAMES
    out, start = [], 0
    for size in sizes:
        rows = slice(start, start + size)
        x = {f: d[f][rows] for f in names}
        if with_ids:
            x["impression_id"] = np.array([s.encode() for s in d["impression_id"][rows]],
                                          dtype=object)
        out.append((x, {t: d[c][rows] for t, c in features.LABEL_COLUMNS.items()}))
        start += size
    return out


def uneven(n: int) -> list[int]:
    sizes, rng = [], np.random.default_rng(n)
    while sum(sizes) < n:
        sizes.append(int(min(rng.integers(1, 700), n - sum(sizes))))
    return sizes


class FakeNetwork:
    """Over-confident logits from the features that carry the labels (``make_split``):
    float32 like Keras, no TensorFlow call; temperatures well above 1 and well determined."""

    def __init__(self, units: dict[str, int]) -> None:
        self.units = units

    def __call__(self, x: dict, training: bool = False) -> dict:
        site = np.asarray(x["site_or_app"], dtype=np.int64) - 2
        device = np.asarray(x["device_type"], dtype=np.int64) - 2
        age = np.asarray(x["hour_sin"], dtype=np.float64) + 1.0
        out = {"age_gender": 5.0 * (site[:, None] == np.arange(self.units["age_gender"])),
               "gender": 5.0 * (device[:, None] == np.arange(self.units["gender"]))}
        k = np.arange(self.units["age"])
        out["age"] = (4.0 * (age[:, None] - k - 0.5) if self.units["age"] == N_AGE - 1
                      else -3.0 * (age[:, None] - k) ** 2)  # CORN tasks, or softmax
        return {t: v.astype(np.float32) for t, v in out.items()}


def fake_model(cfg: TrainConfig):
    model = MODELS["mlp"](make_encoders(), HPARAMS["mlp"], cfg)
    model.priors = uniform_priors()
    model.prior_ratio = {t: np.ones(len(p)) for t, p in model.priors["train"].items()}
    model.keras_model = FakeNetwork(model.head_units())
    # numpy, not TensorFlow: the fake is its own inference pass (mlp_valid.compiled_forward)
    model._forward = (model.keras_model, model.keras_model)
    return model


def full_logits(model, d: dict) -> tuple[dict, dict]:
    """Every row's logits as the pass before this change held them (float32 -> float64)."""
    out = model.keras_model({f: d[f] for f in features.FEATURE_NAMES})
    raw = {t: np.asarray(v, dtype=np.float64) for t, v in out.items()}
    return raw, {t: np.asarray(d[c], dtype=np.int64) for t, c in features.LABEL_COLUMNS.items()}


def temperatures(model, raw, y) -> dict[str, float]:
    return {t: pr.fit_temperature(raw[t], y[t], model.link(t)) for t in features.TARGETS}


# ------------------------------------------------------------------ the sampler, unit level

@pytest.mark.parametrize("cap", [0, 5000, 3000])
def test_within_the_cap_every_row_is_kept_in_order_and_the_loss_is_the_whole_splits(cap):
    d = skewed(3000, 1)
    model = fake_model(TrainConfig(max_train_rows=cap))
    sampler = ValidationSample(cap, seed=0)
    raw, y, sums = sampler.score(model, batches(d, uneven(3000)))
    ref_raw, ref_y = full_logits(model, d)
    for t in features.TARGETS:
        np.testing.assert_array_equal(raw[t], ref_raw[t])
        np.testing.assert_array_equal(y[t], ref_y[t])
    whole = losses_of(natural_loss_sums(model, ref_raw, ref_y))
    for t, v in losses_of(sums).items():
        assert v == pytest.approx(whole[t], rel=1e-12)
    rec = sampler.record
    assert rec["rule"] == ALL_ROWS_RULE and rec["rows_available"] == rec["rows_used"] == 3000
    assert temperatures(model, raw, y) == temperatures(model, ref_raw, ref_y)


def test_over_the_cap_the_sample_is_stratified_seeded_and_order_free():
    d = skewed(4000, 2)
    model = fake_model(TrainConfig(max_train_rows=300))
    sampler = ValidationSample(300, seed=7)
    raw, y, sums = sampler.score(model, batches(d, uneven(4000)))
    assert len(y["age_gender"]) == 300 and all(len(v) == 300 for v in raw.values())
    rec = sampler.record
    assert rec["rule"] == SAMPLE_RULE and (rec["rows_available"], rec["rows_used"]) == (4000, 300)
    assert rec["rows_by_class_used"]["5"] == 1 and "4" not in rec["rows_by_class_used"]
    avail = rec["rows_by_class_available"]
    # proportional quotas to within a row, plus the rare class's row taken from the largest
    for c, n in rec["rows_by_class_used"].items():
        assert abs(n - avail[c] * 300 / 4000) <= 2.0
    # every row's loss, not the sample's
    whole = losses_of(natural_loss_sums(model, *full_logits(model, d)))
    for t, v in losses_of(sums).items():
        assert v == pytest.approx(whole[t], rel=1e-12)
    # the kept rows are those of smallest hash: the same whatever the batches' order
    # (age logits are continuous in hour_sin: a row's fingerprint)
    kept = {tuple(r) for r in raw["age"]}
    shuffled = batches(d, uneven(4000))[::-1]
    again = ValidationSample(300, seed=7).score(model, shuffled)[0]["age"]
    assert {tuple(r) for r in again} == kept
    other = ValidationSample(300, seed=8).score(model, batches(d, uneven(4000)))[0]
    assert len({tuple(r) for r in other["age"]} & kept) < 100
    # a second pass (the next epoch) knows the counts: one pass, the same rows
    raw2, _, _ = sampler.score(model, batches(d, uneven(4000)))
    np.testing.assert_array_equal(raw2["age_gender"], raw["age_gender"])


def test_the_sampled_temperature_is_near_the_full_data_one():
    d = skewed(60_000, 3)
    model = fake_model(TrainConfig(max_train_rows=6000))
    full = temperatures(model, *full_logits(model, d))
    raw, y, _ = ValidationSample(6000, seed=0).score(model, batches(d, uneven(60_000)))
    sampled = temperatures(model, raw, y)
    for t in features.TARGETS:
        assert sampled[t] == pytest.approx(full[t], rel=0.05), (t, sampled, full)


def _peak_bytes(n: int, cap: int) -> int:
    d = skewed(n, 4)
    model = fake_model(TrainConfig(max_train_rows=cap))
    parts = batches(d, [500] * (n // 500))
    tracemalloc.start()
    try:
        ValidationSample(cap, seed=0).score(model, parts)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_held_does_not_grow_with_the_split_over_the_cap():
    small, large = _peak_bytes(10_000, 400), _peak_bytes(40_000, 400)
    assert large < 1.3 * small, (small, large)
    # negative case: every row kept (cap 0), the peak grows with the rows
    assert _peak_bytes(40_000, 0) > 2.5 * _peak_bytes(10_000, 0)


def test_over_the_cap_a_split_without_ids_is_refused_with_the_fix():
    d = skewed(1000, 5)
    model = fake_model(TrainConfig(max_train_rows=100))
    with pytest.raises(ValueError, match="with_ids=True.*max_train_rows = 0"):
        ValidationSample(100, seed=0).score(model, batches(d, [250] * 4, with_ids=False))
    # within the cap no id is needed
    raw, _, _ = ValidationSample(1000, seed=0).score(model, batches(d, [250] * 4, False))
    assert len(raw["age_gender"]) == 1000
    with pytest.raises(ValueError, match="max_train_rows must be >= 0"):
        ValidationSample(-1, seed=0)


def test_under_em_the_loss_is_the_kept_rows_whole():
    d = skewed(2000, 6)
    model = fake_model(TrainConfig(max_train_rows=500, prior_correction="em"))
    raw, y, sums = ValidationSample(500, seed=0).score(model, batches(d, uneven(2000)))
    assert losses_of(sums) == losses_of(natural_loss_sums(model, raw, y))
    empty = ValidationSample(500, seed=0).score(model, [])
    assert all(len(v) == 0 for v in empty[1].values())
    assert empty[0]["age_gender"].shape == (0, model.head_units()["age_gender"])


# ------------------------------------------------------------------ the LR start's sample

def test_sample_dataset_is_numpy_of_within_the_cap_and_bounded_over_it():
    from pythia.models.mlp_valid import sample_dataset
    from pythia.models.wide import numpy_of

    d = skewed(2000, 8)
    ds = _dataset(d, 97)
    whole = numpy_of(ds)
    for cap in (0, 2000):
        kept, rec = sample_dataset(ds, cap, 1, "train")
        assert rec["rule"] == ALL_ROWS_RULE and rec["split"] == "train"
        assert set(kept) == set(whole) - {"impression_id"}
        for k, v in kept.items():
            np.testing.assert_array_equal(v, whole[k])
    kept, rec = sample_dataset(ds, 400, 1, "train")
    assert rec["rule"] == SAMPLE_RULE and (rec["rows_available"], rec["rows_used"]) == (2000, 400)
    assert rec["rows_by_class_used"]["5"] == 1 and "impression_id" not in kept
    assert all(len(v) == 400 for v in kept.values())
    # the rows are the training sample's: the same as tfrecords.sample on the same ids
    from pythia.tfrecords.sample import sample_chunks, sample_quotas
    quotas = sample_quotas({int(c): int(n) for c, n in
                            enumerate(np.bincount(d["y_age_gender"])) if n}, 400)
    ref = sample_chunks(iter([{k: d[k] for k in ("impression_id", "y_age_gender",
                                                   "hour_sin")}]), quotas, 1)
    assert sorted(kept["hour_sin"].tolist()) == sorted(ref["hour_sin"].tolist())
    assert sample_dataset(d, 10, 1, "train") == (d, None)  # a numpy split: as it is
    with pytest.raises(ValueError, match="train dataset has no 'impression_id'"):
        sample_dataset(ds.map(lambda x, y: ({k: x[k] for k in features.FEATURE_NAMES}, y)),
                       400, 1, "train")


# ------------------------------------------------------------------ the MLP, component level

def _dataset(d: dict, batch: int):
    import tensorflow as tf

    x = {f: d[f] for f in features.FEATURE_NAMES}
    x["impression_id"] = d["impression_id"].astype(bytes)
    y = {t: d[c] for t, c in features.LABEL_COLUMNS.items()}
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


def _reference_logits(model, valid) -> tuple[dict, dict]:
    """Every validation row's logits and labels, held as before this change (by the same
    compiled inference pass: eager calls differ in float32 rounding)."""
    from pythia.models.mlp_valid import compiled_forward

    parts = {t: [] for t in features.TARGETS}
    labels = {t: [] for t in features.TARGETS}
    for x, y in valid:
        out = compiled_forward(model)({f: x[f] for f in features.FEATURE_NAMES})
        for t in features.TARGETS:
            parts[t].append(np.asarray(out[t]))
            labels[t].append(np.asarray(y[t]))
    raw = {t: np.concatenate(v).astype(np.float64) for t, v in parts.items()}
    return raw, {t: np.concatenate(v).astype(np.int64) for t, v in labels.items()}


def test_mlp_temperatures_within_and_over_the_cap():
    train, valid = make_split(600, 0), skewed(900, 1)
    cfg = TrainConfig(max_epochs=1, batch_size=64, patience=1, seed=0, max_train_rows=0)
    model = MODELS["mlp"](make_encoders(), HPARAMS["mlp"], cfg)
    summary = model.fit(_dataset(train, 64), _dataset(valid, 128), uniform_priors())
    ref = temperatures(model, *_reference_logits(model, _dataset(valid, 128)))
    for t in features.TARGETS:
        assert abs(model.temperature[t] - ref[t]) <= 1e-9
    assert summary["n_valid"] == 900
    assert summary["temperature_sample"]["rule"] == ALL_ROWS_RULE

    capped = MODELS["mlp"](make_encoders(), HPARAMS["mlp"],
                           TrainConfig(max_epochs=1, batch_size=64, patience=1, seed=0,
                                       max_train_rows=300))
    s2 = capped.fit(_dataset(train, 64), _dataset(valid, 128), uniform_priors())
    rec = s2["temperature_sample"]
    assert (rec["rows_available"], rec["rows_used"], s2["n_valid"]) == (900, 300, 300)
    assert rec["rule"] == SAMPLE_RULE and rec["rows_by_class_used"]["5"] == 1
    # early stopping: gender and age on every row (the restored weights on all 900 rows);
    # AgeGender as shipped, on the kept rows its temperatures are fitted on
    full = _reference_logits(capped, _dataset(valid, 128))
    whole = losses_of(natural_loss_sums(capped, *full))
    best = s2["val_loss_by_epoch"][s2["best_epoch"]]
    assert best["gender"] == pytest.approx(whole["gender"], rel=1e-9)
    assert best["age"] == pytest.approx(whole["age"], rel=1e-9)
    shipped = shipped_val_losses(capped, _dataset(valid, 128))["age_gender"]
    assert s2["best_val_loss"] == pytest.approx(shipped, rel=1e-9) != whole["age_gender"]
    full_t = temperatures(capped, *full)
    for t in features.TARGETS:  # a third of the rows: near the full-data temperature
        assert capped.temperature[t] == pytest.approx(full_t[t], rel=0.15)
    # the LR start read bounded samples of both splits
    start = s2["wide_start"]["sample"]
    assert (start["train"]["rows_available"], start["train"]["rows_used"]) == (600, 300)
    assert (start["validation"]["rows_used"], start["validation"]["rule"]) == (300, SAMPLE_RULE)
    assert summary["wide_start"]["sample"]["train"]["rule"] == ALL_ROWS_RULE


# ------------------------------------------------------------------ the candidate, from TFRecords

def test_the_candidate_records_the_temperature_sample_read_from_tfrecords(tmp_path):
    from pythia.models import fit_candidate
    from test_tfrecords import local_manifest, skewed_split

    frames = {"train": skewed_split(1500, 21), "validation": skewed_split(700, 22),
              "test_natural": skewed_split(200, 23), "test_resampled": skewed_split(200, 24)}
    manifest = local_manifest(tmp_path / "tfr", frames)
    priors = {"train": {t: [1 / k] * k for t, k in {"gender": 2, "age": 6,
                                                      "age_gender": 12}.items()}}
    priors["natural"] = priors["train"]
    out = {}
    for cap in (0, 250):
        cfg = TrainConfig(max_epochs=1, batch_size=256, patience=1, seed=3, max_train_rows=cap)
        out[cap] = fit_candidate("mlp", "global", 0, HPARAMS["mlp"], manifest, priors,
                                 str(tmp_path / f"m{cap}"), str(tmp_path / f"p{cap}.parquet"),
                                 cfg)
    whole, capped = out[0]["temperature_sample"], out[250]["temperature_sample"]
    assert whole["rule"] == ALL_ROWS_RULE and whole["rows_used"] == 700
    assert capped["rule"] == SAMPLE_RULE and (capped["rows_available"],
                                              capped["rows_used"]) == (700, 250)
    assert capped["rows_by_class_used"]["11"] == 1  # the split's single row of class 11
    assert out[250]["n_valid"] == 250 and out[0]["n_valid"] == 700
    # the MLP's epochs and early stopping still read every row; its LR start a sample
    assert out[250]["training_sample"]["validation"]["rows_used"] == 700
    start = out[250]["wide_start"]["sample"]
    assert (start["train"]["rows_available"], start["train"]["rows_used"]) == (1500, 250)
    assert out[0]["wide_start"]["sample"]["train"]["rows_used"] == 1500
