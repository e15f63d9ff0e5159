"""The MLP's activity cut keeps the deep part in a heavy pool only on evidence beyond noise
(issue 15, session 40: ``activity_temp.noise_aware_cut``): the validation rows' user groups
travel from the split's ``user_id`` through the TFRecords (``encode.GROUP_COLUMN``) to the
fit, and the deep part's lead on a heavy pool is tested with the user-clustered SE the
champion rule uses."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pythia import features
from pythia.config import TrainConfig
from pythia.evaluate.margins import user_groups
from pythia.models import activity_temp as at
from pythia.tfrecords import encode
from test_activity_temperature import activity_encoders

COUNTS = (3, 10, 30, 100)


def _draw(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    p = np.exp(truth - truth.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)


def heavy_users_world(helpful: int, users: int = 40, per_user: int = 100, seed: int = 11):
    """16,000 light rows of one user each, where the deep part is signal; ``users`` heavy
    users (150 impressions today) of ``per_user`` rows each, where it is signal for the first
    ``helpful`` of them and noise for the rest. Returns (encoders, activity, wide, deep,
    labels, user of each row)."""
    rng = np.random.default_rng(seed)
    enc = activity_encoders()
    light = 16_000
    counts = np.concatenate([rng.choice([0, 2, 5, 12, 40], size=light),
                             np.full(users * per_user, 150)])
    user = np.concatenate([np.arange(light), light + np.repeat(np.arange(users), per_user)])
    n = len(counts)
    wide, deep = rng.normal(0, 1.5, (n, 12)), rng.normal(0, 1.5, (n, 12))
    on = np.ones(n)
    heavy = counts >= 100
    on[heavy] = (user[heavy] - light) < helpful
    y = _draw(wide + on[:, None] * deep, rng)
    return enc, enc.numeric[at.FEATURE].normalize(counts), wide, deep, y, user


def _gates(groups, helpful: int, z_min: float = at.CUT_Z_MIN, **kw):
    enc, x, wide, deep, y, user = heavy_users_world(helpful, **kw)
    g = {"none": None, "rows": np.arange(len(y)), "users": user}[groups]
    fitted = at.fit(wide + deep, y, x, enc, COUNTS, 1.0, deep=deep, groups=g, z_min=z_min)
    return (True,) * 5 if fitted is None else fitted.deep  # None: nothing to add


def test_a_heavy_lead_that_is_a_few_users_goes_to_the_wide_part():
    """22 of 40 heavy users gain from the deep part: on 4,000 rows it has the least loss and
    is beyond 2 SEs row by row, but clustered by user its lead is noise (z about -1)."""
    assert _gates("none", 22) == (True,) * 5  # the least-loss cut: no cut
    assert _gates("rows", 22, z_min=2.0) == (True,) * 5  # rows taken for independent users
    assert _gates("users", 22, z_min=2.0) == (True,) * 4 + (False,)
    assert _gates("users", 20) == (True,) * 4 + (False,)  # z about -0.4: noise at any bar


def test_a_lead_beyond_noise_keeps_the_deep_part_and_light_pools_are_never_touched():
    assert _gates("users", 40) == (True,) * 5  # every heavy user gains: beyond noise
    # three heavy users: too few groups for an SE -- within noise, the wide part
    assert _gates("users", 3, users=3, per_user=1200) == (True,) * 4 + (False,)


def test_the_cut_moves_down_only_while_the_pools_left_behind_lead_within_noise():
    d = np.r_[np.full(400, -0.5), np.full(400, -0.01), np.full(400, -0.3)]
    pool_of = np.repeat([0, 1, 2], 400)
    rng = np.random.default_rng(0)
    d = d + rng.normal(0, 0.05, len(d))
    many = np.arange(1200)  # one user per row
    few = np.r_[np.arange(400), 400 + np.arange(800) % 4]  # pools 1-2: four users
    assert at.noise_aware_cut(3, d, pool_of, many) == 3  # every pool's lead beyond noise
    assert at.noise_aware_cut(3, d, pool_of, few) == 1  # down to the light pool, not past it
    assert at.noise_aware_cut(2, d, pool_of, few) == 1
    # each pool on its own rows: a light pool's clear lead (400 users) is not drowned by
    # the noise of four heavy users above it (+-3 nats a row, each user all one sign)
    heavy = np.repeat([3.0, -3.0, 3.0, -3.2], 100)
    d2 = np.r_[np.full(400, -0.5), -0.05 + rng.normal(0, 0.05, 400), heavy]
    assert at.noise_aware_cut(3, d2, pool_of, np.r_[np.arange(800), 800 + np.arange(400) // 100]
                              ) == 2
    # rows without a group (shards written before the column): the least-loss cut stays
    assert at.noise_aware_cut(3, d, pool_of, np.full(1200, -1)) == 3
    assert at.noise_aware_cut(3, d, pool_of, many[:10]) == 3


def test_fit_for_reads_the_groups_from_the_validation_labels():
    enc, x, wide, deep, y, user = heavy_users_world(20)
    groups = user_groups(pd.Series(user).map(lambda u: f"user-{u}"))

    class Model:  # what fit_for reads of a model
        bins_by_activity, encoders, start = True, enc, None
        train_cfg = TrainConfig(activity_bins=COUNTS)

        @staticmethod
        def link(_):
            return "softmax"
    raw = {at.JOINT: wide + deep, at.DEEP: deep}
    labels = at.with_activity({at.JOINT: y}, {at.FEATURE: x, at.GROUPS: groups})
    assert at.fit_for(Model, raw, labels, 1.0).deep == (True,) * 4 + (False,)
    labels.pop(at.GROUPS)
    assert at.fit_for(Model, raw, labels, 1.0).deep == (True,) * 5


# ------------------------------------------------------------------ the groups, end to end

tf = pytest.importorskip("tensorflow")


def test_records_carry_each_rows_user_group_and_older_shards_read_minus_one(tmp_path):
    from pythia.tfrecords import make_dataset, reader
    from test_tfrecords import local_manifest, skewed_split

    frames = {s: skewed_split(300, i) for i, s in enumerate(
        ("train", "validation", "test_natural", "test_resampled"))}
    frames["validation"]["user_id"] = [f"dev-{i % 37}" if i % 11 else None
                                       for i in range(300)]
    manifest = local_manifest(tmp_path / "tfr", frames)
    want = dict(zip(frames["validation"]["impression_id"],
                    user_groups(frames["validation"]["user_id"])))
    got = {}
    for x, _ in make_dataset(manifest, "validation", with_ids=True).as_numpy_iterator():
        got.update(zip((i.decode() for i in x[encode.ID_COLUMN]),
                       x[encode.GROUP_COLUMN].tolist()))
    assert got == want and len(set(want.values())) > 30
    # the numpy reader holds the same column (the TensorFlow-free one equals it:
    # test_tfrecords_columnar compares every column)
    chunk = next(reader.iter_numpy_tf(manifest, "validation", chunk_rows=None))
    assert dict(zip(chunk[encode.ID_COLUMN], chunk[encode.GROUP_COLUMN].tolist())) == want
    # a record written before the column parses to -1 (no group): the cut then stays as fit
    ex = tf.train.Example(features=tf.train.Features(feature={
        **{f.name: (tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))
                    if f.kind == features.CATEGORICAL
                    else tf.train.Feature(float_list=tf.train.FloatList(value=[0.0])))
           for f in features.FEATURES},
        **{c: tf.train.Feature(int64_list=tf.train.Int64List(value=[0]))
           for c in encode.LABEL_COLUMNS},
        encode.ID_COLUMN: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"old"]))}))
    parsed = tf.io.parse_example([ex.SerializeToString()],
                                 reader.feature_description(with_ids=True))
    assert parsed[encode.GROUP_COLUMN].numpy().tolist() == [-1]


def test_the_mlps_validation_sample_keeps_the_groups():
    from pythia.models.mlp_valid import ValidationSample
    from test_mlp_temperature import batches, fake_model, skewed

    d = skewed(900, 4)
    d[encode.GROUP_COLUMN] = np.arange(900) % 50
    parts = batches(d, [300, 300, 300])
    for (x, _), rows in zip(parts, (slice(0, 300), slice(300, 600), slice(600, 900))):
        x[encode.GROUP_COLUMN] = d[encode.GROUP_COLUMN][rows]
    for cap in (0, 500):
        model = fake_model(TrainConfig(max_train_rows=cap))
        _, y, _ = ValidationSample(cap, seed=0).score(model, parts)
        kept = np.asarray(y[at.GROUPS])
        assert len(kept) == (900 if cap == 0 else 500)
        if cap == 0:
            np.testing.assert_array_equal(kept, d[encode.GROUP_COLUMN])


class _Model:
    """What the cut and the epoch score read of an MLP (uniform priors: weights of 1)."""
    bins_by_activity, start = True, None
    train_cfg = TrainConfig(activity_bins=COUNTS)
    priors = {k: {at.JOINT: np.full(12, 1 / 12)} for k in ("train", "natural")}

    def __init__(self, enc, z: float = at.CUT_Z_MIN, heavy: float | None = None) -> None:
        # one bar in every bin unless ``heavy`` sets the heavy bins' own
        self.encoders = enc
        self.hparams = {"wide_only_z": z, "wide_only_z_heavy": z if heavy is None else heavy}

    @staticmethod
    def link(_):
        return "softmax"

    @staticmethod
    def validation_weights(y):
        return np.ones(len(y))


def _scores(helpful: int, z: float = at.CUT_Z_MIN, scale: float = 1.0, noise: float = 1.0
            ) -> dict[str, float]:
    """On the heavy-users world with the deep part's heavy logits times ``scale`` (and times
    ``noise`` for the heavy users it does not help): the epoch score
    (``discounted_joint_loss``), and the loss at the least-loss and noise-tested cuts."""
    from pythia.models import mlp_valid

    enc, x, wide, deep, y, user = heavy_users_world(helpful)
    heavy = x > enc.numeric[at.FEATURE].normalize(99.5)
    unhelped = heavy & (user - (~heavy).sum() >= helpful)
    deep = deep * np.where(heavy, scale, 1.0)[:, None] * np.where(unhelped, noise, 1.0)[:, None]
    raw = {at.JOINT: wide + deep, at.DEEP: deep}
    labels = at.with_activity({at.JOINT: y}, {at.FEATURE: x, at.GROUPS: user})
    model, t = _Model(enc, z), 1.0  # the global temperature (each pool fits its own)

    def loss(bins):
        return float(np.mean(mlp_valid.joint_row_losses(model, raw, labels, bins, t)[0]))
    return {"epoch": mlp_valid.discounted_joint_loss(model, raw, labels, t),
            "least": loss(at.fit_for(model, raw, labels, t, noise_test=False)),
            "tested": loss(at.fit_for(model, raw, labels, t))}


def test_the_epoch_score_gives_a_heavy_lead_within_noise_no_credit():
    """Early stopping's score (``mlp_valid.discounted_joint_loss``): 20 of 40 heavy users gain
    from the deep part, a lead of z about -0.4 that the least-loss cut takes whole; the
    epoch score counts none of it, and the light pools' clear leads less their SE."""
    s = _scores(20)
    assert s["least"] < s["tested"] < s["epoch"]
    # at a bar of 0 every lead counts whole: the least-loss cut's loss
    assert _scores(20, z=0.0)["epoch"] == pytest.approx(s["least"], abs=1e-9)
    # the same score as a deep part that adds nothing to heavy rows
    assert s["epoch"] == pytest.approx(_scores(20, scale=0.0)["epoch"], abs=1e-9)
    # a lead of every heavy user (beyond noise) earns credit
    assert _scores(40)["epoch"] < _scores(40, scale=0.0)["epoch"] - 1e-4


