"""Tests of the OpenRTB 2.6 mapping (pythia.scoring.openrtb) and the bid-log ingest (pythia.ingest).

Fixtures under tests/data/openrtb/ are bid requests written after the spec's examples (banner,
video, native, app, site, a request without device, alpha-3 vs alpha-2 countries).
"""
from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pythia import contract, storage
from pythia.config import GLOBAL_REGION
from pythia.features import IMPRESSION_ID, TARGETS
from pythia.ingest import (EXIT_ERROR, EXIT_OK, EXIT_QUARANTINED, QUARANTINE_SCHEMA,
                           ingest_openrtb, read_lines, run_ingest_cli, write_openrtb_lines)
from pythia.scoring import Scorer, write_bundle
from pythia.scoring.openrtb import (DEVICE_TYPE_OF_CODE, UnmappableRequest, bid_request_line,
                                    contract_row_to_bid_request, country_alpha2, map_bid_request,
                                    map_request, parse_browser, parse_line, parse_ts,
                                    render_mapping, request_rows, score_openrtb,
                                    score_openrtb_lines)
from s3_fixtures import moto_s3, s3_env  # noqa: F401  (pytest fixtures)
from test_scoring import GEO, layers, make_encoders, make_export

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "openrtb")
TS = 1_772_323_200  # 2026-03-01T00:00:00Z
UTC = dt.timezone.utc
COLUMNS = contract.IMPRESSIONS.names


def fixture(name: str) -> dict:
    with open(os.path.join(DATA, f"{name}.json"), encoding="utf8") as f:
        return json.load(f)


def only(request: dict, ts=TS):
    """The single MappedImpression of a one-imp request."""
    (m,) = map_bid_request(request, ts)
    return m


# The contract row each fixture must give (every column; ts is the line's TS).
EXPECTED = {
    "banner_site": dict(
        impression_id="c3f1a2b4-banner-site", user_id="u-9f2e", country="US", geo_region="CA",
        metro="807", zip="94105", inventory_type="site", site_or_app="news.example.com",
        content_category="IAB12", supply_vendor="exchange.example", ad_format="banner",
        ad_size="300x250", device_type="desktop", device_make="Apple",
        device_model="MacBook Pro", os="macOS", os_version="14.4", browser="Firefox"),
    "video_site": dict(
        impression_id="v-20260301-0042", user_id="b-7781", country="DE", geo_region="DE-BY",
        metro=None, zip="80331", inventory_type="site", site_or_app="carreviews.example",
        content_category="cattax7:1", supply_vendor="videossp.example", ad_format="video",
        ad_size="640x360", device_type="desktop", device_make="Dell", device_model="XPS 13",
        os="Windows", os_version="11", browser="Edge"),
    "native_app": dict(
        impression_id="n-app-0007", user_id="6d0a3c1e-4f5b-4c8e-9a77-1b2c3d4e5f60",
        country="JP", geo_region="JP-13", metro=None, zip=None, inventory_type="app",
        site_or_app="com.example.weathernow", content_category="IAB15", supply_vendor=None,
        ad_format="native", ad_size="1200x627", device_type="mobile", device_make="Google",
        device_model="Pixel 8", os="Android", os_version="14", browser=None),
    "banner_app": dict(
        impression_id="mb-4471", user_id="b-pp-1", country="GB", geo_region=None,
        metro="826044", zip=None, inventory_type="app", site_or_app="1234567890",
        content_category="IAB9-30", supply_vendor=None, ad_format="banner", ad_size="320x50",
        device_type="mobile", device_make="Apple", device_model="iPhone", os="iOS",
        os_version="17.4", browser=None),
    "audio_app": dict(
        impression_id="au-3", user_id="u-aud-1", country="BR", geo_region="BR-SP", metro=None,
        zip=None, inventory_type="app", site_or_app="com.example.podcasts",
        content_category="IAB1-6", supply_vendor=None, ad_format="audio", ad_size="0x0",
        device_type="tablet", device_make="Samsung", device_model="Galaxy Tab S9",
        os="Android", os_version="14", browser=None),
}


# ---------------------------------------------------------------------- the mapping

@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_maps_to_the_expected_contract_row(name):
    m = only(fixture(name))
    assert m.problem is None
    assert list(m.row) == COLUMNS
    assert m.row["ts"] == dt.datetime.fromtimestamp(TS, UTC)
    assert {k: v for k, v in m.row.items() if k != "ts"} == EXPECTED[name]
    assert m.imp_id == "1"


