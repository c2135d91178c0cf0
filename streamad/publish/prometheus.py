"""``--metrics-port N``: Prometheus metrics (prometheus-client, its only importer), read from the
watch's own counters when scraped, so a scrape after the watch equals its summary.

Per camera: ``streamad_frames_received_total``; ``streamad_frames_total{outcome}`` (scored,
learned, dropped: they sum to received); ``streamad_frames_dropped_total{reason}``;
``streamad_reconnects_total``; ``streamad_stream_state{state}`` (1 for the current one);
``streamad_events_opened_total``; ``streamad_frame_score``, ``streamad_threshold``;
``streamad_input_fps``, ``streamad_scored_fps`` (over the last 10 s);
``streamad_latency_seconds`` (histogram: decoded to scored) and its ``_p50``/``_p95`` gauges
over the last 2000 frames; ``streamad_model_info{method, backbone, runtime}``.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from streamad.errors import ConfigError
from streamad.frames import ScoreMap
from streamad.publish.watched import Site

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # latency, seconds
RATE_WINDOW_S = 10.0


@dataclass(slots=True)
class _Camera:
    """What the metrics add to a camera's counters: latency buckets, the last score, rates."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    latency_sum: float = 0.0
    score: float = float("nan")
    samples: deque[tuple[float, int, int]] = field(default_factory=deque)  # (t, received, scored)


class Metrics:
    """Serves ``/metrics`` on ``host:port`` until :meth:`stop` (or the end of its ``with``);
    :meth:`attach` a watch, and give it the results (:meth:`write`: it is a sink). ``port`` 0:
    any free port (:attr:`port` says which)."""

    def __init__(self, port: int, *, host: str = "127.0.0.1", clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.site: Site | None = None  # the watch attached
        self.events_opened: Callable[[str], int] = lambda camera: 0
        self._cameras: dict[str, _Camera] = {}
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.registry.register(self)  # a collector: collect()
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigError(f"expected --metrics-port {port} free on {host}, got {exc.strerror or exc}; hint: pick another port") from None
        self.port = int(self._server.server_address[1])

    def attach(self, site: Site, *, events_opened: Callable[[str], int]) -> None:
        """Read ``site``'s counters, and the events each camera opened, at every scrape."""
        self.site, self.events_opened = site, events_opened

    def write(self, result: ScoreMap) -> None:
        """A scored frame: its latency and score, and a sample for the rates."""
        now = self.clock()
        latency = max(0.0, now - result.ref.t_decoded_s)
        with self._lock:
            camera = self._cameras.setdefault(result.ref.source_id, _Camera())
            camera.buckets[bisect.bisect_left(BUCKETS, latency)] += 1
            camera.latency_sum += latency
            camera.score = result.score
            self._sample(result.ref.source_id, camera, now)

    def _sample(self, name: str, camera: _Camera, now: float) -> None:
        if self.site is None or name not in self.site.streams:
            return
        stats = self.site.streams[name]
        if not camera.samples or now - camera.samples[-1][0] >= 0.5:
            camera.samples.append((now, stats.received, stats.scored))
        while len(camera.samples) > 2 and now - camera.samples[1][0] >= RATE_WINDOW_S:
            camera.samples.popleft()

    def close(self) -> None:
        """As a sink: nothing is buffered; the server stays up until :meth:`stop`."""

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Metrics:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def collect(self) -> Iterator[Metric]:
        """The metrics, read now (prometheus-client calls this on every scrape)."""
        site = self.site
        if site is None:
            return
        with self._lock:
            yield from _counters(site, self.events_opened)
            yield from self._gauges(site)
            yield self._latency()

    def _gauges(self, site: Site) -> Iterator[Metric]:
        score = GaugeMetricFamily("streamad_frame_score", "The last frame score.", labels=["camera"])
        threshold = GaugeMetricFamily("streamad_threshold", "The alert threshold (absent while learning).", labels=["camera"])
        per_s = f"per second over the last {RATE_WINDOW_S:.0f} s"
        rates = {k: GaugeMetricFamily(f"streamad_{k}_fps", f"Frames {k} {per_s}.", labels=["camera"]) for k in ("input", "scored")}
        quantiles = {q: GaugeMetricFamily(f"streamad_latency_p{q}_seconds", f"p{q} latency over the last 2000 frames.", labels=["camera"]) for q in (50, 95)}
        info = GaugeMetricFamily("streamad_model_info", "The model each camera scores with.", labels=["camera", "method", "backbone", "runtime"])
        for name, stats in site.streams.items():
            camera = self._cameras.get(name, _Camera())
            score.add_metric([name], camera.score)
            if (value := site.threshold(name)) is not None:
                threshold.add_metric([name], value)
            if len(camera.samples) >= 2:
                (t0, r0, s0), (t1, r1, s1) = camera.samples[0], camera.samples[-1]
                rates["input"].add_metric([name], (r1 - r0) / max(t1 - t0, 1e-9))
                rates["scored"].add_metric([name], (s1 - s0) / max(t1 - t0, 1e-9))
            for q, family in quantiles.items():
                if (p := stats.percentile(q)) is not None:
                    family.add_metric([name], p)
            model = site.model_of(name)
            info.add_metric([name, model.get("method", ""), model.get("backbone", ""), model.get("runtime", "")], 1.0)
        yield from (score, threshold, *rates.values(), *quantiles.values(), info)

    def _latency(self) -> Metric:
        family = HistogramMetricFamily("streamad_latency_seconds", "Seconds from a frame's decoding to its score.", labels=["camera"])
        for name, camera in self._cameras.items():
            cumulative, buckets = 0, []
            for bound, count in zip([*map(str, BUCKETS), "+Inf"], camera.buckets, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([name], buckets, camera.latency_sum)
        return family


def _counters(site: Site, events_opened: Callable[[str], int]) -> Iterator[Metric]:
    received = CounterMetricFamily("streamad_frames_received", "Frames read from the camera.", labels=["camera"])
    frames = CounterMetricFamily("streamad_frames", "Frames by outcome: scored, learned, dropped (they sum to received).", labels=["camera", "outcome"])
    dropped = CounterMetricFamily("streamad_frames_dropped", "Frames dropped, by reason.", labels=["camera", "reason"])
    reconnects = CounterMetricFamily("streamad_reconnects", "Reconnections of the stream.", labels=["camera"])
    events = CounterMetricFamily("streamad_events_opened", "Events opened.", labels=["camera"])
    state = GaugeMetricFamily("streamad_stream_state", "1 for the stream's current state.", labels=["camera", "state"])
    for name, stats in site.streams.items():
        with stats.lock:
            counted: dict[str, Any] = {"received": stats.received, "scored": stats.scored, "learned": stats.learned, "dropped": dict(stats.dropped)}
        received.add_metric([name], counted["received"])
        for outcome in ("scored", "learned"):
            frames.add_metric([name, outcome], counted[outcome])
        frames.add_metric([name, "dropped"], sum(counted["dropped"].values()))
        for reason, count in counted["dropped"].items():
            dropped.add_metric([name, reason], count)
        reconnects.add_metric([name], stats.reconnects)
        events.add_metric([name], events_opened(name))
        state.add_metric([name, stats.state or "starting"], 1.0)
    yield from (received, frames, dropped, reconnects, events, state)
