"""``streamad watch``: score live cameras, raise alerts, optionally learn and adapt online.

The engine's stages with what only watch adds: live sources (reconnects, watchdog) with
drop-oldest queues (files block instead), batches gathered across cameras, per-camera routes
that learn or score (and adapt), and the live sinks (alerts, stats). Every frame is accounted
for: received = scored + learned + dropped, by reason.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamad.config import AUTO, FrameScoreConfig, ModelConfig
from streamad.engine import stages
from streamad.engine.assembly import Engine
from streamad.engine.online import CameraModel
from streamad.engine.progress import graceful_interrupt
from streamad.engine.runner import Channel, Runner
from streamad.engine.runtime import pick_device, thread_plan
from streamad.errors import ConfigError
from streamad.features.extractor import Extractors
from streamad.frames import FeatureBatch, Frame, FrameRef, ScoreMap
from streamad.io.cameras import Camera
from streamad.io.live import LiveOptions, LiveStream, is_live
from streamad.io.outputs import check_outputs, input_paths
from streamad.io.urls import redact
from streamad.publish.site import SiteOutputs, watch_sinks
from streamad.publish.watched import Site
from streamad.scorers.registry import resolve
from streamad.sinks.alerts import AlertSink, Event
from streamad.sinks.stats import StreamStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """How ``streamad watch`` batches, alerts, learns and reads its cameras (its flags, by name)."""

    max_batch: int = 8
    max_wait_s: float = 0.05
    queue_size: int = 4
    stats_every_s: float = 10.0
    threshold: float | None = None
    min_frames: int = 3
    learn_for_s: float | None = None
    learn_config: ModelConfig = ModelConfig(method=AUTO, motion=AUTO)  # settled for video when learning starts
    adapt: bool = False
    refresh_every: int = 500
    checkpoint_every_s: float = 300.0
    frame_score: FrameScoreConfig = FrameScoreConfig()
    live: LiveOptions = LiveOptions()
    device: str = "cpu"
    runtime: str = "auto"  # streamad.engine.exported.pick_runtime
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue_size < 1 or self.min_frames < 1:
            raise ConfigError("expected --max-batch, --queue-size and --min-frames >= 1")
        if self.learn_for_s is not None and self.learn_for_s <= 0:
            raise ConfigError(f"expected a positive --learn-for, got {self.learn_for_s} s")
        if self.learn_for_s is not None:
            resolve(self.learn_config.for_sources(True))  # --learn-method/--learn-motion refused now, not at a camera's first frame


@dataclass(slots=True)
class WatchSummary:
    out_dir: str
    streams: dict[str, StreamStats]
    events: list[Event] = field(default_factory=list)
    batches: int = 0
    mixed_batches: int = 0
    interrupted: bool = False

    def lines(self) -> list[str]:
        return [s.line(name) for name, s in self.streams.items()]

    @property
    def gave_up(self) -> list[str]:
        """The cameras that gave up reconnecting (``--max-retries``)."""
        return [name for name, s in self.streams.items() if s.gave_up]


def _readers(
    cameras: Sequence[Camera], streams: dict[str, StreamStats], options: WatchOptions, stopping: Callable[[], bool]
) -> tuple[dict[str, LiveStream], list[Callable[[], Iterator[Frame]]]]:
    """Each camera's live stream, and a reader that counts what it receives."""

    def on_state(camera: str, state: str) -> None:
        streams[camera].state = state

    def on_decode_drop(source_id: str, index: int, reason: str) -> None:
        streams[source_id].count("received")  # read from the stream, but undecodable
        streams[source_id].count("dropped", reason="corrupt frame")

    lives = {c.name: LiveStream(c.url, c.name, options=options.live, on_state=on_state, on_drop=on_decode_drop) for c in cameras}

    def reader(name: str) -> Callable[[], Iterator[Frame]]:
        def frames() -> Iterator[Frame]:
            for frame in lives[name].frames(stopping):
                streams[name].count("received")
                yield frame

        return frames

    return lives, [reader(c.name) for c in cameras]


def _count_drop(streams: dict[str, StreamStats]) -> Callable[[object], None]:
    """Counts a frame a full drop-oldest queue discarded."""

    def on_drop(item: object) -> None:
        if isinstance(item, Frame):
            streams[item.source_id].count("dropped", reason="queue full (drop-oldest)")

    return on_drop


def _route(cam: CameraModel, stats: StreamStats, alerts: AlertSink, hook: Callable[[Sequence[FrameRef]], None] | None) -> stages.Route:
    """A camera's frames to its model: learned (counted) or scored (no adapting during an event)."""

    def run(batch: FeatureBatch) -> list[ScoreMap]:
        learning = cam.learning
        results = cam(batch, hook=hook, event_open=cam.camera.name in alerts.open_events())
        if learning:
            stats.count("learned", len(batch.refs))
        return results

    return run


def _site(cameras: Sequence[Camera], streams: dict[str, StreamStats], models: dict[str, CameraModel]) -> Site:
    """What the sinks read of the watch: the cameras (their URLs redacted), stats and models."""
    cameras_attrs = [{"name": c.name, "url": redact(c.url), "model": c.model} for c in cameras]
    return Site(cameras_attrs, streams, lambda camera: models[camera].threshold, lambda camera: models[camera].describe())


