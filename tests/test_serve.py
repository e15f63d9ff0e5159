"""Tests of ``pythia serve``: endpoints, bad input (400 / 413, never 500), hot reload under
concurrent requests, the bundle watcher, and the command line on a real port."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("starlette")
httpx = pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from pythia.config import GLOBAL_REGION  # noqa: E402
from pythia.features import TARGETS  # noqa: E402
from pythia.scoring import Scorer, write_bundle  # noqa: E402
from pythia.scoring.openrtb import score_openrtb  # noqa: E402
from pythia.scoring.serve import MAX_BATCH, create_app, load_scorer  # noqa: E402
from test_scoring import (GEO, REPO, TS, layers, make_encoders, make_export,  # noqa: E402
                          request)

OPENRTB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "openrtb")
V1, V2 = "DemoFlow/1/end/1", "DemoFlow/2/end/2"


def make_bundle(folder: str, version: str, seed: int) -> str:
    encoders = make_encoders()
    models = {GLOBAL_REGION: layers(make_export(encoders, seed=seed)),
              "NA": layers(make_export(encoders, seed=seed + 1, age_link="softmax"))}
    return write_bundle(models, encoders, GEO, version, folder)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("serve")
    return make_bundle(str(root / "b1"), V1, 1), make_bundle(str(root / "b2"), V2, 5)


@pytest.fixture(scope="module")
def scorer(bundles) -> Scorer:
    return Scorer.load(bundles[0])


@pytest.fixture
def client(bundles):
    with TestClient(create_app(bundles[0], max_body_bytes=64 * 1024)) as c:
        yield c


def bid_request(name: str = "banner_site") -> dict:
    with open(os.path.join(OPENRTB, f"{name}.json"), encoding="utf8") as f:
        return json.load(f)


def same_scores(got: dict, want: dict) -> None:
    for t in TARGETS:
        assert list(got[t]) == list(want[t])
        np.testing.assert_allclose(list(got[t].values()), list(want[t].values()), atol=1e-12)
    assert got["region"] == want["region"] and got["model_version"] == want["model_version"]


# ---------------------------------------------------------------------- endpoints

def test_healthz_and_version(client):
    assert client.get("/healthz").json() == {"status": "ok", "model_version": V1}
    v = client.get("/version").json()
    assert v["model_version"] == V1 and v["spec_version"] == v["code_spec_version"]
    assert v["models"] == {GLOBAL_REGION: "mlp", "NA": "mlp"} and v["reloads"] == 0


def test_score_one_request(client, scorer):
    req = request(impression_id="imp-7")
    res = client.post("/score", json=req)
    assert res.status_code == 200
    body = res.json()
    assert body["impression_id"] == "imp-7"
    same_scores(body, scorer.score(req))


def test_score_a_batch_keeps_order(client, scorer):
    reqs = [request(country=c, impression_id=f"i{k}") for k, c in
            enumerate(["US", "DE", "JP", "ZZ", "CA"])]
    body = client.post("/score", json=reqs).json()
    assert [b["impression_id"] for b in body] == [r["impression_id"] for r in reqs]
    for got, want in zip(body, scorer.score_batch(reqs)):
        same_scores(got, want)
    assert client.post("/score", json=[]).json() == []


@pytest.mark.parametrize("name", ["banner_site", "multi_imp", "video_site", "native_app"])
def test_score_openrtb_detected_by_imp(client, scorer, name):
    req = bid_request(name)
    body = client.post(f"/score?ts={TS}", json=req).json()
    want = score_openrtb(scorer, req, TS)
    assert body["id"] == req["id"] and len(body["impressions"]) == len(req["imp"])
    for got, w in zip(body["impressions"], want):
        assert got["imp_id"] == w["imp_id"] and got["model"] == "mlp"
        same_scores(got, w)
    forced = client.post(f"/score?format=openrtb&ts={TS}", json=req).json()
    assert forced == body


def test_openrtb_without_ts_is_scored_now(client):
    res = client.post("/score", json=bid_request())
    assert res.status_code == 200 and len(res.json()["impressions"]) == 1


# ---------------------------------------------------------------------- bad input

@pytest.mark.parametrize("content,query,match", [
    (b"{not json", "", "invalid JSON"),
    (b"", "", "empty body"),
    (b"   ", "", "empty body"),
    (b'"a string"', "", "a string"),
    (b"42", "", "a number"),
    (b"null", "", "null"),
    (b'[{"country": "US"}, 3]', "", "element 1"),
    (b'{"imp": []}', "", "non-empty 'imp'"),
    (b'{"imp": {"id": "1"}}', "", "non-empty 'imp'"),
    (b'{"country": "US"}', "?format=openrtb", "non-empty 'imp'"),
    (b'[{"imp": [{}]}]', "?format=openrtb", "is a JSON object"),
    (b'{"country": "US"}', "?format=xml", "format must be"),
    (b'{"imp": [{"id": "1"}]}', "?ts=yesterday", "ts:"),
    (b'{"imp": [{"id": "1"}]}', "?ts=-5", "ts:"),
    (b"\xff\xfe\x00garbage", "", "invalid JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "", "invalid JSON"),
    (b'{"x": ' + b"1" * 5000 + b"}", "", "invalid JSON"),
])
def test_bad_input_is_a_400_with_the_reason(bundles, content, query, match):
    # a fresh client with the default 1 MiB limit: the deep-nesting case is 200 KB
    with TestClient(create_app(bundles[0])) as c:
        res = c.post(f"/score{query}", content=content,
                     headers={"content-type": "application/json"})
    assert res.status_code == 400, res.text
    assert match in res.json()["error"]


def test_odd_but_valid_values_score(client):
    """The scorer's boundary takes these; the service must answer 200, never 500."""
    for body in [{"impression_id": float("nan"), "country": "US"},  # NaN id: not echoed
                 {"impression_id": {"a": 1}, "ts": "garbage", "os": ["x"]},
                 {"impression_id": "\ud800", "country": "\udfff"},  # lone surrogates
                 {"country": 1e308, "ts": 1e300}, {}]:
        raw = json.dumps(body).encode()  # NaN as the literal NaN, surrogates as \ud800
        res = client.post("/score", content=raw, headers={"content-type": "application/json"})
        assert res.status_code == 200, (body, res.text)
        out = json.loads(res.text)
        assert sum(out["gender"].values()) == pytest.approx(1.0)
    raw = b'{"id": NaN, "imp": [{"id": 1}, "not an imp"]}'
    res = client.post("/score", content=raw, headers={"content-type": "application/json"})
    assert res.status_code == 200 and len(res.json()["impressions"]) == 2
    assert res.json()["id"] is None