def test_missing_device_is_quarantined_as_null_country():
    m = only(fixture("missing_device"))
    assert m.problem[:2] == (contract.NULL_REQUIRED, "country")
    assert m.row["device_type"] is None and m.row["site_or_app"] == "www.shop.example"
    # the scorer still gets a row: missing values are missing features there
    assert map_request(fixture("missing_device"), TS)[0]["ad_size"] == "728x90"


def test_alpha3_and_alpha2_countries_give_the_same_row():
    a3, a2 = only(fixture("banner_site")).row, only(fixture("country_alpha2")).row
    assert a3["country"] == a2["country"] == "US"
    assert a2["geo_region"] == "CA"  # kept as given, upper-cased
    for code, want in [("USA", "US"), ("usa", "US"), ("de", "DE"), ("XKX", "XK"),
                       ("UK", None), ("ZZZ", None), ("U", None)]:
        assert country_alpha2(code) == want, code


@pytest.mark.parametrize("country,reason", [
    ("UK", contract.OUT_OF_DOMAIN), ("", contract.NULL_REQUIRED), (["USA"], contract.WRONG_TYPE),
    (840, contract.OUT_OF_DOMAIN)])
def test_bad_countries_get_their_reason(country, reason):
    req = fixture("banner_site")
    req["device"]["geo"]["country"] = country
    assert only(req).problem[:2] == (reason, "country")


def test_user_geo_is_the_fallback_for_a_device_without_geo():
    req = fixture("banner_site")
    del req["device"]["geo"]
    req["user"]["geo"] = {"country": "FRA", "zip": "75001"}
    row = only(req).row
    assert (row["country"], row["zip"], row["metro"]) == ("FR", "75001", None)


@pytest.mark.parametrize("code,want", [(1, "mobile"), (4, "mobile"), (5, "tablet"),
                                       (2, "desktop"), (3, "ctv"), (7, "ctv"), (4.0, "mobile"),
                                       ("5", "tablet")])
def test_devicetype_codes_map_to_contract_device_types(code, want):
    req = fixture("banner_site")
    req["device"]["devicetype"] = code
    assert only(req).row["device_type"] == want


@pytest.mark.parametrize("code,reason", [(6, contract.OUT_OF_DOMAIN), (8, contract.OUT_OF_DOMAIN),
                                         (99, contract.OUT_OF_DOMAIN),
                                         ("phone", contract.WRONG_TYPE),
                                         (None, contract.NULL_REQUIRED)])
def test_devicetype_without_a_contract_value_is_quarantined(code, reason):
    req = fixture("banner_site")
    req["device"]["devicetype"] = code
    m = only(req)
    assert m.problem[:2] == (reason, "device_type") and m.row["device_type"] is None


def test_device_type_table_covers_exactly_the_contract_domain():
    assert ({t for _, t in DEVICE_TYPE_OF_CODE}
            == set(contract.IMPRESSIONS.column("device_type").allowed))


def test_impression_id_is_the_request_id_or_request_id_colon_imp_id():
    rows = map_request(fixture("multi_imp"), TS)
    assert [r["impression_id"] for r in rows] == ["mi-77:1", "mi-77:2"]
    req = fixture("multi_imp")
    del req["imp"][1]["id"]
    second = map_bid_request(req, TS)[1]
    assert second.problem[:2] == (contract.NULL_REQUIRED, IMPRESSION_ID)
    req = fixture("banner_site")
    del req["imp"][0]["id"]  # one imp: the request id alone identifies it
    assert only(req).row["impression_id"] == "c3f1a2b4-banner-site"


def test_multi_format_imp_takes_the_first_format_in_contract_order():
    rows = map_request(fixture("multi_imp"), TS)
    assert [(r["ad_format"], r["ad_size"]) for r in rows] == [("banner", "300x600"),
                                                              ("banner", "300x250")]
    req = fixture("multi_imp")
    del req["imp"][1]["banner"]
    assert map_request(req, TS)[1]["ad_size"] == "1280x720"


def test_user_id_falls_back_to_buyeruid_then_ifa_but_never_a_zero_ifa():
    req = fixture("native_app")
    assert only(req).row["user_id"] == req["device"]["ifa"]
    req["user"] = {"buyeruid": "b-1"}
    assert only(req).row["user_id"] == "b-1"
    req["user"]["id"] = "u-1"
    assert only(req).row["user_id"] == "u-1"
    req = fixture("banner_app")
    del req["user"]
    assert only(req).problem[:2] == (contract.NULL_REQUIRED, "user_id")


