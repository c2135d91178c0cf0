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

from streamad.errors import ConfigError, DecodeError, UnsupportedSourceError
from streamad.frames import Frame
from streamad.io.urls import redact

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
    exact: bool = True  # ``frames`` is the container's count, not estimated from the duration


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
            frames, exact = stream.frames, bool(stream.frames)
            if not frames and stream.duration and stream.time_base:
                frames = int(round(float(stream.duration * stream.time_base) * float(rate)))
            return VideoInfo(
                fps=float(rate),
                frames=int(frames or 0),
                width=int(stream.codec_context.width),
                height=int(stream.codec_context.height),
                codec=str(stream.codec_context.name),
                exact=exact,
            )
    except av.FFmpegError as exc:
        raise UnsupportedSourceError(
            f"expected a video FFmpeg can read, got {path} ({exc.strerror or exc}); hint: check the file is complete, or pass a folder of images instead"
        ) from exc


class _Timeline:
    """Frame numbers from presentation times.

    In a constant-rate stream a frame's number is ``round((pts - start) * time_base * rate)``,
    so a frame lost to damage leaves a gap instead of shifting every later number. Where the
    rate varies (or a stream gives no times) frames are numbered in decoding order.
    """

    def __init__(self, stream: av.video.stream.VideoStream, *, by_pts: bool) -> None:
        rate, average = stream.base_rate, stream.average_rate
        constant = bool(rate and average and abs(float(rate / average) - 1) < 0.01 and stream.time_base)
        self.by_pts = by_pts and constant
        self.rate, self.time_base = rate, stream.time_base
        self.start = stream.start_time

    def number(self, vframe: av.VideoFrame, following: int) -> int | None:
        """The frame's number, given that the next one in order would be ``following``; None
        for a frame whose number has passed (damage can make a decoder repeat or reorder)."""
        if not self.by_pts or vframe.pts is None or self.rate is None or self.time_base is None:
            return following
        if self.start is None:
            self.start = vframe.pts
        number = int(round(float((vframe.pts - self.start) * self.time_base * self.rate)))
        return number if number >= following else None


