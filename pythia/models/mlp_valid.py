"""The MLP's reads of its splits in bounded memory. Validation: the natural-weighted log-loss
of each head is summed batch by batch over every row, and only a bounded sample of rows keeps
its logits and labels for the temperature fit, the summary's ``val_logloss`` and early
stopping's AgeGender score (below). The LR start (``wide_start='logreg'``) fits on bounded
samples of train and validation (``sample_dataset``), the rows the logreg candidate fits on.

The sample is the numpy models' training-sample rule (``tfrecords.sample``): at most
``TrainConfig.max_train_rows`` rows, per AgeGender class a quota proportional to its rows (a
class with rows keeps at least one), filled with the rows of smallest SipHash of the impression
id keyed by the run's seed. Within the cap every row is kept, in read order, so the fit is the
one of every row. Chosen over streaming passes because a temperature is one scalar that a
half-million-row sample pins to well within the fit's tolerance, whereas a streamed fit needs
a forward pass of the network over the whole split per loss evaluation (~20 per head).

The kept rows keep their (normalised) activity too: the per-bin temperature's bins; and their
user groups (with ids): the activity cut's noise test (``activity_temp.noise_aware_cut``).

Early stopping scores AgeGender as it would ship (``shipped_val_losses``): the temperature and
per-bin temperatures the fit would end with are fitted on the kept rows after each epoch and
applied before the natural-weighted loss. At temperature 1 an epoch's score swung with the
over-confidence of a few heavy users' rows (session 37, default world, seed 0: 2.2095, 2.1974,
2.3655 at epochs 0-2), which the shipped temperatures take out; the epoch kept is then the one
whose shipped predictions are best, not the one least over-confident on them. A warm start's
epochs are scored with their region's scale of the start's bins as fitted, untested: shipped,
a kept start (epoch 0) keeps that scale only beyond noise (``start_temp``), and scored so,
epoch 0 would lose to the epochs after it for want of a scale they get.

One exception: the activity cut. The fit ships the noise-tested cut
(``activity_temp.noise_aware_cut``), whose jumps (a heavy pool's whole lead in or out) are larger
than an epoch's gain: epochs scored with it stopped seed 0 of the default world at epoch 1
(2.1462; the least-loss scores went on to 2.1442 at epoch 4), whose network was 0.007 worse on
fresh users (docs/new-users.md, session 40). The cut of least loss does not jump, but it
follows a few heavy users: seed 1 stopped at epoch 1 on a lead of the deep part at 100+ that
the noise test then gave to the wide part. So with the rows' user groups a deep part's epoch
is scored by ``discounted_joint_loss``: the wide part alone on every pool, plus the deep
part's lead on each pool it keeps, counted only beyond the noise test's bar in user-clustered
SEs (``wide_only_z``; ``wide_only_z_heavy`` in heavy pools), under the one cut that gives the
least such score. Noise earns nothing; a lead's credit grows continuously as it passes the
bar, so the score does not jump.

Under ``prior_correction = 'em'`` the loss re-estimates priors from the rows it is given, so
early stopping reads the kept rows (every row within the cap), not batches.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import numpy as np

from pythia import features
from pythia.models import activity_temp as at
from pythia.models import priors as pr
from pythia.models.activity_temp import FEATURE as ACTIVITY
from pythia.models.activity_temp import with_activity
from pythia.models.links import link_probabilities
from pythia.tfrecords import encode
from pythia.tfrecords.sample import (ALL_ROWS_RULE, STRATUM, sample_chunks, sample_quotas,
                                     sampled_record)

LOGIT = "logits:"  # prefix of a head's logits in a sampled chunk
USE = ("the temperature fit, val_logloss and early stopping's AgeGender score (as shipped); "
       "the gender and age heads' natural-weighted log-loss sums every validation row")


def natural_loss_sums(model: Any, raw: dict[str, np.ndarray], y: dict[str, np.ndarray],
                      heads: tuple[str, ...] = features.TARGETS) -> dict[str, np.ndarray]:
    """Per head, [sum of natural-weighted per-row log-losses, sum of weights] of these rows:
    the champion rule's measure (priors moved to the natural ones, temperature 1) is
    the first over the second, summed over any partition of the rows."""
    weights = model.validation_weights(y["age_gender"])
    return {t: np.array([np.sum(natural_row_losses(model, raw[t], y[t], t) * weights),
                         np.sum(weights)]) for t in heads}


def natural_row_losses(model: Any, logits: np.ndarray, y: np.ndarray, head: str) -> np.ndarray:
    """Per row, ``head``'s log-loss of ``logits`` with the priors moved to the natural ones."""
    p = pr.correct_priors(link_probabilities(logits, model.link(head)),
                          model.train_cfg.prior_correction, model.priors["train"][head],
                          model.priors["natural"][head])
    y = np.asarray(y, np.int64)
    return -np.log(np.maximum(p[np.arange(len(y)), y], pr.PROB_FLOOR))