@pytest.mark.parametrize("change,reason", [
    (lambda r: r.update(app={"bundle": "x"}), contract.OUT_OF_DOMAIN),  # site and app
    (lambda r: (r.pop("site"), r.update(dooh={"id": "d"})), contract.OUT_OF_DOMAIN),
    (lambda r: r.pop("site"), contract.NULL_REQUIRED),
    (lambda r: r.update(site="news.example.com"), contract.WRONG_TYPE)])
def test_inventory_must_be_exactly_one_site_or_app(change, reason):
    req = fixture("banner_site")
    change(req)
    assert only(req).problem[:2] == (reason, "inventory_type")


def test_site_without_domain_uses_the_page_host():
    req = fixture("banner_site")
    del req["site"]["domain"]
    assert only(req).row["site_or_app"] == "news.example.com"
    del req["site"]["page"]
    assert only(req).problem[:2] == (contract.NULL_REQUIRED, "site_or_app")


@pytest.mark.parametrize("site,want", [
    ({"cat": ["IAB2-1", "IAB2"]}, "IAB2-1"), ({"cat": ["IAB2"], "cattax": 1}, "IAB2"),
    ({"cat": ["483"], "cattax": 7}, "cattax7:483"), ({"cat": []}, None), ({}, None)])
def test_content_category_is_the_first_cat_qualified_by_cattax(site, want):
    req = fixture("banner_site")
    req["site"] = {"domain": "a.example", **site}
    assert only(req).row["content_category"] == want


def test_supply_vendor_is_the_last_schain_node_in_26_or_25_location():
    req = fixture("banner_site")
    assert only(req).row["supply_vendor"] == "exchange.example"
    req["source"] = {"ext": {"schain": req["source"]["schain"]}}
    assert only(req).row["supply_vendor"] == "exchange.example"
    req["source"] = {"tid": "x"}
    assert only(req).row["supply_vendor"] is None


@pytest.mark.parametrize("imp,want", [
    ({"banner": {"w": 728, "h": 90}}, "728x90"),
    ({"banner": {"format": [{"w": 160, "h": 600}]}}, "160x600"),
    ({"banner": {}}, None),
    ({"video": {"mimes": ["video/mp4"]}}, None),
    ({"native": {"request": json.dumps({"native": {"assets": [
        {"id": 1, "img": {"type": 3, "w": 627, "h": 627}}]}})}}, "627x627"),
    ({"native": {"request": "{not json"}}, None),
    ({"audio": {"mimes": ["audio/mp4"]}}, "0x0"),
    ({}, None)])
def test_ad_size_per_format(imp, want):
    req = fixture("banner_site")
    req["imp"] = [{"id": "1", **imp}]
    m = only(req)
    assert m.row["ad_size"] == want and m.problem is None


@pytest.mark.parametrize("ua,want", [
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36", "Chrome"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) Version/17.4 Mobile/15E148 Safari/604.1", "Safari"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) CriOS/124.0.6367.88 Mobile/15E148 Safari/604.1", "Chrome"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/124.0.0.0 Safari/537.36 OPR/109.0.0.0", "Opera"),
    ("Mozilla/5.0 (Linux; Android 9; KFTRWI) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Silk/124.2.1 like Chrome/124.0.0.0 Safari/537.36", "Silk"),
    ("Mozilla/5.0 (SMART-TV; Linux; Tizen 7.0) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/5.0 Chrome/85.0.4183.93 TV Safari/537.36", None),
    ("Roku/DVP-12.0 (12.0.0.4182-88)", None),
    ("curl/8.4.0", None)])
def test_browser_rules(ua, want):
    assert parse_browser(ua) == want


def test_browser_is_only_read_for_site_inventory():
    req = fixture("native_app")  # an Android webview UA naming Chrome
    assert "Chrome/" in req["device"]["ua"] and only(req).row["browser"] is None