class _Packets:
    """The decoded frames of a stream, as ``(index, frame)``, indices counted from ``index``.

    With ``by_pts`` (files) a frame's index comes from its presentation time, and every index
    skipped is reported to ``on_drop`` with the last decoding error as its reason. Otherwise
    (live streams) a packet that fails to decode counts as one lost frame. ``self.index`` is the
    next index once iteration ends; ``self.finished`` tells whether the stream ended by itself.
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
        by_pts: bool = False,
    ) -> None:
        self.container, self.stream, self.source_id, self.index = container, stream, source_id, index
        self.on_drop, self.should_stop, self.stop_index = on_drop, should_stop, stop_index
        self.timeline = _Timeline(stream, by_pts=by_pts)
        self.first, self.finished, self.decoded = index, False, 0
        self._error = ""

    def _stopped(self) -> bool:
        return self.stop_index is not None and self.index >= self.stop_index

    def drop(self, upto: int, reason: str) -> None:
        """Report indices ``self.index <= i < upto`` as lost, and move past them."""
        stop = upto if self.stop_index is None else min(upto, self.stop_index)
        for lost in range(self.index, stop):
            if self.on_drop is not None:
                self.on_drop(self.source_id, lost, reason)
        self.index = max(self.index, upto)

    def __iter__(self) -> Iterator[tuple[int, av.VideoFrame]]:
        for packet in self.container.demux(self.stream):
            if (self.should_stop is not None and self.should_stop()) or self._stopped():
                return
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:
                self._error = f"corrupt data ({exc.strerror or exc})"
                if packet.size and not self.timeline.by_pts:
                    self.drop(self.index + 1, self._error)
                continue
            for vframe in decoded:
                number = self.timeline.number(vframe, self.index - self.first)
                if number is None:  # already yielded or reported lost: its number stays true
                    continue
                self.drop(self.first + number, self._error or "missing data")
                self._error = ""
                if self._stopped():
                    return
                self.decoded += 1
                yield self.index, vframe
                self.index += 1
        self.finished = True


def _open_file(path: str | Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except av.FFmpegError as exc:
        raise DecodeError(f"expected a readable video, got {path}: {exc}") from exc


def _frame(vframe: av.VideoFrame, source_id: str, index: int, fps: float) -> Frame:
    """A decoded frame as RGB, at its presentation time (``index / fps`` without one)."""
    pts_s = float(vframe.time) if vframe.time is not None else index / fps
    return Frame(source_id=source_id, index=index, pts_s=pts_s, image=vframe.to_ndarray(format="rgb24"), t_decoded_s=time.monotonic())


def decode_video(
    path: str | Path,
    *,
    source_id: str,
    every: int = 1,
    start_index: int = 0,
    stop_index: int | None = None,
    on_drop: DropCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    keep: Callable[[int], bool] | None = None,
    info: VideoInfo | None = None,
) -> Iterator[Frame]:
    """Decode a video file into frames, keeping presentation times.

    A frame's ``index`` is its true position in the stream (from its presentation time where the
    frame rate is constant), so frames lost to damage leave gaps: each lost frame the job would
    have read is reported to ``on_drop`` with its reason (corrupt data, missing data, truncated
    file), and later indices stay true.

    Args:
        path: the video file.
        source_id: name stamped on every frame.
        every: keep every ``every``-th frame (index 0, every, 2*every, ...).
        start_index: skip frames with an index below this (a seek where the stream allows).
        stop_index: stop before this index (None: the end of the stream).
        on_drop: told about every lost frame (damage is reported, not fatal).
        should_stop: polled between packets; decoding ends when it returns true.
        keep: of those frames, the ones converted and yielded (the others are still decoded).
        info: the file's :func:`probe` (None: probed here).

    Yields frames with ``index`` their 0-based position in the stream.
    """
    info = info or probe(path)
    fps = info.fps or 25.0

    def wanted(sid: str, index: int, reason: str) -> None:
        if on_drop is not None and index >= start_index and index % every == 0:
            on_drop(sid, index, reason)

    with _open_file(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        _seek_before(container, stream, start_index)  # a late start: from the keyframe before it
        packets = _Packets(container, stream, source_id=source_id, index=0, on_drop=wanted, should_stop=should_stop, stop_index=stop_index, by_pts=True)
        for index, vframe in packets:
            if index >= start_index and index % every == 0 and (keep is None or keep(index)):
                yield _frame(vframe, source_id, index, fps)
    if packets.finished:
        _check_end(packets, info, path)


def _seek_before(container: av.container.InputContainer, stream: av.video.stream.VideoStream, index: int) -> bool:
    """Move to the keyframe at or before frame ``index``, so a job starting there (a resumed fit,
    a shard of a long video) does not decode everything before it. Only in constant-rate streams
    with times, where frame numbers come from presentation times and so stay true after a seek;
    where the container lands after the frame (an imprecise index), back to the start.

    Returns:
        Whether the stream now starts at a keyframe past its first frame.
    """
    timeline = _Timeline(stream, by_pts=True)
    rate, time_base = timeline.rate, timeline.time_base
    if index <= 0 or not timeline.by_pts or stream.start_time is None or rate is None or time_base is None:
        return False
    target = stream.start_time + int((index - 0.5) / (rate * time_base))
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
        landed = next((timeline.number(vframe, 0) for packet in container.demux(stream) for vframe in packet.decode()), None)
        if landed is not None and landed <= index:
            container.seek(target, stream=stream, backward=True, any_frame=False)  # the same keyframe again
            return landed > 0
    except av.FFmpegError as exc:
        logger.info("seeking to frame %d failed (%s): decoding from the start", index, exc.strerror or exc)
    container.seek(stream.start_time, stream=stream, backward=True, any_frame=False)
    return False


def _check_end(packets: _Packets, info: VideoInfo, path: str | Path) -> None:
    """At a stream's own end: no frame at all is an error; fewer frames than the container
    promises (exactly, or by more than 2 % of an estimate) is a truncated file, reported as drops."""
    if packets.decoded == 0:
        raise DecodeError(f"expected decodable frames in {path}, got none; hint: the file may be truncated or use a codec this FFmpeg build lacks")
    if packets.index < info.frames and (info.exact or info.frames - packets.index > max(2, info.frames // 50)):
        logger.info("%s ends after frame %d of %d expected: the file is truncated", path, packets.index - 1, info.frames)
        packets.drop(info.frames, f"truncated file (ends after frame {packets.index - 1} of {info.frames})")


H264_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")  # containers that take H.264


def check_video_path(path: str | Path, label: str) -> None:
    """Refuse, before anything is written, a video path whose container cannot hold H.264.

    Example:
        >>> check_video_path("out/overlay.gif", "--overlay")
        Traceback (most recent call last):
        ...
        streamad.errors.ConfigError: expected --overlay out/overlay.gif to end in .mp4, .mkv, .mov or .avi (H.264 video), got '.gif'; hint: use out/overlay.mp4
    """
    suffix = Path(path).suffix.lower()
    if suffix not in H264_SUFFIXES:
        raise ConfigError(
            f"expected {label} {path} to end in {', '.join(H264_SUFFIXES[:-1])} or {H264_SUFFIXES[-1]} (H.264 video), got {suffix!r}; "
            f"hint: use {Path(path).with_suffix('.mp4')}"
        )


class VideoWriter:
    """Encode RGB frames to an H.264 file (PyAV's bundled libx264; see :data:`H264_SUFFIXES`).

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
        # A keyframe every second, as cameras stream: x264's default (250 frames) lets the
        # compression noise drift for many seconds between keyframes, which fine features see.
        self._gop = max(1, round(fps))
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
            self._stream = self._container.add_stream("libx264", rate=self._fps, options={"crf": str(self._crf), "preset": "veryfast", "g": str(self._gop)})
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
    (:mod:`streamad.io.live`). Frame indices continue from ``first_index``; ``on_open(fps)`` is
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
                yield _frame(vframe, source_id, index, float(rate))
        except (av.FFmpegError, OSError) as exc:  # a network error mid-stream ends this connection
            logger.info("%s: stream error: %s", redact(url), getattr(exc, "strerror", None) or exc)