def losses_of(sums: dict[str, np.ndarray]) -> dict[str, float]:
    """The per-head log-losses of ``natural_loss_sums`` (summed)."""
    return {t: float(s / max(w, 1e-12)) for t, (s, w) in sums.items()}


def validation_losses(model: Any, valid: Any) -> tuple[dict, dict, dict[str, float]]:
    """The MLP's validation pass: (logits, labels) of the kept rows and the natural-weighted
    log-loss per head. A tf.data split goes through the fit's ``ValidationSample`` (kept on
    the model: it remembers the class counts); a numpy one is scored whole."""
    if isinstance(valid, Mapping):
        raw, y = model._raw_and_labels(valid)
        return raw, y, losses_of(natural_loss_sums(model, raw, y))
    cfg = model.train_cfg
    model._valid_sampler = model._valid_sampler or ValidationSample(cfg.max_train_rows, cfg.seed)
    raw, y, sums = model._valid_sampler.score(model, valid)
    return raw, y, losses_of(sums)


def shipped_val_losses(model: Any, valid: Any) -> dict[str, float]:
    """``model.natural_val_losses(valid)`` with AgeGender's at the temperatures the fit would
    ship now: its one temperature and, with ``activity_bins``, the per-bin ones (a warm start's
    from its start's bins), fitted on the kept rows as ``Model._fit_and_calibrate`` fits them,
    then the natural-weighted log-loss of those rows (every row within the cap). The activity
    cut: ``discounted_joint_loss`` when it applies, else the cut of least loss (see the module
    docstring)."""
    losses = model.natural_val_losses(valid)
    raw, y = model._scored_valid
    joint = at.JOINT
    if not len(y[joint]):
        return losses
    temperature = pr.fit_temperature(raw[joint], y[joint], model.link(joint))
    discounted = discounted_joint_loss(model, raw, y, temperature)
    if discounted is not None:
        return {**losses, joint: discounted}
    bins = at.fit_for(model, raw, y, temperature, noise_test=False)
    loss, w = joint_row_losses(model, raw, y, bins, temperature)
    return {**losses, joint: float(np.sum(loss * w) / max(np.sum(w), 1e-12))}