def test_a_number_where_a_string_belongs_is_cast_an_object_is_wrong_type():
    req = fixture("banner_site")
    req["device"]["geo"]["zip"] = 94105
    req["user"]["id"] = 12345
    row = only(req).row
    assert (row["zip"], row["user_id"]) == ("94105", "12345")
    req["device"]["make"] = {"name": "Apple"}
    assert only(req).problem[:2] == (contract.WRONG_TYPE, "device_make")
    req["device"] = "iPhone"
    assert only(req).problem[:2] == (contract.WRONG_TYPE, "country")
    req["user"]["id"] = 10 ** 5000  # more digits than Python prints
    assert only(req).problem[:2] == (contract.WRONG_TYPE, "user_id")


def test_first_breach_follows_the_contract_precedence():
    req = fixture("banner_site")
    req["device"]["devicetype"] = 6  # out_of_domain on device_type
    req["device"]["make"] = ["x"]  # wrong_type on device_make
    assert only(req).problem[:2] == (contract.WRONG_TYPE, "device_make")
    del req["user"]  # null_required on user_id comes first
    assert only(req).problem[:2] == (contract.NULL_REQUIRED, "user_id")


@pytest.mark.parametrize("value,want", [
    (TS, dt.datetime.fromtimestamp(TS, UTC)),
    (TS + 0.123456, dt.datetime.fromtimestamp(TS, UTC) + dt.timedelta(microseconds=123456)),
    (str(TS), dt.datetime.fromtimestamp(TS, UTC)),
    ("2026-03-01T00:00:00.5Z", dt.datetime(2026, 3, 1, 0, 0, 0, 500000, UTC)),
    ("2026-03-01T01:00:00+01:00", dt.datetime(2026, 3, 1, tzinfo=UTC)),
    ("2026-03-01 00:00:00", dt.datetime(2026, 3, 1, tzinfo=UTC)),
    (None, None), ("  ", None)])
def test_parse_ts(value, want):
    assert parse_ts(value) == want


@pytest.mark.parametrize("value", ["yesterday", float("nan"), float("inf"), -1, TS * 1000,
                                   True, [TS], "1969-12-31T23:59:59Z",
                                   "9999-12-31T23:00:00-05:00", 10 ** 20])
def test_parse_ts_rejects_unusable_times(value):
    with pytest.raises(ValueError):
        parse_ts(value)
    m = only(fixture("banner_site"), ts=value)
    assert m.problem[:2] == (contract.BAD_TIMESTAMP, "ts")


def test_missing_ts_is_null_required():
    assert only(fixture("banner_site"), ts=None).problem[:2] == (contract.NULL_REQUIRED, "ts")


@pytest.mark.parametrize("request_,reason,column", [
    ([1, 2], contract.WRONG_TYPE, "request"), ({"id": "x"}, contract.NULL_REQUIRED, "imp"),
    ({"id": "x", "imp": []}, contract.NULL_REQUIRED, "imp"),
    ({"id": "x", "imp": {"id": "1"}}, contract.WRONG_TYPE, "imp")])
def test_requests_without_imps_are_unmappable(request_, reason, column):
    with pytest.raises(UnmappableRequest) as err:
        map_bid_request(request_, TS)
    assert (err.value.reason, err.value.column) == (reason, column)
    assert map_request(request_, TS) == []


def test_an_imp_that_is_not_an_object_is_wrong_type():
    req = fixture("multi_imp")
    req["imp"][1] = "banner"
    ok, bad = map_bid_request(req, TS)
    assert ok.problem is None and bad.problem[:2] == (contract.WRONG_TYPE, IMPRESSION_ID)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "imp", "site", "app", "device", "geo", "user", "banner", "video",
                         "native", "request", "w", "h", "format", "cat", "cattax", "country",
                         "devicetype", "ua", "source", "schain", "nodes", "asi", "ext", "ts"]),
        inner, max_size=5), max_leaves=30)


@settings(max_examples=150, deadline=None)
@given(doc=JSON, ts=JSON)
def test_mapping_never_raises_anything_but_unmappable(doc, ts):
    for request in (doc, {"id": "r", "imp": [doc, {"id": "2"}], "site": doc, "device": doc}):
        try:
            mapped = map_bid_request(request, ts)
        except UnmappableRequest as exc:
            assert exc.reason in contract.REASONS
            continue
        for m in mapped:
            assert list(m.row) == COLUMNS
            assert m.problem is None or m.problem[0] in contract.REASONS
    try:
        parse_line(json.dumps({"ts": ts, "request": doc}))
    except UnmappableRequest:
        pass