def test_too_large_is_a_413(client):
    big = json.dumps([request()] * 2000).encode()  # ~300 KB over the client's 64 KiB
    res = client.post("/score", content=big, headers={"content-type": "application/json"})
    assert res.status_code == 413 and "at most" in res.json()["error"]

    def chunks():  # no Content-Length: the limit holds while streaming
        for _ in range(100):
            yield b" " * 1024

    res = client.post("/score", content=chunks(), headers={"content-type": "application/json"})
    assert res.status_code == 413 and "over" in res.json()["error"]


def test_too_many_requests_in_one_call_is_a_413(bundles):
    with TestClient(create_app(bundles[0])) as c:
        res = c.post("/score", json=[{}] * (MAX_BATCH + 1))
        assert res.status_code == 413 and str(MAX_BATCH) in res.json()["error"]
        res = c.post("/score", json={"imp": [{}] * (MAX_BATCH + 1)})
        assert res.status_code == 413


def test_wrong_method_and_path(client):
    assert client.get("/score").status_code == 405
    assert client.post("/healthz").status_code == 405
    assert client.get("/nope").status_code == 404


# ---------------------------------------------------------------------- reload

def test_reload_swaps_and_a_bad_bundle_keeps_the_old_one(bundles, tmp_path):
    b1, b2 = bundles
    with TestClient(create_app(b1)) as c:
        res = c.post("/admin/reload", json={"path": b2})
        assert res.status_code == 200
        assert res.json() == {"model_version": V2, "bundle": b2, "previous_model_version": V1,
                              "reloads": 1}
        assert c.post("/score", json=request()).json()["model_version"] == V2
        res = c.post("/admin/reload", json={"path": str(tmp_path / "nothing")})
        assert res.status_code == 400 and "still serving 'DemoFlow/2/end/2'" in \
            res.json()["error"]
        assert c.post("/admin/reload", json={"path": 3}).status_code == 400
        assert c.post("/admin/reload", content=b"[1").status_code == 400
        assert c.post("/admin/reload").json()["model_version"] == V2  # same path again
        assert c.get("/version").json()["reloads"] == 2


def test_admin_can_be_switched_off(bundles):
    with TestClient(create_app(bundles[0], admin=False)) as c:
        assert c.post("/admin/reload", json={"path": bundles[1]}).status_code == 404