def joint_row_losses(model: Any, raw: Mapping[str, np.ndarray], y: Mapping[str, np.ndarray],
                     bins: "at.ActivityTemperature | None", temperature: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, AgeGender's natural-prior log-loss as ``bins`` ship it (None: the one
    ``temperature``; wide-only bins without the deep part), and its natural weight."""
    joint = at.JOINT
    if bins is None:
        z = np.asarray(raw[joint], np.float64) / temperature
    else:
        z = bins.logits(raw, y[ACTIVITY]) / bins.per_row(y[ACTIVITY])[:, None]
    return natural_row_losses(model, z, y[joint], joint), model.validation_weights(y[joint])


def discounted_joint_loss(model: Any, raw: Mapping[str, np.ndarray],
                          y: Mapping[str, np.ndarray], temperature: float) -> float | None:
    """AgeGender's epoch score with the deep part's lead discounted by its noise: the
    natural-weighted loss of the wide part alone on every pool, plus, per pool below the cut,
    the deep part's lead there (summed, natural-weighted) moved the pool's bar
    (``activity_cut.wide_only_z``) of its user-clustered SEs towards zero (a lead within
    them, or without an SE, counts nothing; a loss counts whole), the cut being the one of
    least score. None -- the least-loss cut applies -- without a deep part to cut, activity
    bins or the rows' user groups, and for a warm-started model (its start's cut is fixed).
    See the module docstring."""
    from pythia.evaluate.margins import paired_margin  # evaluate's SE (lazy: ~1 s)
    groups = at.known_groups(y.get(at.GROUPS), len(y[at.JOINT]))
    if at.DEEP not in raw or model.start is not None or not model.bins_by_activity or (
            groups is None):
        return None
    wide = at.fit_for(model, raw, y, temperature, cut=0)
    if wide is None or wide.deep is None:
        return None
    deep = at.fit_for(model, raw, y, temperature, cut=len(wide.temperature))
    lw, w = joint_row_losses(model, raw, y, wide, temperature)
    ld, _ = joint_row_losses(model, raw, y, deep, temperature)
    pool = np.asarray(wide.pools)[at.bin_of(wide.edges, y[ACTIVITY])]
    bars, credit, best = at.pool_bars(at.wide_only_z(model, wide.counts), wide.pools), 0.0, 0.0
    for p in sorted(set(wide.pools)):
        z = bars[p]
        rows = pool == p
        m = paired_margin(ld[rows] - lw[rows], w[rows], groups[rows])
        lead, se = m.diff * w[rows].sum(), m.se * w[rows].sum()
        if np.isfinite(lead):
            credit += lead if lead >= 0 else min(0.0, lead + z * se) if np.isfinite(se) else 0.0
        best = min(best, credit)
    return float((np.sum(lw * w) + best) / max(np.sum(w), 1e-12))


class BoundedRows:
    """At most ``max_rows`` rows of a split read as numpy chunks, by the training-sample rule.

    The class counts come from the first pass: it keeps rows while they fit the cap; when the
    split turns out larger, a second pass draws the sample (later draws know the counts and
    make one pass). Memory: about 2 x ``max_rows`` rows of the chunks' columns plus a chunk.
    """

    def __init__(self, max_rows: int, seed: int, split: str = "validation") -> None:
        if max_rows < 0:
            raise ValueError(f"max_train_rows must be >= 0 (0 = every row), got {max_rows}")
        self.max_rows, self.seed, self.split = int(max_rows), int(seed), split
        self.counts: dict[int, int] | None = None
        self.record: dict[str, Any] | None = None

    def draw(self, chunks: Callable[[bool], Iterator[dict]]) -> dict[str, np.ndarray]:
        """The kept rows' columns ({} for an empty split); ``chunks(ids)`` starts a pass (with
        the impression ids as str when ``ids``)."""
        sampled = self.counts is not None and self._over_cap(self.counts)
        kept = None if sampled else self._keep_within_cap(chunks(False))
        if kept is None:  # over the cap: the first pass only counted, or counts were known
            quotas = sample_quotas(self.counts, self.max_rows)
            kept = sample_chunks(chunks(True), quotas, self.seed)
        self.record = self._record(kept[STRATUM] if kept else np.zeros(0, np.int64))
        return kept

    def ids(self, x: Mapping[str, Any]) -> np.ndarray:
        """A batch's impression ids as str (the sample's key), or why there are none."""
        if encode.ID_COLUMN not in x:
            raise ValueError(
                f"the MLP's {self.split} dataset has no {encode.ID_COLUMN!r} to draw its "
                f"bounded sample by ({sum(self.counts.values())} rows > max_train_rows="
                f"{self.max_rows}): build it with tfrecords.make_dataset(..., with_ids=True), "
                f"or set [train] max_train_rows = 0 to keep every row")
        return np.array([v.decode() if isinstance(v, bytes) else v
                         for v in np.asarray(x[encode.ID_COLUMN])], dtype=object)

    def _over_cap(self, counts: dict[int, int]) -> bool:
        return self.max_rows > 0 and sum(counts.values()) > self.max_rows

    def _keep_within_cap(self, chunks: Iterator[dict]) -> dict | None:
        """Every row while the rows seen fit the cap, counting the classes; None (the rows
        dropped, the counting finished) as soon as they do not."""
        held: list[dict] | None = []
        tally = np.zeros(0, dtype=np.int64)
        for chunk in chunks:
            c = np.bincount(chunk[STRATUM])
            tally = np.pad(tally, (0, max(0, len(c) - len(tally))))
            tally[:len(c)] += c
            if held is not None:
                held.append(chunk)
                if self._over_cap({0: int(tally.sum())}):
                    held = None
        self.counts = {c: int(n) for c, n in enumerate(tally) if n > 0}
        if held is None:
            return None
        if not held:
            return {}
        return {k: np.concatenate([h[k] for h in held]) for k in held[0]}

    def _record(self, y_kept: np.ndarray) -> dict[str, Any]:
        record = {"split": self.split, "max_rows": self.max_rows, "seed": self.seed,
                  "stratum": STRATUM}
        if not self._over_cap(self.counts):
            n = int(sum(self.counts.values()))
            return dict(record, rule=ALL_ROWS_RULE, rows_available=n, rows_used=n)
        return sampled_record(record, self.counts, y_kept)


class ValidationSample(BoundedRows):
    """Scores a validation ``tf.data.Dataset`` (features may carry the impression id) with
    the model's current weights, one batch at a time, keeping the bounded sample's logits."""

    def score(self, model: Any, valid: Any) -> tuple[dict, dict, dict[str, np.ndarray]]:
        """(logits, labels) of the kept rows as float64 / int64 arrays, and the loss sums
        (``natural_loss_sums``) over every row, or over the kept rows under 'em'."""
        sums: dict[str, np.ndarray] = {}

        def chunks(ids: bool) -> Iterator[dict]:
            sums.update({t: np.zeros(2) for t in features.TARGETS})  # each pass sums afresh
            return self._chunks(model, valid, sums, ids)
        kept = self.draw(chunks)
        if not kept:  # an empty split: no rows, the heads' widths
            widths = model.head_units()
            kept = {**{LOGIT + t: np.zeros((0, widths[t])) for t in features.TARGETS},
                    **{c: np.zeros(0, np.int64) for c in features.LABEL_COLUMNS.values()},
                    ACTIVITY: np.zeros(0)}
        raw = {t: np.asarray(kept[LOGIT + t], dtype=np.float64) for t in features.TARGETS}
        if LOGIT + at.DEEP in kept:  # a wide & deep model's deep part (``network_outputs``)
            raw[at.DEEP] = np.asarray(kept[LOGIT + at.DEEP], dtype=np.float64)
        y = {t: np.asarray(kept[c], dtype=np.int64) for t, c in features.LABEL_COLUMNS.items()}
        y = with_activity(y, kept)  # the per-bin temperature's bins (models.activity_temp)
        self.record["use"] = USE
        if model.train_cfg.prior_correction == "em":
            sums = natural_loss_sums(model, raw, y)
        return raw, y, sums

    def _chunks(self, model: Any, valid: Any, sums: dict[str, np.ndarray],
                ids: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Per batch: the heads' logits (float32, as the network gives them), the labels and,
        with ``ids``, the impression ids; each batch's loss sums added to ``sums``."""
        forward = compiled_forward(model)
        for x, y in valid:
            out = forward({k: x[k] for k in features.FEATURE_NAMES})
            chunk = {LOGIT + t: np.asarray(v) for t, v in out.items()}
            chunk[ACTIVITY] = np.asarray(x[ACTIVITY])
            if encode.GROUP_COLUMN in x:  # the user groups (the activity cut's noise test)
                chunk[encode.GROUP_COLUMN] = np.asarray(x[encode.GROUP_COLUMN], np.int64)
            chunk.update({c: np.asarray(y[t]).astype(np.int64)
                          for t, c in features.LABEL_COLUMNS.items()})
            if ids:
                chunk[encode.ID_COLUMN] = self.ids(x)
            if model.train_cfg.prior_correction != "em":
                raw = {t: chunk[LOGIT + t].astype(np.float64) for t in features.TARGETS}
                part = natural_loss_sums(
                    model, raw, {t: chunk[c] for t, c in features.LABEL_COLUMNS.items()})
                for t, v in part.items():
                    sums[t] += v
            yield chunk