def test_parse_line_formats():
    req = fixture("banner_site")
    assert parse_line(json.dumps({"ts": TS, "request": req})) == (req, TS)
    bare = {**req, "ext": {"ts": "2026-03-01T00:00:00Z"}}
    assert parse_line(json.dumps(bare).encode()) == (bare, "2026-03-01T00:00:00Z")
    assert parse_line(json.dumps(req))[1] is None
    for line, column in [("{not json", "line"), ("[1]", "line"), ('{"id": "x"}', "line"),
                         ('{"ts": 1, "request": "x"}', "request"), (b"\xff\xfe{", "line")]:
        with pytest.raises(UnmappableRequest) as err:
            parse_line(line)
        assert (err.value.reason, err.value.column) == (contract.WRONG_TYPE, column)


def test_request_rows_carry_epoch_seconds_for_the_scorer():
    (row,) = request_rows(fixture("banner_site"), TS + 0.9)
    assert row["ts"] == TS and row["country"] == "US"
    assert request_rows(fixture("banner_site"))[0]["ts"] is None


def test_mapping_table_documents_every_contract_column():
    table = render_mapping()
    assert all(f"| `{c}` |" in table for c in COLUMNS)


# ---------------------------------------------------------------------- the inverse

def contract_row(**kw) -> dict:
    row = {c: None for c in COLUMNS}
    row.update(impression_id="i-1", user_id="u-1", ts=dt.datetime(2026, 3, 1, 5, tzinfo=UTC),
               country="US", inventory_type="site", site_or_app="a.example",
               device_type="mobile")
    row.update(kw)
    return row


@pytest.mark.parametrize("kw", [
    {}, dict(ad_format="banner", ad_size="300x250", browser="Chrome", os="Android",
             content_category="IAB1", supply_vendor="ssp", geo_region="US-CA", metro="807",
             zip="94105", device_make="Samsung", device_model="Galaxy S24", os_version="14"),
    dict(inventory_type="app", site_or_app="com.x", ad_format="video", ad_size="640x360",
         device_type="ctv"),
    dict(ad_format="native", ad_size="1200x627", content_category="cattax7:483"),
    dict(ad_format="native"), dict(ad_format="audio", ad_size="0x0", device_type="tablet"),
    dict(device_type="desktop", browser="Edge", os="Windows")])
def test_inverse_maps_back_to_the_same_row(kw):
    row = contract_row(**kw)
    request, ts = parse_line(bid_request_line(contract_row_to_bid_request(row), row["ts"]))
    (back,) = map_bid_request(request, ts)
    assert back.problem is None and back.row == row


@pytest.mark.parametrize("kw", [dict(inventory_type="app", browser="Chrome"),
                                dict(ad_format="audio", ad_size="300x250"),
                                dict(ad_format="banner", ad_size="big"),
                                dict(ad_size="300x250"), dict(country="QQ")])
def test_inverse_refuses_rows_it_cannot_carry(kw):
    with pytest.raises(ValueError):
        contract_row_to_bid_request(contract_row(**kw))


# ---------------------------------------------------------------------- scoring

@pytest.fixture(scope="module")
def scorer(tmp_path_factory) -> Scorer:
    encoders = make_encoders()
    models = {GLOBAL_REGION: layers(make_export(encoders, seed=1)),
              "NA": layers(make_export(encoders, seed=2))}
    out = str(tmp_path_factory.mktemp("rtb") / "bundle")
    return Scorer.load(write_bundle(models, encoders, GEO, "DemoFlow/1/end/2", out))


def test_score_openrtb_scores_every_imp_and_names_the_region_and_model(scorer):
    req = fixture("multi_imp")
    req["device"]["geo"]["country"] = "USA"
    out = score_openrtb(scorer, req, ts=TS)
    assert [o["impression_id"] for o in out] == ["mi-77:1", "mi-77:2"]
    assert [o["imp_id"] for o in out] == ["1", "2"]
    for o, row in zip(out, request_rows(req, TS)):
        assert (o["region"], o["model"], o["model_version"]) == ("NA", "mlp", "DemoFlow/1/end/2")
        want = scorer.score(row)
        for t in TARGETS:
            np.testing.assert_allclose(list(o[t].values()), list(want[t].values()), atol=1e-6)
    (de,) = score_openrtb(scorer, fixture("video_site"), ts=TS)
    assert de["region"] == GLOBAL_REGION  # EU has no champion in this bundle


