"""Load benchmark of ``pythia serve`` on loopback: throughput and latency at 1, 8 and 64 clients.

Writes two bundles of the default MLP shape (random weights: the serving cost does not depend
on them), starts ``python -m pythia.scoring.serve`` on a free loopback port in a subprocess,
and drives ``POST /score`` from an asyncio client (a minimal keep-alive HTTP/1.1 client by
default; ``--client httpx`` for ``httpx.AsyncClient``): per concurrency level, ``C``
clients each send one request at a time (keep-alive), for at most ``--seconds`` or
``--max-requests``, whichever comes first. Then the same at ``--reload-clients`` clients while
``POST /admin/reload`` flips between the two bundles every ``--reload-every`` seconds. Prints
requests/s, p50 / p99 latency as the client sees it, and errors (any status other than 200, or
a transport error), which must be 0. The client runs on the same machine as the server and
takes CPU from it: figures are a floor for the server alone. Usage::

    python benchmarks/serve_bench.py                         # 1, 8, 64 clients; 10 s each
    python benchmarks/serve_bench.py --seconds 3 --body openrtb --engine onnx
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from pythia import features  # noqa: E402
from pythia.config import GLOBAL_REGION, Geography  # noqa: E402
from pythia.features import CATEGORICAL_FEATURES, NUMERIC_FEATURES, TARGETS  # noqa: E402
from pythia.models.export import NUMPY_LAYERS, RUNTIME  # noqa: E402
from pythia.scoring import write_bundle  # noqa: E402
from scoring_bench import make_encoders, make_requests  # noqa: E402

HIDDEN = (256, 128)  # MLPModel.default_hparams()["hidden_units"]
EMBEDDING_MAX_DIM = 16  # MLPModel.default_hparams()["embedding_max_dim"]


def embedding_dim(size: int) -> int:
    """``pythia.models.mlp.embedding_dim`` (not imported: it would load TensorFlow here)."""
    return int(max(1, min(EMBEDDING_MAX_DIM, round(1.6 * size ** 0.56))))


def make_export(encoders, seed: int) -> dict:
    """A random ``export_numpy()`` payload of the default MLP shape."""
    rng = np.random.default_rng(seed)
    emb = [(n, rng.normal(0, 0.1, size=(encoders.vocabularies[n].size,
                                        embedding_dim(encoders.vocabularies[n].size))))
           for n in CATEGORICAL_FEATURES]
    width = sum(t.shape[1] for _, t in emb) + len(NUMERIC_FEATURES)
    trunk = []
    for h in HIDDEN:
        trunk.append((rng.normal(size=(width, h)) / math.sqrt(width), rng.normal(0, 0.1, h),
                      "relu"))
        width = h
    n_age = len(encoders.age_edges)
    k = {"gender": 2, "age": n_age - 1, "age_gender": 2 * n_age}
    links = {"gender": "softmax", "age": "corn", "age_gender": "softmax"}
    n_classes = {t: len(features.class_labels(t, encoders.age_edges)) for t in TARGETS}
    return {"kind": "mlp", "embeddings": emb, "numeric": list(NUMERIC_FEATURES),
            "trunk": trunk,
            "heads": {t: (rng.normal(size=(width, k[t])) / math.sqrt(width),
                          rng.normal(0, 0.1, k[t]), links[t]) for t in TARGETS},
            "temperature": {t: 1.0 for t in TARGETS},
            "prior_ratio": {t: rng.uniform(0.5, 2.0, n_classes[t]) for t in TARGETS}}


def write_bundles(workdir: str) -> tuple[str, str]:
    encoders, geo = make_encoders(), Geography()
    return tuple(write_bundle({GLOBAL_REGION: {"kind": "mlp", RUNTIME: NUMPY_LAYERS,
                                               "export": make_export(encoders, s)}},
                              encoders, geo, f"bench/{s}", os.path.join(workdir, f"bundle-{s}"))
                 for s in (1, 2))


def make_bodies(n: int, kind: str) -> list[bytes]:
    """Request bodies: our request dicts, or one-imp OpenRTB BidRequests with the same
    vocabulary values in their OpenRTB places."""
    rows = make_requests(make_encoders(), n, seed=7)
    if kind == "request":
        return [json.dumps(r).encode() for r in rows]
    rng = np.random.default_rng(8)
    countries = ["USA", "DEU", "FRA", "GBR", "JPN", "BRA", "IND", "CAN"]
    out = []
    for i, r in enumerate(rows):
        w, h = [(300, 250), (728, 90), (320, 50), (160, 600)][i % 4]
        out.append(json.dumps({
            "id": f"req-{i}", "imp": [{"id": "1", "banner": {"w": w, "h": h}}],
            "site": {"domain": r["site_or_app"], "cat": [r["content_category"]]},
            "device": {"devicetype": int(rng.choice([1, 2, 4, 5])), "make": r["device_make"],
                       "model": r["device_model"], "os": r["os"], "osv": r["os_version"],
                       "geo": {"country": str(rng.choice(countries)),
                               "region": r["geo_region"], "metro": r["metro"]}},
            "user": {"id": r["user_id"]}}).encode())
    return out


# ---------------------------------------------------------------------- server

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: str, port: int, engine: str) -> subprocess.Popen:
    import http.client

    cmd = [sys.executable, "-m", "pythia.scoring.serve", "--bundle", bundle, "--port",
           str(port), "--engine", engine]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not answer /healthz within 120 s")


# ---------------------------------------------------------------------- load

class RawClient:
    """A minimal keep-alive HTTP/1.1 client on asyncio streams, one connection per sender.

    Measured on loopback against the same server: one ``httpx.AsyncClient`` request costs
    ~2 ms of client CPU (p50 2.8 ms vs 0.7 ms with ``http.client``), so with httpx the
    benchmark measured httpx. This client parses only what the server sends back (a status
    line, headers with Content-Length, the body).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._conn: tuple | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self._conn is None:
            self._conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._conn
        try:
            writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host.encode(),
                                                            len(body), body))
            status = int((await reader.readline()).split()[1])
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            return status
        except (OSError, IndexError, ValueError, asyncio.IncompleteReadError):
            await self.close()
            raise

    async def close(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn = None


class HttpxClient:
    """The same interface over one shared ``httpx.AsyncClient`` (``--client httpx``)."""

    def __init__(self, shared) -> None:
        self.shared = shared

    async def post(self, path: str, body: bytes) -> int:
        res = await self.shared.post(path, content=body,
                                     headers={"content-type": "application/json"})
        return res.status_code

    async def close(self) -> None:
        pass


async def drive(host: str, port: int, bodies: list[bytes], clients: int, seconds: float,
                max_requests: int, reload: tuple[list[str], float] | None = None,
                client_kind: str = "raw") -> dict:
    """``clients`` concurrent senders, one request in flight each, for at most ``seconds`` /
    ``max_requests``; optionally a reloader flipping bundles every ``reload[1]`` seconds."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    reloads = {"ok": 0, "failed": 0}
    shared = None
    if client_kind == "httpx":
        import httpx
        shared = httpx.AsyncClient(
            base_url=f"http://{host}:{port}", timeout=30,
            limits=httpx.Limits(max_connections=clients + 1,
                                max_keepalive_connections=clients + 1))

    def new_client():
        return HttpxClient(shared) if shared is not None else RawClient(host, port)

    stop_at = time.perf_counter() + seconds

    async def sender(k: int) -> None:
        nonlocal sent
        client, i = new_client(), k
        while sent < max_requests and time.perf_counter() < stop_at:
            sent += 1
            body = bodies[i % len(bodies)]
            i += clients
            t0 = time.perf_counter()
            try:
                status = await client.post("/score", body)
            except Exception as exc:  # any transport failure counts as an error
                status = type(exc).__name__
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
        await client.close()

    async def reloader(paths: list[str], every: float) -> None:
        client, k = new_client(), 0
        while time.perf_counter() < stop_at and sent < max_requests:
            await asyncio.sleep(every)
            k += 1
            try:
                status = await client.post("/admin/reload",
                                           json.dumps({"path": paths[k % 2]}).encode())
            except Exception:
                status = None
            reloads["ok" if status == 200 else "failed"] += 1
        await client.close()

    t0 = time.perf_counter()
    tasks = [sender(k) for k in range(clients)]
    if reload:
        tasks.append(reloader(*reload))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    if shared is not None:
        await shared.aclose()
    lat = np.asarray(latencies) * 1e3
    return {"clients": clients, "requests": len(lat), "seconds": wall,
            "rps": len(lat) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": sum(errors.values()),
            "error_kinds": errors, "reloads": reloads if reload else None}


def print_row(label: str, r: dict, baseline: float | None) -> None:
    ratio = f"{r['rps'] / baseline:5.2f}x" if baseline else "    -  "
    extra = ""
    if r["reloads"] is not None:
        extra = f"   reloads ok {r['reloads']['ok']}, failed {r['reloads']['failed']}"
    if r["error_kinds"]:
        extra += f"   errors by kind {r['error_kinds']}"
    print(f"  {label:24s} {r['requests']:7d} req {r['rps']:8,.0f} req/s ({ratio})  "
          f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}{extra}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="1,8,64", help="concurrency levels")
    parser.add_argument("--seconds", type=float, default=10.0, help="bound per level")
    parser.add_argument("--max-requests", type=int, default=50_000, help="bound per level")
    parser.add_argument("--reload-clients", type=int, default=8)
    parser.add_argument("--reload-every", type=float, default=0.5, help="seconds")
    parser.add_argument("--body", choices=("request", "openrtb"), default="request")
    parser.add_argument("--engine", choices=("numpy", "onnx"), default="numpy")
    parser.add_argument("--client", choices=("raw", "httpx"), default="raw",
                        help="raw asyncio HTTP/1.1 (default) or httpx.AsyncClient (slower: "
                             "then the client, not the server, is measured)")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]

    with tempfile.TemporaryDirectory(prefix="pythia-serve-bench-") as workdir:
        b1, b2 = write_bundles(workdir)
        bodies = make_bodies(2000, args.body)
        host, port = "127.0.0.1", free_port()
        proc = start_server(b1, port, args.engine)
        try:
            print(f"server: python -m pythia.scoring.serve --bundle B --port {port} --engine "
                  f"{args.engine} (one Uvicorn worker); body: one {args.body} "
                  f"(~{np.mean([len(b) for b in bodies]):.0f} bytes); client: asyncio "
                  f"{args.client}, one process on the same machine ({os.cpu_count()} cores)")
            asyncio.run(drive(host, port, bodies, 4, 1.0, 500, client_kind=args.client))
            print(f"\n-- steady load (at most {args.seconds:g} s / {args.max_requests} "
                  f"requests per level); ratios vs 1 client")
            baseline, failed, steady = None, 0, {}
            for c in levels:
                r = asyncio.run(drive(host, port, bodies, c, args.seconds, args.max_requests,
                                      client_kind=args.client))
                print_row(f"{c} client(s)", r, baseline or r["rps"])
                baseline, steady[c] = baseline or r["rps"], r["rps"]
                failed += r["errors"]
            print(f"\n-- during reloads ({args.reload_clients} clients, POST /admin/reload "
                  f"alternating two bundles every {args.reload_every:g} s); ratio vs the "
                  f"same clients without reloads")
            r = asyncio.run(drive(host, port, bodies, args.reload_clients, args.seconds,
                                  args.max_requests, reload=([b1, b2], args.reload_every),
                                  client_kind=args.client))
            print_row(f"{args.reload_clients} client(s) + reloads", r,
                      steady.get(args.reload_clients))
            failed += r["errors"] + r["reloads"]["failed"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"\nerrors in total: {failed} (must be 0)")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
