"""``pythia serve``: the bid-time scorer behind HTTP (Starlette on Uvicorn), with hot reload.

Endpoints (docs/bidder.md has examples):

* ``POST /score`` -- body: one request dict (the impression contract, as ``Scorer.score``
  takes it), a JSON array of them, or an OpenRTB 2.6 ``BidRequest`` (detected by its ``imp``
  key, or forced with ``?format=openrtb``; ``?ts=`` sets the auction time, default now).
  Answers one score, an array of scores in order, or ``{"id", "impressions": [...]}``.
* ``GET /healthz`` -- 200 once a bundle is loaded; ``GET /version`` -- model version, the
  bundle's and this code's feature-spec versions, bundle path, load time, reload count.
* ``POST /admin/reload`` -- ``{"path": ...}`` (default: the current path again, e.g. after a
  symlink was repointed) loads a bundle in a worker thread and swaps it in; or ``--watch N``
  polls the bundle path and reloads when it changes.

Bad input is a 400 naming the problem, a body over ``max_body_bytes`` (or a batch over
``max_batch``) a 413; never a 500 (the body checks live in ``pythia.scoring.serve_input`` and
are re-exported here). A reload never drops a request: every request takes the current scorer
once, at its start, and finishes on it; the swap is one reference assignment, and a bundle that
fails to load leaves the old one serving.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from pythia import features
from pythia.scoring.serve_input import (FORMATS, MAX_BATCH, MAX_BODY_BYTES,  # noqa: F401
                                        BadInput, check_ts, detect_format, parse_body,
                                        read_body)  # FORMATS, MAX_BATCH: re-exported

THREAD_ABOVE_ROWS = 64  # larger batches score in a worker thread: the event loop keeps serving
DEFAULT_PORT = 8080
ENGINES = ("numpy", "onnx")
log = logging.getLogger("pythia.serve")


@dataclass(frozen=True)
class Loaded:
    """One loaded bundle: what a request pins for its whole life."""

    scorer: Any
    path: str
    fingerprint: tuple
    loaded_at: float


def load_scorer(path: str, engine: str = "numpy") -> Any:
    """A ``Scorer`` for a bundle; ``engine='onnx'`` scores batches on ONNX Runtime."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "onnx":
        from pythia.scoring.onnx_export import load_onnx_scorer
        return load_onnx_scorer(path)
    from pythia.scoring.scorer import Scorer
    return Scorer.load(path)


def bundle_fingerprint(path: str) -> tuple:
    """What changes when a bundle at ``path`` is replaced: the resolved folder and the mtime
    and size of its ``bundle.json`` (a new export is written to a new folder and renamed or
    symlinked into place). Empty for a path that is not a local bundle."""
    from pythia.scoring.bundle_doc import BUNDLE_FILE

    real = os.path.realpath(path)
    try:
        st = os.stat(os.path.join(real, BUNDLE_FILE))
    except OSError:
        return ()
    return (real, st.st_mtime_ns, st.st_size, st.st_ino)


class ScorerSlot:
    """Holds the current ``Loaded`` bundle and swaps it atomically.

    Args:
        path: bundle folder to load first.
        loader: ``path -> Scorer`` (default ``load_scorer`` with the NumPy engine).
    """

    def __init__(self, path: str, loader: Callable[[str], Any] = load_scorer) -> None:
        self._loader = loader
        self._lock = threading.Lock()  # one reload at a time (from HTTP or the watcher)
        self.reloads = 0
        self.current = self._load(path)

    def _load(self, path: str) -> Loaded:
        fingerprint = bundle_fingerprint(path)
        scorer = self._loader(path)
        scorer.score({})  # warm-up: first-call costs are paid here, not by a bid
        return Loaded(scorer, path, fingerprint, time.time())

    def reload(self, path: str | None = None) -> tuple[Loaded, Loaded]:
        """Load ``path`` (default: the current path) and make it current.

        Returns:
            (previous, new). Raises whatever the loader raises; the current bundle is then
            unchanged.
        """
        with self._lock:
            previous = self.current
            new = self._load(path or previous.path)
            self.current = new  # one reference assignment: requests see old or new, whole
            self.reloads += 1
        log.warning("reloaded bundle %s (%s) -> %s (%s)", previous.path,
                    previous.scorer.version, new.path, new.scorer.version)
        return previous, new

    def changed(self) -> bool:
        """Whether the current path now holds another bundle than the loaded one."""
        now = bundle_fingerprint(self.current.path)
        return bool(now) and now != self.current.fingerprint