def test_score_openrtb_never_fails_on_bad_requests(scorer):
    assert score_openrtb(scorer, None) == [] and score_openrtb(scorer, {"id": "x"}) == []
    (out,) = score_openrtb(scorer, fixture("missing_device"), now=TS)
    assert out["region"] == GLOBAL_REGION and np.isclose(sum(out["gender"].values()), 1.0)
    req = fixture("banner_site")
    req["device"] = ["not", "an", "object"]
    assert len(score_openrtb(scorer, req, ts="garbage", now=TS)) == 1


def test_score_openrtb_lines_gives_one_record_per_line(scorer):
    lines = [json.dumps({"ts": TS, "request": fixture("multi_imp")}), "", "{oops",
             json.dumps(fixture("banner_site")).encode()]  # bytes lines, as from stdin.buffer
    out = list(score_openrtb_lines(scorer, lines, now=TS))
    assert [o["line"] for o in out] == [1, 2, 3, 4]
    assert len(out[0]["impressions"]) == 2 and out[0]["id"] == "mi-77"
    assert "error" in out[1] and "invalid JSON" in out[2]["error"]
    assert out[3]["impressions"][0]["region"] == "NA"


# ---------------------------------------------------------------------- ingest

def read_impressions(root: str) -> pa.Table:
    """Every impression under ``root`` with its partition as a ``partition`` column."""
    tables = []
    for uri in storage.list_files(f"{root}/impressions"):
        fs, path = storage.filesystem(uri)
        table = pq.read_table(path, filesystem=fs)
        assert table.schema.equals(contract.IMPRESSION_SCHEMA), uri
        part = "/".join(path.split("/")[-3:-1])
        tables.append(table.append_column("partition", pa.array([part] * table.num_rows)))
    return pa.concat_tables(tables).sort_by(IMPRESSION_ID)


def write_log(path: str, lines: list[str], gz: bool) -> str:
    data = ("\n".join(lines) + "\n").encode()
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)
    return path


def fixture_lines() -> list[str]:
    return [bid_request_line(fixture(n), dt.datetime.fromtimestamp(TS + 3600 * i, UTC))
            for i, n in enumerate(sorted(EXPECTED))]