def compiled_forward(model: Any) -> Callable[[dict], dict]:
    """The network's inference pass as one compiled ``tf.function``, made once per Keras model
    (kept on ``model``; the weights are read when called). Called eagerly, the Keras model
    runs its layers op by op from Python: one pass over the default world's 162k validation
    rows took 1.4-1.5 CPU-s eagerly, 0.8-0.9 compiled (0.45 of either is reading the rows),
    and the MLP family makes 25 such passes."""
    import tensorflow as tf

    keras_model = model.keras_model
    made = getattr(model, "_forward", None)
    if made is None or made[0] is not keras_model:
        run = network_outputs(keras_model, bool(model.hparams.get("wide_only_bins", True)))
        made = (keras_model, tf.function(run, reduce_retracing=True))
        model._forward = made
    return made[1]


def network_outputs(keras_model: Any, deep: bool = True) -> Callable[[dict], dict]:
    """The inference pass: each head's logits and, when the network has a wide part (and
    ``deep``: the MLP's ``wide_only_bins``), AgeGender's deep part alone (``activity_temp.DEEP``:
    the head's Dense without its bias, which stays with the wide part) -- what a bin scored
    by the wide part takes out; without it no bin can be wide-only."""
    import keras

    if not deep or not any(layer.name == "wide" for layer in keras_model.layers):
        return lambda x: keras_model(x, training=False)
    head = keras_model.get_layer(at.JOINT)
    outputs = {t: keras_model.get_layer(f"logits_{t}").output for t in features.TARGETS}
    network = keras.Model(keras_model.input, {**outputs, at.DEEP: head.output})

    def run(x: dict) -> dict:
        out = network(x, training=False)  # the bias is read when called: the current weights
        return {**out, at.DEEP: out[at.DEEP] - head.bias}
    return run


