"""The bidder's activity counter (``user_impressions_today``) at bid time.

One request scored with and without the counter; unknown values (absent, null, negative, not a
number) are the training mean; the batch paths (dicts, columns, pandas, Arrow) equal the
one-request path; OpenRTB's ``user.ext.impressions_today`` and the HTTP server give the same.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pythia.config import GLOBAL_REGION
from pythia.features import (LOG1P, NUMERIC_FEATURES, TARGETS, USER_IMPRESSIONS_TODAY,
                             NumericStats)
from pythia.scoring import Scorer, write_bundle
from pythia.scoring.boundary import RequestEncoder, clean_count
from pythia.scoring.openrtb import request_rows, score_openrtb
from pythia.scoring.serve import score_body

from test_scoring import GEO, TS, layers, make_encoders, make_export, request

MEAN, STD = 1.2, 0.9  # of log1p(count) in "training"
J = NUMERIC_FEATURES.index(USER_IMPRESSIONS_TODAY)
UNKNOWN = [None, "", "many", -1, -0.5, float("nan"), float("inf"), True, [3], {"n": 3},
           b"\xff"]


@pytest.fixture(scope="module")
def encoders():
    enc = make_encoders()
    enc.numeric[USER_IMPRESSIONS_TODAY] = NumericStats(MEAN, STD, transform=LOG1P)
    return enc


@pytest.fixture(scope="module")
def scorer(tmp_path_factory, encoders) -> Scorer:
    out = str(tmp_path_factory.mktemp("activity") / "bundle")
    models = {GLOBAL_REGION: layers(make_export(encoders, seed=1)),
              "NA": layers(make_export(encoders, seed=2, age_link="softmax"))}
    return Scorer.load(write_bundle(models, encoders, GEO, "DemoFlow/7/end/21", out))


@pytest.mark.parametrize("value,want", [(0, 0.0), (7, 7.0), (2.5, 2.5), ("12", 12.0),
                                        (b" 4 ", 4.0), (np.int64(3), 3.0), (10 ** 400, None)]
                         + [(v, None) for v in UNKNOWN])
def test_clean_count(value, want):
    got = clean_count(value)
    assert (math.isnan(got) if want is None else got == want), (value, got)


def test_the_counter_is_log1p_normalised_and_unknown_is_the_mean(encoders):
    enc = RequestEncoder(encoders, GEO, ["global", "NA"])
    for n in (0, 1, 40):
        _, numeric, _ = enc.encode_one(request(user_impressions_today=n))
        assert numeric[J] == pytest.approx((math.log1p(n) - MEAN) / STD, rel=1e-6)
    _, absent, _ = enc.encode_one(request())
    assert absent[J] == 0.0
    for value in UNKNOWN:
        ids, numeric, region = enc.encode_one(request(user_impressions_today=value))
        assert numeric == absent and region == "NA", value  # unknown, and nothing else moves


def test_one_request_scores_differently_with_the_counter(scorer):
    without = scorer.score(request())
    light, heavy = (scorer.score(request(user_impressions_today=n)) for n in (0, 200))
    for t in TARGETS:
        assert abs(sum(heavy[t].values()) - 1) < 1e-6
    assert max(abs(heavy["age_gender"][k] - light["age_gender"][k])
               for k in light["age_gender"]) > 1e-4
    assert max(abs(without["gender"][k] - light["gender"][k]) for k in light["gender"]) > 1e-6
    assert scorer.score(request(user_impressions_today="nope")) == without


def _many(n: int) -> list:
    values = [0, 3, None, "8", -2, 150, 2.5, "x", float("nan"), 1]
    return [values[i % len(values)] for i in range(n)]


def test_batches_of_every_shape_equal_one_request_at_a_time(encoders, scorer):
    enc = RequestEncoder(encoders, GEO, ["global", "NA"])
    counts = _many(12)
    reqs = [request(user_impressions_today=v, country=("US", "DE")[i % 2])
            for i, v in enumerate(counts)]
    reqs[5].pop(USER_IMPRESSIONS_TODAY)
    one = np.array([enc.encode_one(r, now=TS)[1] for r in reqs], dtype=np.float32)
    ids, numeric, _ = enc.encode_many(reqs, now=TS)
    np.testing.assert_array_equal(numeric, one)
    ints = [0, 3, 1, 8, 0, 150, 2, 1, 4, 1, 0, 9]  # typed columns: int64, Arrow with nulls
    typed = [request(user_impressions_today=v) for v in ints]
    typed_one = np.array([enc.encode_one(r, now=TS)[1] for r in typed], dtype=np.float32)
    frame = pd.DataFrame(typed)
    np.testing.assert_array_equal(enc.encode_many(frame, now=TS)[1], typed_one)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    np.testing.assert_array_equal(enc.encode_many(table, now=TS)[1], typed_one)
    nulls = table.set_column(table.schema.get_field_index(USER_IMPRESSIONS_TODAY),
                             USER_IMPRESSIONS_TODAY, pa.array([None] + ints[1:], pa.int64()))
    got = enc.encode_many(nulls, now=TS)[1]
    assert got[0, J] == 0.0 and np.array_equal(got[1:], typed_one[1:])
    batch = scorer.score_batch(reqs, now=TS)
    for got, r in zip(batch, reqs):  # float32 rounding of a batch vs one row: 1e-6
        want = scorer.score(r, now=TS)
        for t in TARGETS:
            np.testing.assert_allclose(list(got[t].values()), list(want[t].values()),
                                       atol=1e-6)


def _bid_request(counter=None) -> dict:
    user = {"id": "user-1"}
    if counter is not None:
        user["ext"] = {"impressions_today": counter}
    return {"id": "req-1", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}},
                                   {"id": "2", "banner": {"w": 728, "h": 90}}],
            "site": {"domain": "example.com"}, "device": {"devicetype": 2, "os": "iOS",
                                                          "geo": {"country": "USA"}},
            "user": user}


def test_openrtb_user_ext_counter_reaches_every_imp_and_http_agrees(scorer):
    with_counter, without = _bid_request(25), _bid_request()
    rows = request_rows(with_counter, TS)
    assert [r[USER_IMPRESSIONS_TODAY] for r in rows] == [25, 25]
    assert [r[USER_IMPRESSIONS_TODAY] for r in request_rows(without, TS)] == [None, None]
    got = score_openrtb(scorer, with_counter, TS)
    assert [{t: g[t] for t in TARGETS} for g in got] == [
        {t: s[t] for t in TARGETS} for s in scorer.score_batch(rows)]
    plain = score_openrtb(scorer, without, TS)
    assert abs(got[0]["gender"]["F"] - plain[0]["gender"]["F"]) > 1e-6
    one_imp = dict(with_counter, imp=with_counter["imp"][:1])  # the one-request path
    assert score_openrtb(scorer, one_imp, TS)[0]["gender"]["F"] == pytest.approx(
        got[0]["gender"]["F"], abs=1e-6)
    http = score_body(scorer, with_counter, "openrtb", str(TS))
    assert [i["gender"] for i in http["impressions"]] == [g["gender"] for g in got]
    http_plain = score_body(scorer, request(user_impressions_today=25), "request")
    assert http_plain["gender"] == scorer.score(request(user_impressions_today=25))["gender"]


def test_pythia_score_reads_the_counter_from_each_line(scorer):
    import io
    import json

    from pythia.scoring import run_score_cli

    reqs = [request(user_impressions_today=n) for n in (0, 60)] + [request()]
    out = io.StringIO()
    assert run_score_cli(scorer, io.StringIO("".join(json.dumps(r) + "\n" for r in reqs)),
                         out) == 0
    got = [json.loads(line) for line in out.getvalue().splitlines()]
    for g, r in zip(got, reqs):
        np.testing.assert_allclose(list(g["gender"].values()),
                                   list(scorer.score(r)["gender"].values()), atol=1e-6)
    assert abs(got[0]["gender"]["F"] - got[1]["gender"]["F"]) > 1e-6