def test_the_epoch_score_moves_continuously_where_the_noise_tested_cut_jumps():
    """As the deep part's noise on the heavy users it does not help fades, its 100+ lead
    passes the noise bar: the noise-tested cut's loss jumps there (the whole lead comes in at
    once); the epoch score's steps stay as small as the least-loss cut's loss's."""
    grid = [_scores(20, noise=a) for a in np.linspace(1.0, 0.0, 11)]
    step = {k: max(abs(b[k] - a[k]) for a, b in zip(grid, grid[1:]))
            for k in ("epoch", "least", "tested")}
    assert step["tested"] > 2.5 * step["least"]
    assert step["epoch"] <= 1.5 * step["least"]


def test_early_stopping_uses_the_discounted_score_and_otherwise_the_least_loss_cut(
        monkeypatch):
    """``shipped_val_losses`` scores AgeGender by ``discounted_joint_loss`` when there is a
    deep part, bins and the rows' user groups; without groups (or with -1, older shards) or
    for a warm-started model, by the cut of least loss; the fit ships the noise-tested one."""
    from pythia.models import mlp_valid
    from test_mlp_temperature import fake_model, skewed

    enc, x, wide, deep, y, user = heavy_users_world(20)
    plain = dict(at.with_activity({at.JOINT: y}, {at.FEATURE: x}))
    grouped = at.with_activity({at.JOINT: y}, {at.FEATURE: x, at.GROUPS: user})
    raw = {at.JOINT: wide + deep, at.DEEP: deep}
    model = _Model(enc)
    assert at.fit_for(model, raw, grouped, 1.0).deep == (True,) * 4 + (False,)
    least = at.fit_for(model, raw, grouped, 1.0, noise_test=False)  # the cut of least loss
    assert least is None or least.deep == (True,) * 5
    assert mlp_valid.discounted_joint_loss(model, raw, grouped, 1.0) is not None
    for labels in (plain, {**grouped, at.GROUPS: np.full(len(y), -1)}):
        assert mlp_valid.discounted_joint_loss(model, raw, labels, 1.0) is None
    model.start = object()  # a warm start keeps its start's cut
    assert mlp_valid.discounted_joint_loss(model, raw, grouped, 1.0) is None
    assert mlp_valid.discounted_joint_loss(_Model(enc), {at.JOINT: raw[at.JOINT]}, grouped,
                                           1.0) is None  # no deep part to cut
    # shipped_val_losses: the discounted score when it applies, else the least-loss cut
    seen = []
    real = at.fit_for
    monkeypatch.setattr(at, "fit_for", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    d = skewed(600, 2)
    d[at.FEATURE] = np.zeros(600, np.float32)
    d[at.GROUPS] = np.arange(600) % 40
    fake = fake_model(TrainConfig(max_train_rows=0))
    mlp_valid.shipped_val_losses(fake, d)
    assert seen and all(kw.get("noise_test") is False for kw in seen)  # no deep part
    monkeypatch.setattr(mlp_valid, "discounted_joint_loss", lambda *a: 1.2345)
    assert mlp_valid.shipped_val_losses(fake, d)["age_gender"] == 1.2345


def test_the_train_line_shows_what_the_noise_test_saw_and_it_is_saved():
    enc, x, wide, deep, y, user = heavy_users_world(20)
    fitted = at.fit(wide + deep, y, x, enc, COUNTS, 1.0, deep=deep, groups=user)
    # tested from the least-loss cut (none) down: 100+ (its lead is noise), then 30-99 (clear)
    assert fitted.lead_z[:3] == (None, None, None)
    assert fitted.lead_z[3] < -at.CUT_Z_MIN < fitted.lead_z[4]
    text = fitted.describe()
    assert "100+: " in text and "(the wide part alone; the deep part's lead z " in text
    assert at.from_json(at.to_json(fitted)) == fitted
    assert at.fit(wide + deep, y, x, enc, COUNTS, 1.0, deep=deep).lead_z is None


def test_the_mlp_hparam_wide_only_z_sets_the_noise_tests_bar():
    from pythia.models import get_model

    enc, x, wide, deep, y, user = heavy_users_world(20)
    raw = {at.JOINT: wide + deep, at.DEEP: deep}
    labels = at.with_activity({at.JOINT: y}, {at.FEATURE: x, at.GROUPS: user})
    gates = {}
    for z in (1.0, 0.25):
        model = get_model("mlp")(enc, {"wide_only_z": z, "wide_only_z_heavy": z},
                                 TrainConfig(activity_bins=COUNTS))
        fitted = at.fit_for(model, raw, labels, 1.0)
        gates[z] = fitted.deep
        assert fitted.lead_z[4] is not None and -1.0 < fitted.lead_z[4] < -0.25
    # the 100+ pool's lead (z about -0.4) is noise at 1 SE, evidence at 0.25
    assert gates == {1.0: (True,) * 4 + (False,), 0.25: (True,) * 5}


def test_heavy_bins_take_their_own_bar():
    """From ``wide_only_heavy_from`` (30) impressions today up the deep part needs a lead of
    ``wide_only_z_heavy`` (2) SEs, elsewhere ``wide_only_z`` (1); a pool takes its lightest
    bin's bar. A 100+ lead of z -1.6 keeps the deep part at one bar and not at the other,
    and the epoch score gives it credit only under the bar it passes."""
    from pythia.models import get_model, mlp_valid

    cfg = TrainConfig(activity_bins=COUNTS)
    mlp = get_model("mlp")
    assert at.wide_only_z(mlp(activity_encoders(), {}, cfg), COUNTS) == (1.0, 1.0, 1.0, 2.0,
                                                                          2.0)
    assert at.wide_only_z(_Model(None, 0.5, 3.0), COUNTS) == (0.5,) * 3 + (3.0,) * 2
    assert at.wide_only_z(mlp(activity_encoders(), {"wide_only_heavy_from": 100}, cfg),
                          COUNTS) == (1.0,) * 4 + (2.0,)
    assert at.pool_bars((1.0, 1.0, 1.0, 2.0, 2.0), (0, 1, 2, 2, 3)) == {0: 1.0, 1: 1.0, 2: 1.0,
                                                                       3: 2.0}
    assert at.pool_bars(1.5, (0, 1, 1)) == 1.5
    enc, x, wide, deep, y, user = heavy_users_world(24)
    raw = {at.JOINT: wide + deep, at.DEEP: deep}
    labels = at.with_activity({at.JOINT: y}, {at.FEATURE: x, at.GROUPS: user})
    shipped = at.fit_for(mlp(enc, {}, cfg), raw, labels, 1.0)  # the defaults: 1 and 2
    assert -2.0 < shipped.lead_z[4] < -1.0
    assert shipped.deep == (True,) * 4 + (False,)
    one_bar = at.fit_for(mlp(enc, {"wide_only_z_heavy": 1.0}, cfg), raw, labels, 1.0)
    assert one_bar.deep == (True,) * 5
    score = {h: mlp_valid.discounted_joint_loss(_Model(enc, 1.0, h), raw, labels, 1.0)
             for h in (1.0, 2.0, 3.0)}
    assert score[1.0] < score[2.0] < score[3.0]  # a higher bar, less credit


def _lucky_world(heavy_users: int, per_user: int, over_confident: float = 1.0, seed: int = 5):
    """16,000 light rows of one user each, labels drawn from ``logits``; ``heavy_users`` users
    with 150 impressions today, ``per_user`` rows each, whose labels are drawn from
    ``logits / over_confident`` -- except with ``over_confident`` 1, where each is the
    logits' argmax (a few users the model happens to get right). Returns (encoders,
    activity, logits, labels, user)."""
    rng = np.random.default_rng(seed)
    enc = activity_encoders()
    light, n_heavy = 16_000, heavy_users * per_user
    counts = np.r_[rng.choice([0, 2, 5, 12, 40], size=light), np.full(n_heavy, 150)]
    user = np.r_[np.arange(light), light + np.repeat(np.arange(heavy_users), per_user)]
    logits = rng.normal(0, 1.5, (light + n_heavy, 12))
    y = _draw(logits, rng)
    heavy = slice(light, None)
    y[heavy] = (logits[heavy].argmax(axis=1) if over_confident == 1.0
                else _draw(logits[heavy] / over_confident, rng))
    return enc, enc.numeric[at.FEATURE].normalize(counts), logits, y, user


def test_a_pools_sharper_temperature_needs_evidence_across_users():
    """Five heavy users' 1,500 validation rows that the model happens to get right: taken as
    independent rows they sharpen their pool (T well below 1, the skewed world's failure);
    with their user groups the sharper temperature is not beyond noise and the pool keeps the
    global one."""
    enc, x, logits, y, user = _lucky_world(5, 300)
    by_rows = at.fit(logits, y, x, enc, COUNTS, 1.0)
    by_users = at.fit(logits, y, x, enc, COUNTS, 1.0, groups=user)
    assert by_rows.temperature[4] < 0.8 and by_rows.fitted[4]
    t = 1.0 if by_users is None else by_users.temperature[4]
    assert t == 1.0 and (by_users is None or not by_users.fitted[4])
    # groups of -1 (shards written before the column): rows alone, as before
    assert at.fit(logits, y, x, enc, COUNTS, 1.0, groups=np.full(len(y), -1)) == by_rows


def test_a_softer_temperature_ships_on_any_gain():
    """Heavy users on whom the model is over-confident (their labels drawn at temperature 3):
    the softer temperature ships, from forty users and from two (over-confidence is what
    log-loss punishes without bound; the asymmetry is the rule's)."""
    for users, per_user in ((40, 40), (2, 800)):
        enc, x, logits, y, user = _lucky_world(users, per_user, over_confident=3.0)
        fitted = at.fit(logits, y, x, enc, COUNTS, 1.0, groups=user)
        assert fitted.fitted[4] and fitted.temperature[4] > 2.0
    loss, base = np.r_[np.full(50, 1.0), np.full(50, 2.0)], np.full(100, 1.6)
    two = np.repeat([0, 1], 50)
    assert not at._gains(loss, base, two)  # sharper, two users: no SE, no
    assert at._gains(loss, base, two, sharper=False) and at._gains(loss, base, None)