# ---------------------------------------------------------------------- request handling

def score_body(scorer: Any, body: Any, fmt: str, ts: str | None = None) -> Any:
    """Score a decoded body of a detected format (pure: no I/O)."""
    if fmt == "openrtb":
        from pythia.scoring.openrtb import score_openrtb
        return {"id": _echo(body.get("id")), "impressions": score_openrtb(scorer, body, ts)}
    if fmt == "request":
        return _with_id(scorer.score(body), body)
    return [_with_id(s, r) for s, r in zip(scorer.score_batch(body), body)]


def _with_id(score: dict, request: dict) -> dict:
    imp = _echo(request.get(features.IMPRESSION_ID))
    return {features.IMPRESSION_ID: imp, **score} if imp is not None else score


def _echo(value: Any) -> Any:
    """An id echoed back: strings and finite numbers only (NaN is not JSON; objects are not
    ids)."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, float) and value == value and abs(value) != float("inf"):
        return value
    return None


# ---------------------------------------------------------------------- the app

# Long (~115 lines) by design: the route handlers are closures over this app's slot and limits.
def create_app(bundle: str, *, engine: str = "numpy", max_body_bytes: int = MAX_BODY_BYTES,
               admin: bool = True, watch_seconds: float = 0.0,
               loader: Callable[[str], Any] | None = None):
    """The ASGI app serving a bundle (loaded here, so a bad bundle fails before binding).

    Args:
        bundle: bundle folder (local; s3:// loads once but cannot be watched).
        engine: 'numpy' (default) or 'onnx' (batches on ONNX Runtime).
        max_body_bytes: larger bodies get a 413.
        admin: serve ``POST /admin/reload`` (keep the port private if so).
        watch_seconds: > 0 polls the bundle path this often and reloads when it changes.
        loader: ``path -> Scorer`` (tests); default ``load_scorer(path, engine)``.

    Returns:
        A ``starlette.applications.Starlette`` app; ``app.state.slot`` is its ``ScorerSlot``.
    """
    from contextlib import asynccontextmanager

    from anyio import to_thread
    from starlette.applications import Starlette
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    class JSON(JSONResponse):
        # ASCII out: a lone surrogate echoed from the input stays valid JSON (\\udXXX).
        def render(self, content: Any) -> bytes:
            return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")

    slot = ScorerSlot(bundle, loader or (lambda path: load_scorer(path, engine)))

    def error(status: int, message: str) -> JSONResponse:
        return JSON({"error": message}, status_code=status)

    async def score(request: Request) -> Response:
        loaded = slot.current  # pinned: a reload from now on does not affect this request
        try:
            body = parse_body(await read_body(request, max_body_bytes))
            fmt = detect_format(body, request.query_params.get("format", "auto"))
            ts = request.query_params.get("ts")
            check_ts(ts)
        except BadInput as exc:
            return error(exc.status, str(exc))
        except ClientDisconnect:
            return Response(status_code=400)
        rows = len(body) if fmt == "batch" else len(body["imp"]) if fmt == "openrtb" else 1
        if rows > THREAD_ABOVE_ROWS:
            result = await to_thread.run_sync(score_body, loaded.scorer, body, fmt, ts)
        else:
            result = score_body(loaded.scorer, body, fmt, ts)
        return JSON(result)

    async def healthz(request: Request) -> Response:
        return JSON({"status": "ok", "model_version": slot.current.scorer.version})

    async def version(request: Request) -> Response:
        loaded = slot.current
        doc = loaded.scorer.doc
        return JSON({
            "model_version": loaded.scorer.version,
            "spec_version": doc.get("spec_version"),
            "code_spec_version": features.spec_version(),
            "bundle": loaded.path,
            "loaded_at": dt.datetime.fromtimestamp(loaded.loaded_at, dt.timezone.utc)
            .isoformat(),
            "reloads": slot.reloads,
            "engine": engine,
            "models": {r: e.get("kind") for r, e in doc.get("models", {}).items()}})

    async def reload(request: Request) -> Response:
        try:
            raw = await read_body(request, max_body_bytes)
            body = parse_body(raw) if raw.strip() else {}
        except BadInput as exc:
            return error(exc.status, str(exc))
        path = body.get("path") if isinstance(body, dict) else None
        if not isinstance(body, dict) or (path is not None and not isinstance(path, str)):
            return error(400, 'send {"path": "<bundle folder>"} or an empty body (reload the '
                              'current path)')
        try:
            previous, new = await to_thread.run_sync(slot.reload, path)
        except (OSError, ValueError, KeyError) as exc:
            return error(400, f"cannot load bundle {path or slot.current.path!r}: {exc}; "
                              f"still serving {slot.current.scorer.version!r}")
        return JSON({"model_version": new.scorer.version, "bundle": new.path,
                             "previous_model_version": previous.scorer.version,
                             "reloads": slot.reloads})

    async def watch() -> None:
        while True:
            await asyncio.sleep(watch_seconds)
            try:
                if slot.changed():
                    await to_thread.run_sync(slot.reload, None)
            except Exception:  # a half-written bundle: try again next tick, keep serving
                log.exception("watch: reload of %s failed; still serving %s",
                              slot.current.path, slot.current.scorer.version)

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(watch()) if watch_seconds > 0 else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()

    routes = [Route("/score", score, methods=["POST"]),
              Route("/healthz", healthz, methods=["GET"]),
              Route("/version", version, methods=["GET"])]
    if admin:
        routes.append(Route("/admin/reload", reload, methods=["POST"]))
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.slot = slot
    return app


def create_app_from_env():
    """App factory for ``uvicorn --factory`` / several workers: settings from PYTHIA_SERVE_*."""
    return create_app(os.environ["PYTHIA_SERVE_BUNDLE"],
                      engine=os.environ.get("PYTHIA_SERVE_ENGINE", "numpy"),
                      admin=os.environ.get("PYTHIA_SERVE_ADMIN", "1") == "1",
                      watch_seconds=float(os.environ.get("PYTHIA_SERVE_WATCH", "0")))


def run_server(bundle: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
               engine: str = "numpy", workers: int = 1, watch_seconds: float = 0.0,
               admin: bool = True, log_level: str = "warning") -> int:
    """Serve a bundle with Uvicorn until interrupted.

    With ``workers > 1`` each worker process holds its own scorer: ``/admin/reload`` reaches
    only the worker that got the call, so use ``watch_seconds`` to reload them all.

    Returns:
        0 on a clean shutdown, 2 when the bundle cannot be loaded.
    """
    import uvicorn

    settings = dict(host=host, port=port, log_level=log_level, access_log=False,
                    timeout_graceful_shutdown=10)
    try:
        if workers > 1:
            os.environ.update(PYTHIA_SERVE_BUNDLE=bundle, PYTHIA_SERVE_ENGINE=engine,
                              PYTHIA_SERVE_ADMIN="1" if admin else "0",
                              PYTHIA_SERVE_WATCH=str(watch_seconds))
            create_app_from_env()  # fail here, once, rather than in every worker
            uvicorn.run("pythia.scoring.serve:create_app_from_env", factory=True,
                        workers=workers, **settings)
        else:
            uvicorn.run(create_app(bundle, engine=engine, admin=admin,
                                   watch_seconds=watch_seconds), **settings)
    except (OSError, ValueError, KeyError) as exc:
        print(f"pythia serve: cannot serve bundle {bundle!r}: {exc}", file=sys.stderr)
        return 2
    return 0


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pythia serve`` (shared by ``pythia.cli`` and ``python -m``)."""
    parser.add_argument("--bundle", help="bundle folder (a run's `bundle_path` artifact)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--engine", choices=ENGINES, default="numpy",
                        help="onnx: score batches on ONNX Runtime")
    parser.add_argument("--workers", type=int, default=1, help="Uvicorn worker processes")
    parser.add_argument("--watch", type=float, default=0.0, metavar="SECONDS",
                        help="poll the bundle path and reload when it changes")
    parser.add_argument("--no-admin", dest="admin", action="store_false",
                        help="do not serve POST /admin/reload")
    parser.add_argument("--log-level", default="warning")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pythia.scoring.serve",
                                     description=__doc__.split("\n")[0])
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    if not args.bundle:
        parser.error("--bundle is required")
    return run_server(args.bundle, args.host, args.port, engine=args.engine,
                      workers=args.workers, watch_seconds=args.watch, admin=args.admin,
                      log_level=args.log_level)


if __name__ == "__main__":
    raise SystemExit(main())