def test_reload_under_concurrent_requests_drops_nothing(bundles):
    """Reloads flip between two bundles while 600 requests are in flight: every request
    gets a 200 from one whole bundle, and a slow load does not stall scoring."""
    b1, b2 = bundles
    loads = []

    def slow_loader(path: str):
        time.sleep(0.05)  # a load that takes time, in the worker thread
        loads.append(path)
        return load_scorer(path)

    app = create_app(b1, loader=slow_loader)
    versions = {b1: V1, b2: V2}
    reqs = [request(country=c, impression_id=str(i))
            for i, c in enumerate(["US", "DE", "JP", "ZZ"] * 150)]

    async def run():
        transport = httpx.ASGITransport(app=app)
        first_reload_done = asyncio.Event()
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            async def score(i: int):
                if i >= len(reqs) // 2:  # half of them start right after the first swap
                    await first_reload_done.wait()
                await asyncio.sleep(0.001 * (i % 200))  # spread over the reloads
                if i % 3 == 0:
                    return await client.post("/score", json=[reqs[i], reqs[i - 1]])
                return await client.post("/score", json=reqs[i])

            async def reloads():
                out = []
                for k in range(6):
                    out.append(await client.post("/admin/reload",
                                                 json={"path": b2 if k % 2 == 0 else b1}))
                    first_reload_done.set()
                return out

            return await asyncio.gather(reloads(), *(score(i) for i in range(len(reqs))))

    reload_results, *results = asyncio.run(run())
    assert [r.status_code for r in reload_results] == [200] * 6
    assert len(loads) == 7  # the first load + 6 reloads
    errors = [r for r in results if r.status_code != 200]
    assert errors == []
    seen = set()
    for i, r in enumerate(results):
        body = r.json()
        rows = body if isinstance(body, list) else [body]
        assert len({row["model_version"] for row in rows}) == 1  # one bundle per request
        seen.update(row["model_version"] for row in rows)
    assert seen == set(versions.values())  # requests were scored by both, mid-reloads
    assert app.state.slot.current.scorer.version == V1  # the last reload went back to b1


def test_watch_reloads_when_a_symlink_is_repointed(bundles, tmp_path):
    b1, b2 = bundles
    link = tmp_path / "current"
    os.symlink(b1, link)
    with TestClient(create_app(str(link), watch_seconds=0.02)) as c:
        assert c.get("/version").json()["model_version"] == V1
        tmp = tmp_path / "next"
        os.symlink(b2, tmp)
        os.replace(tmp, link)  # the atomic repoint a deploy does
        deadline = time.time() + 10
        while c.get("/version").json()["model_version"] != V2:
            assert time.time() < deadline, "watcher did not reload"
            time.sleep(0.02)
        assert c.post("/score", json=request()).json()["model_version"] == V2
        assert c.get("/version").json()["bundle"] == str(link)


def test_onnx_engine_serves_the_same_scores(bundles, scorer):
    pytest.importorskip("onnxruntime")
    reqs = [request(country=c) for c in ["US", "DE", "JP", "ZZ"] * 10]
    with TestClient(create_app(bundles[0], engine="onnx")) as c:
        assert c.get("/version").json()["engine"] == "onnx"
        body = c.post("/score", json=reqs).json()
    for got, want in zip(body, scorer.score_batch(reqs)):
        for t in TARGETS:
            np.testing.assert_allclose(list(got[t].values()), list(want[t].values()),
                                       atol=1e-5)


def test_a_missing_bundle_fails_before_serving(tmp_path):
    with pytest.raises(FileNotFoundError):
        create_app(str(tmp_path))


# ---------------------------------------------------------------------- the command line

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_serves_on_a_port_and_refuses_a_bad_bundle(bundles, tmp_path):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "pythia.scoring.serve", "--bundle", bundles[0],
           "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline, res = time.time() + 60, None
        while time.time() < deadline:
            try:
                res = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read().decode()
                time.sleep(0.2)
        assert res is not None and res.json()["model_version"] == V1
        out = httpx.post(f"http://127.0.0.1:{port}/score", json=bid_request(), timeout=5)
        assert out.status_code == 200 and out.json()["impressions"][0]["region"] == "NA"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    bad = subprocess.run(cmd[:4] + [str(tmp_path), "--port", str(port)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "cannot serve bundle" in bad.stderr


def test_the_load_benchmarks_bundles_load_and_score(tmp_path):
    """benchmarks/serve_bench.py writes its bundles by hand: they must stay loadable (the
    bundle format moved once under it, and the benchmark stopped at its first line)."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    try:
        import serve_bench
        from scoring_bench import make_requests
    finally:
        sys.path.remove(os.path.join(REPO, "benchmarks"))
    bundles = serve_bench.write_bundles(str(tmp_path))
    encoders = serve_bench.make_encoders()
    requests = make_requests(encoders, 20, seed=1)
    for path in bundles:
        scores = Scorer.load(path).score_batch(requests)
        assert len(scores) == 20
        for target in TARGETS:
            assert all(abs(sum(s[target].values()) - 1) < 1e-5 for s in scores), target
