"""Live sources that never hang: reconnects with backoff, a stall watchdog, state changes.

A :class:`LiveStream` turns a URL into an endless frame iterator. Each connection is read by
its own thread (:func:`streamad.io.decode.read_stream`) into a small queue; the iterator waits on
that queue, so when no frame arrives for ``stall_timeout_s`` (or the connection does not open
within ``open_timeout_s``) it gives the connection up, whatever PyAV is stuck in, and
reconnects after an exponential backoff (``backoff_s`` doubling up to ``max_backoff_s``;
forever unless ``max_retries``). A stream that ends (a server restart, a dropped connection) is
reconnected the same way; only a file ends for good (played at its native rate with
``realtime``, else as fast as it decodes).

States (``connecting``, ``streaming``, ``stalled``, ``reconnecting``, ``ended``) are logged once
per change, with credentials removed from the URL.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streamad.errors import ConfigError, DecodeError
from streamad.frames import Frame
from streamad.io.decode import DropCallback, read_stream
from streamad.io.urls import redact

logger = logging.getLogger(__name__)

STATES = ("connecting", "streaming", "stalled", "reconnecting", "ended")


@dataclass(frozen=True, slots=True)
class LiveOptions:
    open_timeout_s: float = 10.0
    stall_timeout_s: float = 5.0
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retries: int | None = None
    realtime: bool = False

    def __post_init__(self) -> None:
        if self.stall_timeout_s <= 0 or self.open_timeout_s <= 0:
            raise ConfigError(f"expected positive timeouts, got open {self.open_timeout_s} s and stall {self.stall_timeout_s} s")
        if self.backoff_s <= 0 or self.max_backoff_s < self.backoff_s:
            raise ConfigError(f"expected 0 < backoff <= max backoff, got {self.backoff_s} and {self.max_backoff_s}")


def is_live(url: str) -> bool:
    """URLs and capture devices are live; plain files are not (unless played ``realtime``)."""
    return "://" in url or url.startswith("/dev/video")


def paced(frames: Iterator[Frame]) -> Iterator[Frame]:
    """Frames at the rate of their presentation times (a file played as if live)."""
    start_wall, start_pts = None, 0.0
    for frame in frames:
        if start_wall is None:
            start_wall, start_pts = time.monotonic(), frame.pts_s
        wait = (frame.pts_s - start_pts) - (time.monotonic() - start_wall)
        if wait > 0:
            time.sleep(wait)
        yield frame


class _End:
    pass


class _Failed:
    def __init__(self, message: str) -> None:
        self.message = message


class LiveStream:
    """Frames of one camera, across reconnects, until ``should_stop()`` or the retries run out.

    Args:
        url: ``rtsp://...``, another URL FFmpeg reads, ``/dev/videoN`` or a file.
        source_id: the camera's name.
        on_state: told ``(source_id, state)`` on every state change.
        on_drop: told about every frame the decoder could not decode.
        clock: seconds on a monotonic clock (the watchdog and the backoff read it).
        sleep: waits that many seconds; a test injects both, and time passes as it says.
    """

    def __init__(
        self,
        url: str,
        source_id: str,
        *,
        options: LiveOptions = LiveOptions(),
        on_state: Callable[[str, str], None] | None = None,
        on_drop: DropCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not is_live(url) and not Path(url).exists():
            raise ConfigError(f"expected a live URL (rtsp://, http://, /dev/videoN) or an existing file, got {redact(url)!r}")
        self.url, self.source_id, self.options = url, source_id, options
        self.state = ""
        self.gave_up = False  # ended by --max-retries, not by the stream's end or a stop
        self.fps: float | None = None  # the stream's nominal frame rate, once opened
        self.connections = 0
        self.reconnects = 0
        self._on_state = on_state
        self._on_drop = on_drop
        self._clock, self._sleep = clock, sleep
        self._next_index = 0

    def _set(self, state: str, detail: str = "") -> None:
        if state == self.state:
            return
        self.state = state
        logger.warning("%s (%s): %s%s", self.source_id, redact(self.url), state, f" ({detail})" if detail else "")
        if self._on_state is not None:
            self._on_state(self.source_id, state)

    def frames(self, should_stop: Callable[[], bool]) -> Iterator[Frame]:
        failures = 0
        backoff = self.options.backoff_s
        while not should_stop():
            self._set("connecting")
            got_frames = False
            failure = ""
            for item in self._connection(should_stop):
                if isinstance(item, Frame):
                    if not got_frames:
                        self._set("streaming")
                        got_frames, failures, backoff = True, 0, self.options.backoff_s
                    yield item
                elif isinstance(item, _Failed):  # (an _End just closes the connection)
                    failure = item.message
                    self._set("stalled" if item.message.startswith("watchdog") else "reconnecting", item.message)
            if should_stop():
                break
            if not is_live(self.url):  # a file ends for good; one that cannot be read is bad input
                if failure and not got_frames:
                    raise DecodeError(f"expected a readable video for camera {self.source_id}, got {self.url}: {failure}")
                break
            if not got_frames:
                failures += 1
            if self.options.max_retries is not None and failures > self.options.max_retries:
                self.gave_up = True
                self._set("ended", f"gave up after {self.options.max_retries} retries")
                return
            self._set("reconnecting", f"in {backoff:.1f} s")
            self.reconnects += 1
            deadline = self._clock() + backoff
            while not should_stop() and self._clock() < deadline:
                self._sleep(min(0.1, max(0.0, deadline - self._clock())))
            backoff = min(backoff * 2, self.options.max_backoff_s)
        self._set("ended")

    def _opened(self, opened: threading.Event) -> Callable[[float], None]:
        def on_open(fps: float) -> None:
            self.fps = fps
            opened.set()

        return on_open

    def _connection(self, should_stop: Callable[[], bool]) -> Iterator[Frame | _End | _Failed]:
        """One connection's frames, read by their own thread (:meth:`_read`) and watched here: a
        _Failed or _End item closes it. A reader that hangs is left to finish on its own (it
        only sees its own ``abandoned`` flag)."""
        self.connections += 1
        items: queue.Queue[Frame | _End | _Failed] = queue.Queue(maxsize=8)
        abandoned, opened = threading.Event(), threading.Event()
        reader = functools.partial(self._read, items, abandoned, opened, should_stop)
        threading.Thread(target=reader, name=f"streamad-live-{self.source_id}", daemon=True).start()
        last = self._clock()
        try:
            while not should_stop():
                waiting_to_open = not opened.is_set()
                limit = self.options.open_timeout_s if waiting_to_open else self.options.stall_timeout_s
                try:
                    item = items.get(timeout=0.1)
                except queue.Empty:
                    if self._clock() - last > limit:
                        yield _Failed(f"watchdog: {'not open after' if waiting_to_open else 'no frame for'} {limit:.1f} s")
                        return
                    continue
                last = self._clock()
                if isinstance(item, Frame):
                    self._next_index = item.index + 1
                yield item
                if not isinstance(item, Frame):
                    return
        finally:
            abandoned.set()

    def _read(
        self,
        items: queue.Queue[Frame | _End | _Failed],
        abandoned: threading.Event,
        opened: threading.Event,
        should_stop: Callable[[], bool],
    ) -> None:
        """The reader thread of one connection: its frames into ``items``, then an _End, or a
        _Failed with the reason; nothing once the connection was abandoned."""
        try:
            frames = read_stream(
                self.url,
                source_id=self.source_id,
                first_index=self._next_index,
                # PyAV's own timeouts only end an abandoned reader: the watchdog fires first
                open_timeout_s=2 * self.options.open_timeout_s + self.options.stall_timeout_s,
                read_timeout_s=2 * self.options.stall_timeout_s,
                should_stop=lambda: abandoned.is_set() or should_stop(),
                on_open=self._opened(opened),
                on_drop=self._on_drop,
            )
            for frame in paced(frames) if self.options.realtime and not is_live(self.url) else frames:
                while not abandoned.is_set():
                    try:
                        items.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
            if not abandoned.is_set():
                items.put(_End())
        except DecodeError as exc:
            if not abandoned.is_set():
                items.put(_Failed(str(exc)))
        except Exception as exc:  # a reader must never take the watcher down
            if not abandoned.is_set():
                items.put(_Failed(f"reader failed: {exc!r}"))
