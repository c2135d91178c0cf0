"""``--http-port N``: a live web view served by the watcher (aiohttp, its only importer, in a
thread of its own): a page with each camera's latest frame with its anomaly map blended, its
score timeline for the last minutes with the threshold, its stream state and counters, and the
events with their snapshots; and the same as JSON (``/api/cameras``, ``/api/events``).

The page is one static file shipped in the package (``static/index.html``: no build step, no
external resource). Bound to 127.0.0.1 unless ``host`` says otherwise; with a ``token``, every
request needs it (``Authorization: Bearer``, ``?token=``, or the cookie the page sets).
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from streamad import pictures
from streamad.errors import ConfigError
from streamad.frames import ScoreMap
from streamad.publish.events import event_id
from streamad.publish.watched import Site
from streamad.sinks.alerts import Event
from streamad.sinks.overlay import display_range

COOKIE = "streamad_token"


@dataclass(slots=True)
class _Camera:
    latest: ScoreMap | None = None
    jpeg: tuple[int, bytes] | None = None  # (frame index, its blended JPEG): encoded once, when asked
    timeline: deque[tuple[float, float]] = field(default_factory=deque)  # (wall time, score)


def _reachable(host: str) -> str:
    """The host part of the view's URL for others: the machine's name where the view listens on
    every interface (``0.0.0.0`` is no address to send a link to), an IPv6 literal in brackets."""
    if host in ("", "0.0.0.0", "::"):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


class LiveView:
    """Serves the page on ``host:port`` (0: any free port, :attr:`port` says which) until
    :meth:`stop`; a sink of the results (:meth:`write`) and of the events (:meth:`event`)."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", token: str | None = None, history_s: float = 300.0, wall: Callable[[], float] = time.time):
        if token is not None and not token.strip():
            raise ConfigError("expected a non-empty --http-token, got an empty one; hint: leave it out for no token")
        self.token, self.history_s, self.wall = token, history_s, wall
        self.site: Site | None = None  # the watch attached
        self.snapshots: Path | None = None  # its snapshot folder
        self.refused = 0  # requests without the token
        self._cameras: dict[str, _Camera] = {}
        self._events: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(self._app())
        try:
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, host, port)
            self._loop.run_until_complete(site.start())
        except OSError as exc:
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()
            raise ConfigError(f"expected --http-port {port} free on {host}, got {exc.strerror or exc}; hint: pick another port") from None
        self.port = int(self._runner.addresses[0][1])
        self.url = f"http://{_reachable(host)}:{self.port}/"  # what event messages link snapshots to
        self._thread = threading.Thread(target=self._loop.run_forever, name="web-view", daemon=True)
        self._thread.start()

    def attach(self, site: Site, *, snapshots: Path) -> None:
        """Show ``site``'s cameras, and serve the snapshots in ``snapshots``."""
        self.site, self.snapshots = site, snapshots

    def write(self, result: ScoreMap) -> None:
        now = self.wall()
        with self._lock:
            camera = self._cameras.setdefault(result.ref.source_id, _Camera())
            camera.latest = result
            camera.timeline.append((now, result.score))
            while camera.timeline and now - camera.timeline[0][0] > self.history_s:
                camera.timeline.popleft()

    def event(self, change: str, event: Event) -> None:
        with self._lock:
            self._events[event_id(event)] = {"id": event_id(event), "open": change != "close", **asdict(event)}

    def close(self) -> None:
        """As a sink: nothing is buffered; the page stays up until :meth:`stop`."""

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.add_routes(
            [
                web.get("/", self._page),
                web.get("/api/cameras", self._cameras_json),
                web.get("/api/events", self._events_json),
                web.get("/api/cameras/{name}/frame.jpg", self._frame),
                web.get("/snapshots/{name}", self._snapshot),
            ]
        )
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        """The token, when there is one: in the header, the query or the page's cookie."""
        if self.token is not None:
            header = request.headers.get("Authorization", "")
            given = header.removeprefix("Bearer ") if header.startswith("Bearer ") else request.query.get("token") or request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                self.refused += 1
                return web.json_response({"error": "expected the view's token (?token=, or Authorization: Bearer)"}, status=401)
        response: web.StreamResponse = await handler(request)
        if self.token is not None and request.query.get("token"):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="Strict")
        return response

    async def _page(self, _: web.Request) -> web.Response:
        page = importlib.resources.files("streamad.publish").joinpath("static/index.html").read_text()
        return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _cameras_json(self, _: web.Request) -> web.Response:
        return web.json_response(self.cameras())

    async def _events_json(self, _: web.Request) -> web.Response:
        return web.json_response(self.events())

    def cameras(self) -> list[dict[str, Any]]:
        """Each camera's state, counters, threshold, last score and timeline (seconds ago, score)."""
        site, now = self.site, self.wall()
        out: list[dict[str, Any]] = []
        if site is None:
            return out
        with self._lock:
            for name, stats in site.streams.items():
                camera = self._cameras.get(name, _Camera())
                latest = camera.latest
                out.append(
                    {
                        "name": name,
                        "state": stats.state or "starting",
                        "received": stats.received,
                        "scored": stats.scored,
                        "learned": stats.learned,
                        "dropped": stats.dropped_total,
                        "reconnects": stats.reconnects,
                        "threshold": site.threshold(name),
                        "score": None if latest is None else latest.score,
                        "index": None if latest is None else latest.ref.index,
                        "frame": f"/api/cameras/{name}/frame.jpg" if latest is not None and latest.original is not None else None,
                        "timeline": [[round(t - now, 2), s] for t, s in camera.timeline],
                    }
                )
        return out

    def events(self) -> list[dict[str, Any]]:
        """Every event of this watch, newest first, with its snapshot's URL once it has one."""
        with self._lock:
            events = sorted(self._events.values(), key=lambda e: e["start_wall"], reverse=True)
        return [{**e, "snapshot": f"/snapshots/{Path(e['snapshot']).name}" if e.get("snapshot") else None} for e in events]

    async def _frame(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        with self._lock:
            camera = self._cameras.get(name)
            latest = camera.latest if camera is not None else None
            cached = camera.jpeg if camera is not None else None
        if camera is None or latest is None or latest.original is None:
            raise web.HTTPNotFound(text=f"no frame of camera {name!r} yet")
        if cached is None or cached[0] != latest.ref.index:
            threshold = self.site.threshold(name) if self.site is not None else None
            vmin, vmax = display_range(threshold)
            alert = threshold is not None and latest.score > threshold
            image = pictures.overlay(latest.original, latest.anomaly_map, vmin=vmin, vmax=vmax, score=latest.score, alert=alert)
            cached = (latest.ref.index, pictures.jpeg(image))
            with self._lock:
                camera.jpeg = cached
        return web.Response(body=cached[1], content_type="image/jpeg", headers={"Cache-Control": "no-store"})

    async def _snapshot(self, request: web.Request) -> web.FileResponse:
        """A snapshot PNG of this watch's folder, by its file name only."""
        name = request.match_info["name"]
        folder = self.snapshots
        if folder is None or "/" in name or "\\" in name or name.startswith(".") or not (folder / name).is_file():
            raise web.HTTPNotFound(text="no such snapshot")
        return web.FileResponse(folder / name, headers={"Cache-Control": "no-store"})
