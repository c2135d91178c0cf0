"""Event and state messages, and the sink that hands them to every publisher.

An event opens, is updated when its peak rises (at most once per ``update_every_s``) and closes
(:class:`~streamad.sinks.alerts.AlertSink` says when); a camera's state (its current score and
whether an event is open) goes out at most once per ``state_every_s``. Publishers never block:
each keeps a bounded queue and a thread of its own, and counts what it could not deliver.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from streamad.frames import ScoreMap
from streamad.sinks.alerts import Event

EVENTS, STATE = "events", "state"  # the kinds of message (MQTT: the topic's last level)


@dataclass(frozen=True, slots=True)
class Message:
    kind: str  # EVENTS or STATE
    camera: str
    body: dict[str, Any]


class Publisher(Protocol):
    """Delivers messages somewhere; :meth:`publish` returns at once."""

    name: str

    def publish(self, message: Message) -> None: ...
    def counts(self) -> dict[str, int]: ...  # sent, failed (attempts), dropped (queue full), undelivered (at close)
    def close(self) -> None: ...


def event_id(event: Event) -> str:
    """Stable for the event's life: its camera and first frame."""
    return f"{event.camera}:{event.start_index}"


def event_body(change: str, event: Event, threshold: float | None, *, inline_snapshot: bool = False, view_url: str | None = None) -> dict[str, Any]:
    """The JSON body of an event message (``change``: open, update or close); ``view_url``: the
    web view's, which serves the snapshot."""
    body = {"change": change, "id": event_id(event), "threshold": threshold, **asdict(event)}
    if view_url and event.snapshot:
        body["snapshot_url"] = f"{view_url.rstrip('/')}/snapshots/{Path(event.snapshot).name}"
    if inline_snapshot and event.snapshot and Path(event.snapshot).is_file():
        body["snapshot_png_base64"] = base64.b64encode(Path(event.snapshot).read_bytes()).decode()
    return body


class EventOutputs:
    """A sink: each result's state (throttled) and, through :meth:`event` (AlertSink's
    ``on_event``), each event's changes, to every publisher.

    Args:
        publishers: where messages go.
        threshold: a camera's current alert threshold.
        state_every_s: at most one state message per camera this often.
        update_every_s: at most one update of an event this often (its peak rose).
        inline_snapshot: a closed event's body carries its snapshot PNG (base64).
        view_url: the web view's address: a closed event's body links its snapshot there.
        clock: monotonic (injectable).
    """

    def __init__(
        self,
        publishers: Sequence[Publisher],
        threshold: Callable[[str], float | None],
        *,
        state_every_s: float = 1.0,
        update_every_s: float = 1.0,
        inline_snapshot: bool = False,
        view_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.publishers, self.threshold, self.clock, self.view_url = list(publishers), threshold, clock, view_url
        self.state_every_s, self.update_every_s, self.inline_snapshot = state_every_s, update_every_s, inline_snapshot
        self._last_state: dict[str, float] = {}
        self._last_update: dict[str, float] = {}
        self._open: dict[str, bool] = {}

    def _send(self, message: Message) -> None:
        for publisher in self.publishers:
            publisher.publish(message)

    def event(self, change: str, event: Event) -> None:
        """An event opened, its peak rose (sent at most every ``update_every_s``) or it closed."""
        now = self.clock()
        if change == "update" and now - self._last_update.get(event_id(event), -1e18) < self.update_every_s:
            return
        if change == "close":  # no update follows: an entry per event would grow with the watch
            self._last_update.pop(event_id(event), None)
        else:
            self._last_update[event_id(event)] = now
        self._open[event.camera] = change != "close"
        inline = self.inline_snapshot and change == "close"
        body = event_body(change, event, self.threshold(event.camera), inline_snapshot=inline, view_url=self.view_url)
        self._send(Message(EVENTS, event.camera, body))

    def write(self, result: ScoreMap) -> None:
        camera, now = result.ref.source_id, self.clock()
        if now - self._last_state.get(camera, -1e18) < self.state_every_s:
            return
        self._last_state[camera] = now
        body = {
            "camera": camera,
            "index": result.ref.index,
            "pts_s": result.ref.pts_s,
            "score": result.score,
            "threshold": self.threshold(camera),
            "state": "alert" if self._open.get(camera) else "normal",
            "wall": time.time(),
        }
        self._send(Message(STATE, camera, body))

    def close(self) -> None:
        for publisher in self.publishers:
            publisher.close()
