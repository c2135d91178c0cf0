"""Alerts: events with hysteresis per source, appended to ``events.jsonl`` with a snapshot PNG
of each event's peak frame."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from streamad import pictures
from streamad.frames import ScoreMap
from streamad.sinks.overlay import display_range

logger = logging.getLogger(__name__)


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
class _Open:
    """A source's alert state: consecutive frames above / below, and the open event."""

    above: int = 0
    below: int = 0
    event: Event | None = None
    peak: ScoreMap | None = None


class AlertSink:
    """``min_frames`` frames above the source's threshold open an event, as many below close it.

    Args:
        out: folder for ``events.jsonl`` and ``snapshots/``.
        threshold: the current threshold of a source (None: no alerts for it yet).
        min_frames: hysteresis, in frames.
        clock: wall clock for the events' times (injectable).
        listeners: told each change of an event (``open``, ``update``: its peak rose, ``close``).
    """

    def __init__(
        self,
        out: str | Path,
        threshold: Callable[[str], float | None],
        *,
        min_frames: int = 3,
        clock: Callable[[], float] = time.time,
        listeners: Sequence[Callable[[str, Event], None]] = (),
    ) -> None:
        self.out, self.threshold, self.min_frames, self.clock = Path(out), threshold, min_frames, clock
        self.listeners = list(listeners)
        self.opened: Counter[str] = Counter()  # events opened per source
        self.out.mkdir(parents=True, exist_ok=True)
        self._file = open(self.out / "events.jsonl", "a")
        self._state: dict[str, _Open] = {}
        self.events: list[Event] = []

    def write(self, result: ScoreMap) -> None:
        sid = result.ref.source_id
        threshold = self.threshold(sid)
        if threshold is None:
            return
        state = self._state.setdefault(sid, _Open())
        if result.score > threshold:
            state.above, state.below = state.above + 1, 0
        else:
            state.above, state.below = 0, state.below + 1
        ref = result.ref
        if state.event is None and state.above >= self.min_frames:
            state.event = Event(sid, ref.index, ref.pts_s, self.clock(), result.score, ref.index)
            state.peak = result
            self.opened[sid] += 1
            logger.warning("%s: alert opened at frame %d (score %.3g > %.3g)", sid, ref.index, result.score, threshold)
            self.on_event("open", state.event)
        elif state.event is not None:
            if result.score > state.event.peak_score:
                state.event.peak_score, state.event.peak_index, state.peak = result.score, ref.index, result
                self.on_event("update", state.event)
            if state.below >= self.min_frames:
                self._close(sid, state, result)

    def _close(self, sid: str, state: _Open, last: ScoreMap | None) -> None:
        event = state.event
        if event is None:
            return
        event.end_index = last.ref.index if last is not None else None
        event.end_pts_s = last.ref.pts_s if last is not None else None
        event.end_wall = self.clock()
        peak, threshold = state.peak, self.threshold(sid)
        if peak is not None and peak.original is not None:
            path = self.out / "snapshots" / f"{sid}-{event.peak_index:08d}.png"
            path.parent.mkdir(exist_ok=True)
            vmin, vmax = display_range(threshold)
            pictures.save_rgb(path, pictures.overlay(peak.original, peak.anomaly_map, vmin=vmin, vmax=vmax, score=event.peak_score, alert=True))
            event.snapshot = str(path)
        self._file.write(json.dumps(asdict(event)) + "\n")
        self._file.flush()
        self.events.append(event)
        logger.warning("%s: alert closed (frames %d-%s, peak %.3g)", sid, event.start_index, event.end_index, event.peak_score)
        state.event, state.peak = None, None
        self.on_event("close", event)

    def on_event(self, change: str, event: Event) -> None:
        for listener in self.listeners:
            listener(change, event)

    def open_events(self) -> Mapping[str, Event]:
        return {sid: s.event for sid, s in self._state.items() if s.event is not None}

    def close(self) -> None:
        """Close the open events (their end unknown), then the file."""
        for sid, state in self._state.items():
            self._close(sid, state, None)
        self._file.close()