PREDICT_BATCH_ROWS = 8192  # rows per call of the compiled pass when predicting arrays


def forward_in_batches(model: Any, x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The heads' logits (float64) of feature arrays by ``compiled_forward``,
    ``PREDICT_BATCH_ROWS`` rows a call: ``keras.Model.predict`` sets up a data adapter and
    callbacks per call, and took 1.1-1.7 CPU-s where this takes 0.3-0.7 on the default world's
    223k test rows (busy machine)."""
    if model.keras_model is None:
        raise RuntimeError("MLP is not fitted")
    forward = compiled_forward(model)
    n = len(next(iter(x.values())))
    parts = [forward({k: v[s:s + PREDICT_BATCH_ROWS] for k, v in x.items()})
             for s in range(0, n, PREDICT_BATCH_ROWS)]
    if not parts:
        return {t: np.zeros((0, model.head_units()[t])) for t in features.TARGETS}
    return {t: np.concatenate([np.asarray(p[t]) for p in parts]).astype(np.float64)
            for t in parts[0]}


def sample_dataset(data: Any, max_rows: int, seed: int, split: str
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any] | None]:
    """``wide.numpy_of(data)`` bounded to ``max_rows`` rows by the training-sample rule (the
    MLP's LR start: the rows the logreg candidate would fit on), and the record of the draw
    (None for a numpy dict, returned as it is). Within the cap: every row, in read order."""
    if isinstance(data, Mapping):
        return data, None
    sampler = BoundedRows(max_rows, seed, split)

    def chunks(ids: bool) -> Iterator[dict]:
        for x, y in data.as_numpy_iterator():
            chunk = {k: v for k, v in x.items() if k != encode.ID_COLUMN}
            chunk.update({features.LABEL_COLUMNS[t]: v for t, v in y.items()})
            if ids:
                chunk[encode.ID_COLUMN] = sampler.ids(x)
            yield chunk
    kept = sampler.draw(chunks)
    kept.pop(encode.ID_COLUMN, None)
    return kept, sampler.record