def test_ingest_writes_the_layout_and_quarantines_with_reasons_and_line_numbers(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    bad = ["{not json", "[1, 2]", "", json.dumps({"ts": TS, "request": {"id": "x", "imp": []}}),
           json.dumps({"ts": "yesterday", "request": fixture("banner_app")}),
           json.dumps({"request": fixture("audio_app")}),  # no ts at all
           json.dumps({"ts": TS, "request": fixture("missing_device")}),
           json.dumps({**fixture("multi_imp"), "ext": {"ts": TS}})]  # bare request, 2 rows
    write_log(str(logs / "a.jsonl.gz"), fixture_lines(), gz=True)
    write_log(str(logs / "b.log"), bad, gz=False)  # plain, whatever its name
    (logs / "_SUCCESS").write_text("")
    out = str(tmp_path / "src")
    s = ingest_openrtb([str(logs)], out)

    assert s["lines"] == len(EXPECTED) + len(bad)
    assert s["blank_lines"] == 1
    q = s["quarantined"]
    assert q["lines"] == 3 and q["impressions"] == 3
    assert q["by_reason"] == {**{r: 0 for r in contract.REASONS}, "wrong_type": 2,
                              "null_required": 3, "bad_timestamp": 1}
    assert s["lines"] == s["blank_lines"] + s["requests"] + q["lines"]
    assert s["impressions"] == s["rows_written"] + q["impressions"] == len(EXPECTED) + 5
    table = read_impressions(out)
    assert table.num_rows == s["rows_written"] == len(EXPECTED) + 2
    assert set(table["partition"].to_pylist()) == {
        f"date=2026-03-01/hour={h:02d}" for h in range(len(EXPECTED))}
    rows = {r[IMPRESSION_ID]: r for r in table.to_pylist()}
    for name, want in EXPECTED.items():
        assert {k: rows[want[IMPRESSION_ID]][k] for k in want} == want

    quarantine = pq.read_table(s["quarantine"])
    assert quarantine.schema.equals(QUARANTINE_SCHEMA)
    got = sorted((r["line"], r["imp_index"], r["reason"], r["reason_column"])
                 for r in quarantine.to_pylist())
    assert got == [(1, None, "wrong_type", "line"), (2, None, "wrong_type", "line"),
                   (4, None, "null_required", "imp"), (5, 0, "bad_timestamp", "ts"),
                   (6, 0, "null_required", "ts"), (7, 0, "null_required", "country")]
    assert all(r["source"].endswith("b.log") for r in quarantine.to_pylist())
    summary = storage.read_json(os.path.join(out, "_ingest", s["run"], "summary.json"))
    assert summary["rows_written"] == s["rows_written"]


def test_ingest_rerun_replaces_its_partitions_and_keeps_the_others(tmp_path):
    lines = fixture_lines()
    first = write_log(str(tmp_path / "all.jsonl"), lines, gz=False)
    out = str(tmp_path / "src")
    ingest_openrtb([first], out)
    ingest_openrtb([first], out)
    assert read_impressions(out).num_rows == len(lines)
    partial = write_log(str(tmp_path / "hour0.jsonl"), lines[:1], gz=False)
    ingest_openrtb([partial], out)  # hour 00 replaced by the same row, hours 01.. untouched
    assert read_impressions(out).num_rows == len(lines)
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no staging left behind


def test_missing_input_is_one_line_naming_it_and_writes_nothing(tmp_path):
    err = io.StringIO()
    missing = str(tmp_path / "nope.jsonl.gz")
    assert run_ingest_cli([missing], str(tmp_path / "src"), stderr=err) == EXIT_ERROR
    assert err.getvalue().count("\n") == 1 and missing in err.getvalue()
    assert not (tmp_path / "src").exists()
    (tmp_path / "empty").mkdir()
    assert run_ingest_cli([str(tmp_path / "empty")], str(tmp_path / "src"),
                          stderr=io.StringIO()) == EXIT_ERROR


def test_cli_exit_codes(tmp_path):
    good = write_log(str(tmp_path / "good.jsonl"), fixture_lines(), gz=False)
    err = io.StringIO()
    assert run_ingest_cli([good], str(tmp_path / "a"), stderr=err) == EXIT_OK
    assert f"{len(EXPECTED)} rows" in err.getvalue()
    bad = write_log(str(tmp_path / "bad.jsonl"), ["nope"], gz=False)
    assert run_ingest_cli([good, bad], str(tmp_path / "b"), stderr=err) == EXIT_QUARANTINED


def test_read_lines_detects_gzip_by_content(tmp_path):
    path = write_log(str(tmp_path / "x.txt"), ["a", "b"], gz=True)
    assert list(read_lines(path)) == [b"a\n", b"b\n"]


def test_ingest_from_and_to_s3(s3_env, moto_s3, tmp_path):
    client = moto_s3.client()
    body = gzip.compress(("\n".join(fixture_lines() + ["{bad"]) + "\n").encode())
    client.put_object(Bucket=moto_s3.bucket, Key="logs/day1/part-0.jsonl.gz", Body=body)
    out = f"s3://{moto_s3.bucket}/src"
    for _ in range(2):  # the rerun overwrites, never duplicates
        s = ingest_openrtb([f"s3://{moto_s3.bucket}/logs"], out)
    assert s["rows_written"] == len(EXPECTED) and s["quarantined"]["lines"] == 1
    assert read_impressions(out).num_rows == len(EXPECTED)
    assert [k for k in moto_s3.keys("src/impressions/") if "hour=00" in k] == [
        "src/impressions/date=2026-03-01/hour=00/part-00000.parquet"]


# ---------------------------------------------------------------------- the synthetic round trip

def test_synthetic_world_round_trips_through_openrtb_lines(tmp_path):
    """world -> OpenRTB JSON lines -> ingest gives the very same impression rows."""
    from pythia.synth import generate_world

    world = str(tmp_path / "world")
    generate_world(world, "tiny", seed=0)
    logs = str(tmp_path / "logs")
    written = write_openrtb_lines(world, logs)
    s = ingest_openrtb([logs], str(tmp_path / "src"))
    direct, via_rtb = read_impressions(world), read_impressions(str(tmp_path / "src"))
    assert written["lines"] == s["lines"] == s["rows_written"] == direct.num_rows > 1000
    assert s["quarantined"]["lines"] + s["quarantined"]["impressions"] == 0
    assert via_rtb.num_rows == direct.num_rows
    for column in direct.column_names:  # every contract column and the partition
        assert via_rtb[column].equals(direct[column]), column
    # every value kind the world writes went through the mapping
    for column in ("ad_format", "device_type", "inventory_type", "browser"):
        assert set(via_rtb[column].to_pylist()) == set(direct[column].to_pylist())

