"""Video decoding and encoding: the only module that imports PyAV.

No ``av`` type escapes this module: callers get :class:`~streamad.frames.Frame` values, plain
numbers and streamad errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from streamad.errors import DecodeError, UnsupportedSourceError
from streamad.frames import Frame

logger = logging.getLogger(__name__)

DropCallback = Callable[[str, int, str], None]
"""Called as ``on_drop(source_id, index, reason)`` for every frame that is skipped."""


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What a container says about its first video stream."""

    fps: float
    frames: int
    width: int
    height: int
    codec: str


def probe(path: str | Path) -> VideoInfo:
    """Open ``path`` and describe its first video stream.

    Raises:
        UnsupportedSourceError: the file is not a container FFmpeg reads or has no video.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnsupportedSourceError(f"expected a video stream in {path}, got none; hint: pass a video file, a folder of images or an image glob")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.base_rate or Fraction(25)
            frames = stream.frames
            if not frames and stream.duration and stream.time_base:
                frames = int(round(float(stream.duration * stream.time_base) * float(rate)))
            return VideoInfo(
                fps=float(rate),
                frames=int(frames or 0),
                width=int(stream.codec_context.width),
                height=int(stream.codec_context.height),
                codec=str(stream.codec_context.name),
            )
    except av.FFmpegError as exc:
        raise UnsupportedSourceError(
            f"expected a video FFmpeg can read, got {path} ({exc.strerror or exc}); hint: check the file is complete, or pass a folder of images instead"
        ) from exc


class _Packets:
    """The decoded frames of a stream, as ``(index, frame)``, indices counted from ``index``.

    A packet that fails to decode loses one frame: it is reported to ``on_drop`` and counted
    under the index it would have had, so later indices stay true. ``self.index`` is the next
    index once iteration ends.
    """

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.video.stream.VideoStream,
        *,
        source_id: str,
        index: int,
        on_drop: DropCallback | None,
        should_stop: Callable[[], bool] | None,
        stop_index: int | None = None,
    ) -> None:
        self.container, self.stream, self.source_id, self.index = container, stream, source_id, index
        self.on_drop, self.should_stop, self.stop_index = on_drop, should_stop, stop_index

    def _stopped(self) -> bool:
        return self.stop_index is not None and self.index >= self.stop_index

    def __iter__(self) -> Iterator[tuple[int, av.VideoFrame]]:
        for packet in self.container.demux(self.stream):
            if (self.should_stop is not None and self.should_stop()) or self._stopped():
                return
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:
                if packet.size:
                    if self.on_drop is not None:
                        self.on_drop(self.source_id, self.index, f"corrupt frame ({exc.strerror or exc})")
                    self.index += 1
                continue
            for vframe in decoded:
                if self._stopped():
                    return
                yield self.index, vframe
                self.index += 1


def decode_video(
    path: str | Path,
    *,
    source_id: str,
    every: int = 1,
    start_index: int = 0,
    stop_index: int | None = None,
    on_drop: DropCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[Frame]:
    """Decode a video file into frames, keeping presentation times.

    Args:
        path: the video file.
        source_id: name stamped on every frame.
        every: keep every ``every``-th frame (index 0, every, 2*every, ...).
        start_index: skip frames with an index below this (resuming a partial fit).
        stop_index: stop before this index (None: the end of the stream).
        on_drop: told about every packet that failed to decode (a corrupt frame is skipped, not
            fatal).
        should_stop: polled between packets; decoding ends when it returns true.

    Yields:
        Frames with ``index`` counted over every decoded frame of the stream, 0-based.
    """
    info = probe(path)
    fps = info.fps or 25.0
    try:
        container = av.open(str(path))
    except av.FFmpegError as exc:
        raise DecodeError(f"expected a readable video, got {path}: {exc}") from exc
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        packets = _Packets(container, stream, source_id=source_id, index=0, on_drop=on_drop, should_stop=should_stop, stop_index=stop_index)
        for index, vframe in packets:
            if index >= start_index and index % every == 0:
                pts_s = float(vframe.time) if vframe.time is not None else index / fps
                yield Frame(
                    source_id=source_id,
                    index=index,
                    pts_s=pts_s,
                    image=vframe.to_ndarray(format="rgb24"),
                    t_decoded_s=time.monotonic(),
                )
    if packets.index == 0:
        raise DecodeError(f"expected decodable frames in {path}, got none; hint: the file may be truncated or use a codec this FFmpeg build lacks")


class VideoWriter:
    """Encode RGB frames to an H.264 file (PyAV's bundled libx264).

    Example:
        >>> import numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "x.mp4")
        >>> with VideoWriter(path, fps=10) as w:
        ...     w.write(np.zeros((32, 48, 3), np.uint8))
        >>> probe(path).width
        48
    """

    def __init__(self, path: str | Path, *, fps: float, crf: int = 23) -> None:
        self._path = str(path)
        self._fps = Fraction(fps).limit_denominator(1001)
        self._crf = crf
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None

    def __enter__(self) -> VideoWriter:
        self._container = av.open(self._path, mode="w")
        return self

    def write(self, image: np.ndarray) -> None:
        """Append one RGB uint8 frame of shape (H, W, 3); H and W are cropped to even sizes."""
        if self._container is None:
            raise RuntimeError("VideoWriter.write outside of a with-block")
        height, width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=self._fps, options={"crf": str(self._crf), "preset": "veryfast"})
            self._stream.width, self._stream.height = width, height
            self._stream.pix_fmt = "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._container is None:
            return
        if self._stream is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        self._container.close()
        self._container = None


def read_stream(
    url: str,
    *,
    source_id: str,
    first_index: int = 0,
    open_timeout_s: float = 10.0,
    read_timeout_s: float = 10.0,
    should_stop: Callable[[], bool] | None = None,
    on_open: Callable[[float], None] | None = None,
    on_drop: DropCallback | None = None,
) -> Iterator[Frame]:
    """Decode a live URL (``rtsp://`` over TCP, http/hls, ``/dev/video*``) or a file, once.

    Ends when the stream ends, fails or ``should_stop()``: reconnecting is the caller's business
    (:mod:`streamad.live`). Frame indices continue from ``first_index``; ``on_open(fps)`` is
    called once the container is open.

    Raises:
        DecodeError: the URL could not be opened (message without credentials).
    """
    options = {"rtsp_transport": "tcp"} if url.startswith(("rtsp://", "rtsps://")) else {}
    try:
        container = av.open(url, options=options, timeout=(open_timeout_s, read_timeout_s))
    except (av.FFmpegError, OSError) as exc:
        raise DecodeError(f"could not open {redact(url)}: {getattr(exc, 'strerror', None) or exc}") from None
    with container:
        if not container.streams.video:
            raise DecodeError(f"expected a video stream in {redact(url)}, got none")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.base_rate or Fraction(25)
        if on_open is not None:
            on_open(float(rate))
        try:
            for index, vframe in _Packets(container, stream, source_id=source_id, index=first_index, on_drop=on_drop, should_stop=should_stop):
                pts_s = float(vframe.time) if vframe.time is not None else index / float(rate)
                yield Frame(source_id, index, pts_s, vframe.to_ndarray(format="rgb24"), "", time.monotonic())
        except (av.FFmpegError, OSError) as exc:  # a network error mid-stream ends this connection
            logger.info("%s: stream error: %s", redact(url), getattr(exc, "strerror", None) or exc)


def redact(url: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x``; anything else unchanged.

    Example:
        >>> redact("rtsp://admin:hunter2@10.0.0.5:554/stream1")
        'rtsp://admin:***@10.0.0.5:554/stream1'
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    userinfo, _, host = rest.partition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in userinfo else url
