"""``streamad watch``: score live cameras, raise alerts, optionally learn and adapt online.

Per camera: a :class:`~streamad.live.LiveStream` (reconnects, watchdog) in its own thread with a
drop-oldest queue (files block instead: nothing dropped). Frames of all cameras are gathered
into shared backbone batches (``max_batch``, ``max_wait_s``), features are projected and scored
against each camera's own model, and every frame is accounted for: received = scored + learned
+ dropped (by reason), shown in the periodic stats and the final summary.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from pipelines.common import graceful_interrupt
from pipelines.score import decision_threshold_for
from streamad import pictures, stages
from streamad.anomaly_map import TemporalMean
from streamad.decode import redact
from streamad.errors import ConfigError
from streamad.frames import Frame, FrameRef
from streamad.live import LiveOptions, LiveStream, is_live
from streamad.model import AnomalyModel, ModelConfig
from streamad.model_store import (
    Calibration,
    FitState,
    Threshold,
    base_attrs,
    load_model,
    open_store,
    read_threshold,
    write_checkpoint,
    write_factors,
    write_threshold,
)
from streamad.preprocess import default_input_hw
from streamad.runner import Runner
from streamad.score_store import ScoreWriter
from streamad.store import ZarrStore

logger = logging.getLogger(__name__)

HOLDOUT_EVERY = 10  # while learning, every 10th frame is kept out to calibrate on
MAX_CALIBRATION = 64  # held-out embeddings kept while learning (about 2 MB each)


@dataclass(frozen=True, slots=True)
class Camera:
    """A camera: its name, URL (or file) and model store."""

    name: str
    url: str
    model: str


@dataclass(frozen=True, slots=True)
class WatchOptions:
    max_batch: int = 8
    max_wait_s: float = 0.05
    queue_size: int = 4
    stats_every_s: float = 10.0
    threshold: float | None = None
    min_frames: int = 3
    learn_for_s: float | None = None
    learn_config: ModelConfig = ModelConfig()
    adapt: bool = False
    refresh_every: int = 500
    checkpoint_every_s: float = 300.0
    frame_score: stages.FrameScoreConfig = stages.FrameScoreConfig()
    live: LiveOptions = LiveOptions()
    device: str = "cpu"
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.queue_size < 1 or self.min_frames < 1:
            raise ConfigError("expected --max-batch, --queue-size and --min-frames >= 1")
        if self.learn_for_s is not None and self.learn_for_s <= 0:
            raise ConfigError(f"expected a positive --learn-for, got {self.learn_for_s} s")


@dataclass(slots=True)
class StreamStats:
    """Counts and latencies of one camera (cumulative, plus a window for rates)."""

    received: int = 0
    scored: int = 0
    learned: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    state: str = ""
    reconnects: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    window: dict[str, float] = field(default_factory=dict)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def balanced(self) -> bool:
        return self.received == self.scored + self.learned + self.dropped_total

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(np.asarray(self.latencies), q)) if self.latencies else None


@dataclass(slots=True)
class Event:
    camera: str
    start_index: int
    start_pts_s: float
    start_wall: float
    peak_score: float
    peak_index: int
    end_index: int | None = None
    end_pts_s: float | None = None
    end_wall: float | None = None
    snapshot: str | None = None


@dataclass(slots=True)
class WatchSummary:
    out_dir: str
    streams: dict[str, StreamStats]
    events: list[Event]
    batches: int = 0
    mixed_batches: int = 0
    interrupted: bool = False

    def lines(self) -> list[str]:
        out = []
        for name, s in self.streams.items():
            drops = ", ".join(f"{k}: {v}" for k, v in sorted(s.dropped.items())) or "none"
            learned = f" + learned {s.learned}" if s.learned else ""
            check = "ok" if s.balanced() else "MISMATCH"
            p95 = s.percentile(95)
            latency = f", p95 latency {1000 * p95:.0f} ms" if p95 is not None else ""
            out.append(
                f"{name}: received {s.received} = scored {s.scored}{learned} + dropped {s.dropped_total} ({check}; drops: {drops}); "
                f"reconnects {s.reconnects}{latency}"
            )
        return out


class _CameraModel:
    """One camera's model, learning state, alert state and adaptation counters."""

    def __init__(self, camera: Camera, options: WatchOptions, device: str) -> None:
        self.camera, self.options, self.device = camera, options, device
        self.model: AnomalyModel | None = None
        self.calibration: Calibration | None = None
        self.threshold: float | None = None
        self.state = FitState()
        self.store: Any = None
        self.learning_until: float | None = None
        self.learning_from_pts = 0.0
        self.held_out: list[torch.Tensor] = []
        self.adapted_since_refresh = 0
        self.dirty = False  # statistics changed since the store was written
        self.stored_threshold: Threshold | None = None
        self.last_checkpoint = time.monotonic()
        window = options.frame_score.window
        self.smoother = TemporalMean(window) if window > 1 else None
        self.above = 0
        self.below = 0
        self.event: Event | None = None
        self.peak_image: np.ndarray | None = None
        self.peak_map: np.ndarray | None = None
        path = Path(camera.model)
        if (path / "zarr.json").is_file():
            self.store = open_store(path, mode="a")
            self.model, self.calibration = load_model(self.store, where=str(path), device=device)
            self.threshold = decision_threshold_for(self.store, options.threshold, options.frame_score.attrs())
            self.stored_threshold = read_threshold(self.store) if self.threshold is not None and options.threshold is None else None
            if self.threshold is None and self.calibration is not None and len(self.calibration.normal_scores):
                self.threshold = float(np.quantile(self.calibration.normal_scores, 0.99))
            self.state.frames_seen = int(self.model.gaussian.n)
        elif options.learn_for_s is None:
            raise ConfigError(f"expected a fitted model at {path} for camera {camera.name}, got none; hint: fit one, or pass --learn-for DURATION")

    @property
    def learning(self) -> bool:
        return self.model is None or self.learning_until is not None

    def start_learning(self, frame: Frame) -> None:
        """A new model sized for this camera's frames; learns for ``learn_for_s`` of wall time or
        of stream time (presentation times), whichever passes first (a file decodes faster than
        real time)."""
        config = self.options.learn_config
        if config.input_hw is None:
            config = replace(config, input_hw=default_input_hw(frame.image.shape[:2]))
        self.model = AnomalyModel(config, device=self.device)
        self.store = open_store(self.camera.model, mode="w")
        self.store.set_attrs(base_attrs(self.model))
        self.learning_until = time.monotonic() + float(self.options.learn_for_s or 0)
        self.learning_from_pts = frame.pts_s
        logger.warning("%s: learning a model for %.0f s into %s", self.camera.name, self.options.learn_for_s, self.camera.model)

    def learn(self, refs: Sequence[FrameRef], embeddings: torch.Tensor) -> None:
        assert self.model is not None
        keep = [i for i, ref in enumerate(refs) if ref.index % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
        held = [i for i, ref in enumerate(refs) if ref.index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
        if keep:
            self.model.gaussian.update(embeddings[keep])
        for i in held:
            if len(self.held_out) < MAX_CALIBRATION:
                self.held_out.append(embeddings[i].clone())
        self.state.frames_seen = int(self.model.gaussian.n)
        for ref in refs:
            self.state.next_index[ref.source_id] = ref.index + 1
        stream_time = refs[-1].pts_s - self.learning_from_pts if refs else 0.0
        if self.learning_until is not None and (time.monotonic() >= self.learning_until or stream_time >= float(self.options.learn_for_s or 0)):
            self.finish_learning()

    def finish_learning(self) -> None:
        assert self.model is not None
        if self.model.gaussian.n < 2:
            logger.warning("%s: only %d frames learned; learning on", self.camera.name, self.model.gaussian.n)
            return
        self.model.finalise()
        self.learning_until = None
        if len(self.held_out) >= 2:
            distances = self.model.distances(torch.stack(self.held_out))
            mean, std, count = stages.position_statistics([distances])
            partial = Calibration(mean, std, np.zeros(0, np.float32), count)
            refs = [FrameRef(self.camera.name, i, 0.0) for i in range(count)]
            normal = [r.score for r in stages.score_distances(refs, distances, self.model, calibration=partial, config=self.options.frame_score)]
            self.calibration = Calibration(mean, std, np.asarray(normal, np.float32), count)
        self.held_out = []
        write_checkpoint(self.store, self.model, self.state)
        write_factors(self.store, self.model, self.calibration)
        if self.options.threshold is not None:
            self.threshold = self.options.threshold
        elif self.calibration is not None:
            self.threshold = float(np.quantile(self.calibration.normal_scores, 0.99))
            detail = {"quantile": 0.99, "frames": len(self.calibration.normal_scores), "on": "learned stream"}
            self.stored_threshold = Threshold(self.threshold, "quantile", detail, self.options.frame_score.attrs())
            write_threshold(self.store, self.stored_threshold)
        logger.warning("%s: learned from %d frames; threshold %s", self.camera.name, self.model.gaussian.n, self.threshold)

    def adapt(self, embeddings: torch.Tensor, refs: Sequence[FrameRef]) -> None:
        """Fold frames judged normal into the statistics; refresh factors every ``refresh_every``."""
        assert self.model is not None
        self.model.gaussian.update(embeddings)
        self.dirty = True
        self.state.frames_seen = int(self.model.gaussian.n)
        for ref in refs:
            self.state.next_index[ref.source_id] = ref.index + 1
        self.adapted_since_refresh += len(refs)
        if self.adapted_since_refresh >= self.options.refresh_every:
            self.model.finalise()
            self.adapted_since_refresh = 0
        if time.monotonic() - self.last_checkpoint >= self.options.checkpoint_every_s:
            self.checkpoint()

    def checkpoint(self) -> None:
        """Save adapted statistics, their factors, and carry the calibration and stored threshold
        over to them (they were measured on the same camera's normal frames)."""
        if self.model is None or self.store is None or self.learning or not self.dirty:
            return
        write_checkpoint(self.store, self.model, self.state)
        if self.adapted_since_refresh:
            self.model.finalise()
            self.adapted_since_refresh = 0
        write_factors(self.store, self.model, self.calibration)
        if self.stored_threshold is not None:
            write_threshold(self.store, self.stored_threshold)
        self.dirty = False
        self.last_checkpoint = time.monotonic()


class _Alerts:
    """Hysteresis per camera: ``min_frames`` above the threshold open an event, as many below close it."""

    def __init__(self, out: Path, min_frames: int) -> None:
        self.out, self.min_frames = out, min_frames
        self.file: TextIO = open(out / "events.jsonl", "a")
        self.events: list[Event] = []

    def update(self, cam: _CameraModel, ref: FrameRef, score: float, image: np.ndarray | None, anomaly_map: np.ndarray) -> None:
        if cam.threshold is None:
            return
        if score > cam.threshold:
            cam.above, cam.below = cam.above + 1, 0
        else:
            cam.above, cam.below = 0, cam.below + 1
        if cam.event is None and cam.above >= self.min_frames:
            cam.event = Event(cam.camera.name, ref.index, ref.pts_s, time.time(), score, ref.index)
            cam.peak_image, cam.peak_map = image, anomaly_map
            logger.warning("%s: alert opened at frame %d (score %.3g > %.3g)", cam.camera.name, ref.index, score, cam.threshold)
        elif cam.event is not None:
            if score > cam.event.peak_score:
                cam.event.peak_score, cam.event.peak_index = score, ref.index
                cam.peak_image, cam.peak_map = image, anomaly_map
            if cam.below >= self.min_frames:
                self.close(cam, ref)

    def close(self, cam: _CameraModel, ref: FrameRef | None) -> None:
        event = cam.event
        if event is None:
            return
        event.end_index = ref.index if ref is not None else None
        event.end_pts_s = ref.pts_s if ref is not None else None
        event.end_wall = time.time()
        if cam.peak_image is not None and cam.peak_map is not None and cam.threshold is not None:
            path = self.out / "snapshots" / f"{event.camera}-{event.peak_index:08d}.png"
            path.parent.mkdir(exist_ok=True)
            thr = cam.threshold
            pictures.save_rgb(path, pictures.overlay(cam.peak_image, cam.peak_map, vmin=0.5 * thr, vmax=1.5 * thr, score=event.peak_score, alert=True))
            event.snapshot = str(path)
        self.file.write(json.dumps(asdict(event)) + "\n")
        self.file.flush()
        self.events.append(event)
        logger.warning("%s: alert closed (frames %d-%s, peak %.3g)", cam.camera.name, event.start_index, event.end_index, event.peak_score)
        cam.event, cam.peak_image, cam.peak_map = None, None, None


def _stats_record(name: str, s: StreamStats, now: float) -> dict[str, Any]:
    last = s.window or {"t": now, "received": 0, "scored": 0}
    dt = max(1e-6, now - last["t"])
    p50, p95 = s.percentile(50), s.percentile(95)
    record = {
        "camera": name,
        "state": s.state,
        "input_fps": round((s.received - last["received"]) / dt, 2),
        "scored_fps": round((s.scored - last["scored"]) / dt, 2),
        "received": s.received,
        "scored": s.scored,
        "learned": s.learned,
        "dropped": s.dropped_total,
        "p50_ms": None if p50 is None else round(1000 * p50, 1),
        "p95_ms": None if p95 is None else round(1000 * p95, 1),
    }
    s.window = {"t": now, "received": s.received, "scored": s.scored}
    return record


def watch(
    cameras: Sequence[Camera],
    out_dir: str | Path,
    *,
    options: WatchOptions = WatchOptions(),
    stats_json: str | Path | None = None,
    print_stats: Callable[[str], None] = print,
    scorer_hook: Callable[[Sequence[FrameRef]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> WatchSummary:
    """Watch ``cameras`` until they all end, ``duration_s`` passes or SIGINT/SIGTERM.

    Writes ``out_dir/scores.csv`` (per frame), ``out_dir/events.jsonl`` and snapshot PNGs.
    ``scorer_hook(refs)`` runs on every scored batch (tests use it to slow the scorer down);
    ``should_stop()`` ends the watch as SIGINT does (drain, flush, checkpoint).
    """
    if not cameras:
        raise ConfigError("expected at least one camera URL, got none")
    names = [c.name for c in cameras]
    if len(set(names)) != len(names):
        raise ConfigError(f"expected distinct camera names, got {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = {c.name: _CameraModel(c, options, options.device) for c in cameras}
    streams = {c.name: StreamStats() for c in cameras}
    summary = WatchSummary(str(out), streams, [])
    runner = Runner()
    alerts = _Alerts(out, options.min_frames)
    stats_file = open(stats_json, "a") if stats_json else None

    def on_state(camera: str, state: str) -> None:
        streams[camera].state = state

    def count_drop(source_id: str, reason: str) -> None:
        dropped = streams[source_id].dropped
        dropped[reason] = dropped.get(reason, 0) + 1

    def on_drop(item: object) -> None:
        if isinstance(item, Frame):
            count_drop(item.source_id, "queue full (drop-oldest)")

    def on_decode_drop(source_id: str, index: int, reason: str) -> None:
        streams[source_id].received += 1  # read from the stream, but undecodable
        count_drop(source_id, "corrupt frame")

    lives = {c.name: LiveStream(c.url, c.name, options=options.live, on_state=on_state, on_drop=on_decode_drop) for c in cameras}

    def reader(name: str) -> Callable[[], Iterator[Frame]]:
        def frames() -> Iterator[Frame]:
            for frame in lives[name].frames(runner.stopping.is_set):
                streams[name].received += 1
                yield frame

        return frames

    start = time.monotonic()
    for s in streams.values():
        s.window = {"t": start, "received": 0, "scored": 0}
    policy = "drop-oldest" if any(is_live(c.url) or options.live.realtime for c in cameras) else "block"
    deadline = None if options.duration_s is None else time.monotonic() + options.duration_s
    next_stats = time.monotonic() + options.stats_every_s
    keep = True  # originals for alert snapshots
    cameras_attrs = [{"name": c.name, "url": redact(c.url), "model": c.model} for c in cameras]
    writer = ScoreWriter(out / "scores.csv", ZarrStore(out / "scores.zarr", mode="w"), attrs={"cameras": cameras_attrs}, write_maps=False)
    with graceful_interrupt(runner) as interrupted, writer:
        channels = runner.sources([reader(c.name) for c in cameras], maxsize=options.queue_size, policy=policy, on_drop=on_drop, name="camera")

        def gathered(_: Iterator[object]) -> Iterator[list[Frame]]:
            return runner.gather(channels, max_batch=options.max_batch, max_wait_s=options.max_wait_s)

        batches = runner.stage(gathered, iter(()), maxsize=1, name="gather")  # one batch waits: latency stays low
        for batch in runner.consume(batches):
            _process(batch, models, streams, alerts, writer, summary, options, keep, scorer_hook)
            now = time.monotonic()
            for name, live in lives.items():
                streams[name].reconnects = live.reconnects
            if now >= next_stats:
                _emit_stats(streams, now, print_stats, stats_file)
                next_stats = now + options.stats_every_s
            if (deadline is not None and now >= deadline) or (should_stop is not None and should_stop()):
                runner.stop()
        summary.interrupted = interrupted[0]
    for cam in models.values():
        alerts.close(cam, None)
        if cam.learning and cam.model is not None:
            cam.finish_learning()
        cam.checkpoint()
    for name, live in lives.items():
        streams[name].reconnects = live.reconnects
        streams[name].state = live.state
    _emit_stats(streams, time.monotonic(), print_stats, stats_file)
    alerts.file.close()
    if stats_file is not None:
        stats_file.close()
    summary.events = alerts.events
    return summary


def _emit_stats(streams: dict[str, StreamStats], now: float, print_stats: Callable[[str], None], stats_file: TextIO | None) -> None:
    for name, s in streams.items():
        record = _stats_record(name, s, now)
        p50 = "-" if record["p50_ms"] is None else f"{record['p50_ms']:.0f}"
        p95 = "-" if record["p95_ms"] is None else f"{record['p95_ms']:.0f}"
        print_stats(
            f"[{name}] {record['state']}: in {record['input_fps']:.1f} fps, scored {record['scored_fps']:.1f} fps, "
            f"received {record['received']} = scored {record['scored']} + learned {record['learned']} + dropped {record['dropped']}, "
            f"latency p50 {p50} ms p95 {p95} ms"
        )
        if stats_file is not None:
            stats_file.write(json.dumps({"t": time.time(), **record}) + "\n")
            stats_file.flush()


def _process(
    batch: list[Frame],
    models: dict[str, _CameraModel],
    streams: dict[str, StreamStats],
    alerts: _Alerts,
    writer: ScoreWriter,
    summary: WatchSummary,
    options: WatchOptions,
    keep: bool,
    scorer_hook: Callable[[Sequence[FrameRef]], None] | None,
) -> None:
    """One gathered batch: one backbone pass per backbone/input size, then each camera's model."""
    summary.batches += 1
    if len({f.source_id for f in batch}) > 1:
        summary.mixed_batches += 1
    for frame in batch:
        cam = models[frame.source_id]
        if cam.model is None:
            cam.start_learning(frame)
    groups: dict[tuple[Any, ...], list[Frame]] = {}
    for frame in batch:
        model = models[frame.source_id].model
        assert model is not None
        key = (model.config.backbone, model.weights_sha256, model.input_hw)
        groups.setdefault(key, []).append(frame)
    for frames in groups.values():
        lead = models[frames[0].source_id].model
        assert lead is not None
        images = lead.preprocess([f.image for f in frames], lead.device)
        features = lead.features(images)
        by_camera: dict[str, list[int]] = {}
        for i, frame in enumerate(frames):
            by_camera.setdefault(frame.source_id, []).append(i)
        for name, rows in by_camera.items():
            cam = models[name]
            assert cam.model is not None
            picked = {layer: f[rows] for layer, f in features.items()}
            embeddings = cam.model.project(picked)
            refs = [stages.ref_of(frames[i]) for i in rows]
            if cam.learning:
                cam.learn(refs, embeddings)
                streams[name].learned += len(refs)
                continue
            if scorer_hook is not None:
                scorer_hook(refs)
            config = options.frame_score if cam.calibration is not None else replace(options.frame_score, calibrated=False)
            results = list(stages.score_distances(refs, cam.model.distances(embeddings), cam.model, calibration=cam.calibration, config=config))
            normal = []
            now = time.monotonic()
            for j, (i, result) in enumerate(zip(rows, results, strict=True)):
                if cam.smoother is not None:
                    result = replace(result, score=cam.smoother(name, result.score))
                writer.write(result)
                streams[name].scored += 1
                streams[name].latencies.append(now - result.ref.t_decoded_s)
                alerts.update(cam, result.ref, result.score, frames[i].image if keep else None, result.anomaly_map)
                if cam.threshold is not None and result.score <= cam.threshold:
                    normal.append(j)
            if options.adapt and normal and cam.threshold is not None:
                cam.adapt(embeddings[normal], [refs[j] for j in normal])


def parse_duration(text: str) -> float:
    """``90`` / ``90s`` / ``5m`` / ``2h`` -> seconds.

    Example:
        >>> parse_duration("5m"), parse_duration("1.5h"), parse_duration("30")
        (300.0, 5400.0, 30.0)
    """
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = text.strip().lower()
    scale = units.get(text[-1:], None)
    number = text[:-1] if scale is not None else text
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        raise ConfigError(f"expected a duration such as 90s, 5m or 2h, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"expected a positive duration, got {text!r}")
    return value


def split_named(text: str) -> tuple[str | None, str]:
    """``cam1=rtsp://...`` -> ("cam1", "rtsp://..."); a plain URL or path -> (None, text).

    Example:
        >>> split_named("door=rtsp://h/s?ch=1"), split_named("rtsp://h/s?ch=1")
        (('door', 'rtsp://h/s?ch=1'), (None, 'rtsp://h/s?ch=1'))
    """
    name, sep, rest = text.partition("=")
    if sep and name and "://" not in name and "/" not in name and all(ch.isalnum() or ch in "-_." for ch in name):
        return name, rest
    return None, text


def cameras_from(urls: Sequence[str], models: Sequence[str]) -> list[Camera]:
    """Pair ``[name=]URL`` arguments with ``--model [name=]PATH`` options.

    One unnamed model serves every camera; named models go to the camera of that name.
    Unnamed cameras are called cam0, cam1, ... (or the file's stem for a single file).
    """
    if not urls:
        raise ConfigError("expected at least one camera URL, got none")
    named: list[tuple[str, str]] = []
    for i, text in enumerate(urls):
        name, url = split_named(text)
        if name is None:
            name = Path(url).stem if len(urls) == 1 and not is_live(url) else f"cam{i}"
        named.append((name, url))
    by_name: dict[str, str] = {}
    shared: str | None = None
    for text in models:
        name, path = split_named(text)
        if name is None:
            if shared is not None:
                raise ConfigError(f"expected one unnamed --model, got {shared} and {path}; hint: name them, --model cam0=a.zarr --model cam1=b.zarr")
            shared = path
        else:
            by_name[name] = path
    unknown = set(by_name) - {n for n, _ in named}
    if unknown:
        raise ConfigError(f"expected --model names among the cameras {[n for n, _ in named]}, got {sorted(unknown)}")
    cameras = []
    for name, url in named:
        model = by_name.get(name, shared)
        if model is None:
            raise ConfigError(f"expected a --model for camera {name}, got none; hint: --model {name}=model.zarr")
        cameras.append(Camera(name, url, model))
    return cameras