def _sync_states(lives: dict[str, LiveStream], streams: dict[str, StreamStats]) -> None:
    for name, stream in lives.items():
        streams[name].reconnects, streams[name].state, streams[name].gave_up = stream.reconnects, stream.state, stream.gave_up


def _check_cameras(cameras: Sequence[Camera], options: WatchOptions) -> None:
    """Distinct names; and a store of its own for every camera whose model is written."""
    names = [c.name for c in cameras]
    if not cameras or len(set(names)) != len(names):
        raise ConfigError(f"expected at least one camera, with distinct names, got {names}")
    if options.adapt or options.learn_for_s is not None:
        owners: dict[Path, str] = {}
        for camera in cameras:
            shared = owners.setdefault(Path(camera.model).resolve(), camera.name)
            if shared != camera.name:
                raise ConfigError(
                    f"expected a model store per camera to learn or adapt, got {camera.model} for both {shared} and {camera.name}; "
                    f"hint: --model {shared}=a.zarr --model {camera.name}=b.zarr"
                )


def _gathered(runner: Runner, channels: list[Channel[Frame]], options: WatchOptions, summary: WatchSummary, _: Iterator[object]) -> Iterator[list[Frame]]:
    """Batches of the cameras' frames (at most ``max_batch``, waiting at most ``max_wait_s``),
    counted in ``summary``."""
    for batch in runner.gather(channels, max_batch=options.max_batch, max_wait_s=options.max_wait_s):
        summary.batches += 1
        summary.mixed_batches += len({f.source_id for f in batch}) > 1
        yield batch


def watch(
    cameras: Sequence[Camera],
    out_dir: str | Path,
    *,
    options: WatchOptions = WatchOptions(),
    stats_json: str | Path | None = None,
    print_stats: Callable[[str], None] = print,
    scorer_hook: Callable[[Sequence[FrameRef]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    outputs: SiteOutputs = SiteOutputs(),
) -> WatchSummary:
    """Watch ``cameras`` until they all end, ``duration_s`` passes, SIGINT/SIGTERM or ``should_stop()``;
    writes ``scores.csv``, ``scores.zarr``, ``events.jsonl`` and snapshots to ``out_dir``, and
    sends ``outputs``. ``scorer_hook(refs)`` runs before every scored batch (tests slow the scorer)."""
    _check_cameras(cameras, options)
    out, extractors = Path(out_dir), Extractors(pick_device(options.device))
    check_outputs({"the score store": out / "scores.zarr", "the CSV": out / "scores.csv"}, input_paths([c.url for c in cameras] + [c.model for c in cameras]))
    out.mkdir(parents=True, exist_ok=True)
    streams = {c.name: StreamStats() for c in cameras}
    summary = WatchSummary(str(out), streams)
    engine = Engine(runner := Runner(), extractors.device, batch_size=options.max_batch, live=True)
    live = any(is_live(c.url) or options.live.realtime for c in cameras)
    deadline = None if options.duration_s is None else clock() + options.duration_s
    threads = thread_plan(extractors.device, workers=1 if live else None).threads  # an exported graph's, as the backbone's
    with graceful_interrupt(runner) as interrupted, contextlib.ExitStack() as closing:  # closes run on every path, last opened first
        models: dict[str, CameraModel] = {}
        for c in cameras:
            models[c.name] = CameraModel(c, options, extractors, device=str(extractors.device), threads=threads, clock=clock)
            closing.push(models[c.name].closer)  # finishes learning, checkpoints, releases the store
        stats: dict[str, Any] = {"show": print_stats, "json_path": stats_json, "clock": clock, "stats_every_s": options.stats_every_s}
        alerts, sinks = watch_sinks(out, _site(cameras, streams, models), outputs, min_frames=options.min_frames, **stats)
        closing.callback(sinks.close)
        lives, readers = _readers(cameras, streams, options, runner.stopping.is_set)
        for name, live_stream in lives.items():
            models[name].frame_rate = lambda stream=live_stream: stream.fps
        closing.callback(_sync_states, lives, streams)
        channels = runner.sources(readers, maxsize=options.queue_size, policy="drop-oldest" if live else "block", on_drop=_count_drop(streams), name="camera")
        batches = runner.stage(functools.partial(_gathered, runner, channels, options, summary), iter(()), maxsize=1, name="gather")
        features = engine.gathered_features(
            batches, lambda frame: models[frame.source_id].extractor_for(frame), keep_originals=True, run_of=lambda frame: models[frame.source_id].graph
        )
        runner.stop_when(lambda: (deadline is not None and clock() >= deadline) or (should_stop is not None and should_stop()))
        route = lambda sid: _route(models[sid], streams[sid], alerts, scorer_hook)  # noqa: E731
        for result in engine.consume(engine.scores(features, route, min_frames=1)):
            sinks.write(result)
            _sync_states(lives, streams)
        summary.interrupted = interrupted[0]
    summary.events = alerts.events
    return summary
