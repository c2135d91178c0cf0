"""Everything a watch writes and sends: its files (CSV, score store, events and snapshots), and
beyond them (:class:`SiteOutputs`) event messages to webhooks and MQTT, Prometheus metrics and
the live web view."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamad.publish.events import EventOutputs, Publisher
from streamad.publish.mqtt import MqttPublisher, parse_url
from streamad.publish.prometheus import Metrics
from streamad.publish.watched import Site
from streamad.publish.web import LiveView
from streamad.publish.webhook import WebhookPublisher, check_url
from streamad.sinks import Sink, Sinks
from streamad.sinks.alerts import AlertSink
from streamad.sinks.csv import CsvSink
from streamad.sinks.score_writer import ScoreStoreSink
from streamad.sinks.stats import StatsSink
from streamad.stores.score_store import create_scores


@dataclass(frozen=True, slots=True)
class SiteOutputs:
    """What a watch sends beyond its own files.

    Attributes:
        webhooks: POST each event change to these http(s) URLs.
        mqtt: publish events and state to these mqtt://[user:pass@]host[:port]/prefix.
        inline_snapshot: a closed event's message carries its snapshot PNG.
        metrics: Prometheus metrics, served by the caller (they outlive the watch).
        view: the live web view, served by the caller.
    """

    webhooks: tuple[str, ...] = ()
    mqtt: tuple[str, ...] = ()
    inline_snapshot: bool = False
    metrics: Metrics | None = None
    view: LiveView | None = None

    def __post_init__(self) -> None:  # a malformed URL is a one-line error before anything starts
        for url in self.webhooks:
            check_url(url)
        for url in self.mqtt:
            parse_url(url)


def event_sinks(
    out: Path, threshold: Callable[[str], float | None], outputs: SiteOutputs, *, min_frames: int = 3, clock: Callable[[], float] = time.monotonic
) -> tuple[AlertSink, EventOutputs | None]:
    """The alerts (``events.jsonl`` and snapshots in ``out``) and, when ``outputs`` names
    webhooks or brokers, the sink that sends their messages (after the alerts in a job's sinks:
    the alerts close the open events as they close)."""
    publishers: list[Publisher] = [*map(WebhookPublisher, outputs.webhooks), *map(MqttPublisher, outputs.mqtt)]
    url = outputs.view.url if outputs.view is not None else None
    messages = EventOutputs(publishers, threshold, inline_snapshot=outputs.inline_snapshot, view_url=url, clock=clock) if publishers else None
    alerts = AlertSink(out, threshold, min_frames=min_frames, listeners=[s.event for s in (messages, outputs.view) if s is not None])
    return alerts, messages


def watch_sinks(out: Path, site: Site, outputs: SiteOutputs, *, min_frames: int, stats_every_s: float, **stats: Any) -> tuple[AlertSink, Sinks]:
    """The alerts, and every sink in the order they run: CSV and score store (no maps), alerts,
    their messages, live stats (``stats``: :class:`StatsSink`'s show, json_path, clock), the
    metrics and the web view (attached to this watch)."""
    view, metrics = outputs.view, outputs.metrics
    alerts, messages = event_sinks(out, site.threshold, outputs, min_frames=min_frames, clock=stats["clock"])
    if view is not None:
        view.attach(site, snapshots=alerts.out / "snapshots")
    if metrics is not None:
        metrics.attach(site, events_opened=lambda camera: alerts.opened[camera])
    sinks: list[Sink | None] = [
        CsvSink(out / "scores.csv"),
        ScoreStoreSink(create_scores(out / "scores.zarr"), attrs={"cameras": list(site.cameras)}, write_maps=False),
        alerts,
        messages,  # after the alerts, which close the open events as they close
        StatsSink(site.streams, every_s=stats_every_s, **stats),
        metrics,
        view,
    ]
    return alerts, Sinks(sinks)
