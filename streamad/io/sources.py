"""Sources: turn the paths a user names into named streams of frames.

A SOURCE argument is one of

- a video file (anything FFmpeg reads), one source named by the file's stem;
- a folder of images (one clip, natural sort), named by the folder;
- a folder whose subfolders hold images or whose files are videos (the mSTC/UCSD layout
  ``training/frames/<clip>/``): one source per subfolder or video;
- an MVTec AD category folder (``<category>/train/good``);
- a glob of images (``"data/*.png"``), one source named by the pattern's folder.

Files and folders use the ``block`` overflow policy: nothing is ever dropped to keep up.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import logging
import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from streamad.errors import ConfigError, EmptySourceError, SourceNotFoundError, UnsupportedSourceError
from streamad.frames import Frame
from streamad.io import decode

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv"})

DropCallback = Callable[[str, int, str], None]


def natural_key(text: str) -> list[int | str]:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


MAX_PIXELS_VARIABLE = "STREAMAD_MAX_PIXELS"
# 100 M pixels decode to 300 MB (600 MB while converted to RGB): larger than the frames of
# inspection and surveillance cameras, small beside the memory of the machines they feed.
DEFAULT_MAX_PIXELS = 100_000_000


def max_pixels() -> int:
    """The largest image (width x height) decoded: ``$STREAMAD_MAX_PIXELS``, else 100 M."""
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"expected ${MAX_PIXELS_VARIABLE} to be a positive pixel count such as 100000000, got {text!r}")
    return value


def oversized(path: Path) -> str | None:
    """Why an image must not be decoded, judged by its header alone (a 400 KB PNG can declare
    20000x20000 pixels, 1.2 GB decoded), or None. Pillow reads the header; a file it does not
    know is left to OpenCV, which refuses what it cannot read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:  # over twice Pillow's own bound (179 M pixels)
        return f"image too large: {path.name} declares over {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} M pixels"
    except (OSError, ValueError, SyntaxError):
        return None
    limit = max_pixels()
    if width * height > limit:
        return f"image too large: {path.name} declares {width}x{height} pixels, over the limit of {limit / 1e6:.0f} M (${MAX_PIXELS_VARIABLE})"
    return None


def read_image(path: Path) -> np.ndarray | None:
    """Read an image file as RGB uint8 (H, W, 3); grayscale becomes 3 channels. None if
    unreadable or too large to decode (:func:`oversized`)."""
    if oversized(path) is not None:
        return None
    try:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error:  # beyond OpenCV's own limits
        return None
    if image is None:
        return None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def selected(count: int, *, every: int, start_index: int, stop_index: int | None, should_stop: Callable[[], bool] | None) -> Iterator[int]:
    """Indices ``start_index <= i < min(count, stop_index)`` with ``i % every == 0``, until
    ``should_stop()`` (polled before each).

    Example:
        >>> list(selected(10, every=3, start_index=2, stop_index=None, should_stop=None))
        [3, 6, 9]
    """
    stop = count if stop_index is None else min(stop_index, count)
    for index in range(start_index + (-start_index) % every, stop, every):
        if should_stop is not None and should_stop():
            return
        yield index


@dataclass(frozen=True, slots=True)
class ImageSequence:
    """Frames stored as image files, in order: a frame folder, an image set or a glob."""

    source_id: str
    paths: tuple[Path, ...]
    fps: float = 25.0
    timed: bool = True  # frames of a clip (motion applies), not an image set (see untimed)

    def __len__(self) -> int:
        return len(self.paths)

    def frame_hw(self) -> tuple[int, int]:
        """(height, width) of the first readable image."""
        for path in self.paths:
            image = read_image(path)
            if image is not None:
                return image.shape[0], image.shape[1]
        raise EmptySourceError(f"expected at least one readable image in {self.source_id}, got none; hint: check the files are images")

    def frames(
        self,
        *,
        every: int = 1,
        start_index: int = 0,
        stop_index: int | None = None,
        on_drop: DropCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        keep: Callable[[int], bool] | None = None,
    ) -> Iterator[Frame]:
        """Yield the frames with ``start_index <= index < stop_index`` and ``index % every == 0``
        (and ``keep(index)``: the others are not read)."""
        for index in selected(len(self.paths), every=every, start_index=start_index, stop_index=stop_index, should_stop=should_stop):
            if keep is not None and not keep(index):
                continue
            path = self.paths[index]
            image = read_image(path)
            if image is None:
                if on_drop is not None:
                    on_drop(self.source_id, index, oversized(path) or f"unreadable image: {path.name}")
                continue
            yield Frame(self.source_id, index, index / self.fps, image, path.name, time.monotonic())


@dataclass(frozen=True, slots=True)
class VideoFile:
    """A video file decoded with PyAV; ``info`` is what its container said when it was named
    (probed once: lengths, rates and sizes are read from it, the file is opened again only to
    decode)."""

    source_id: str
    path: Path
    info: decode.VideoInfo | None = None

    def _info(self) -> decode.VideoInfo:
        return self.info if self.info is not None else decode.probe(self.path)

    def __len__(self) -> int:
        return self._info().frames

    @property
    def fps(self) -> float:
        return self._info().fps or 25.0

    def frame_hw(self) -> tuple[int, int]:
        """(height, width) from the container's metadata (no frame is decoded)."""
        info = self._info()
        return info.height, info.width

    def frames(
        self,
        *,
        every: int = 1,
        start_index: int = 0,
        stop_index: int | None = None,
        on_drop: DropCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        keep: Callable[[int], bool] | None = None,
    ) -> Iterator[Frame]:
        """Yield decoded frames with ``start_index <= index < stop_index``, ``index % every == 0``
        (and ``keep(index)``: the others are decoded, as the codec needs, but not converted)."""
        return decode.decode_video(
            self.path,
            source_id=self.source_id,
            every=every,
            start_index=start_index,
            stop_index=stop_index,
            on_drop=on_drop,
            should_stop=should_stop,
            keep=keep,
            info=self._info(),
        )


@dataclass(frozen=True, slots=True)
class FrameArrays:
    """Frames already in memory: RGB uint8 arrays (H, W, 3), indexed from 0, ``index / fps`` s."""

    source_id: str
    images: Sequence[np.ndarray]
    fps: float = 25.0

    def __len__(self) -> int:
        return len(self.images)

    def frame_hw(self) -> tuple[int, int]:
        if not len(self.images):
            raise EmptySourceError(f"expected at least one frame in {self.source_id}, got none")
        shape = np.shape(self.images[0])
        return int(shape[0]), int(shape[1])

    def frames(
        self,
        *,
        every: int = 1,
        start_index: int = 0,
        stop_index: int | None = None,
        on_drop: DropCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
        keep: Callable[[int], bool] | None = None,
    ) -> Iterator[Frame]:
        """Yield the frames with ``start_index <= index < stop_index`` and ``index % every == 0``
        (and ``keep(index)``)."""
        for index in selected(len(self.images), every=every, start_index=start_index, stop_index=stop_index, should_stop=should_stop):
            if keep is not None and not keep(index):
                continue
            image = np.asarray(self.images[index])
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise UnsupportedSourceError(
                    f"expected RGB uint8 frames of shape (H, W, 3), got {image.dtype} {image.shape} at frame {index} of {self.source_id}"
                )
            yield Frame(self.source_id, index, index / self.fps, image, "", time.monotonic())


Source = ImageSequence | VideoFile | FrameArrays


def identity(source: Source) -> str | None:
    """What a source is, beyond its name (two fits of the same source can then be told from
    fits of two sources that share a name): a video's resolved path; an image sequence's
    folder and a digest of its files' resolved paths; None for frames in memory."""
    if isinstance(source, VideoFile):
        return str(source.path.resolve())
    if isinstance(source, ImageSequence) and source.paths:
        resolved = [str(p.resolve()) for p in source.paths]
        digest = hashlib.sha256("\n".join(resolved).encode()).hexdigest()[:16]
        return f"{Path(resolved[0]).parent}/ ({len(resolved)} images, {digest})"
    return None


def _images_in(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def _videos_in(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def _open_video(path: Path, source_id: str) -> VideoFile:
    return VideoFile(source_id, path, info=decode.probe(path))  # raises UnsupportedSourceError with the path and a hint


def _resolve_one(spec: str) -> list[Source]:
    if any(ch in spec for ch in "*?["):
        matches = [Path(p) for p in glob.glob(spec, recursive=True)]
        images = sorted(
            (p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
            key=lambda p: natural_key(str(p)),
        )
        if not images:
            raise EmptySourceError(f"expected images matching {spec!r}, got none; hint: check the pattern and quote it so the shell does not expand it")
        name = Path(spec.split("*")[0].split("?")[0].split("[")[0]).name or "images"
        return [ImageSequence(name, tuple(images), timed=False)]
    path = Path(spec)
    if not path.exists():
        raise SourceNotFoundError(f"expected an existing video, folder or glob, got {spec!r} (no such path); hint: check the spelling, or quote a glob")
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return [ImageSequence(path.stem, (path,), timed=False)]
        return [_open_video(path, path.stem)]
    if (path / "train" / "good").is_dir():  # an MVTec AD category: fit on its normal images
        path = path / "train" / "good"
        images = _images_in(path)
        if images:
            return [ImageSequence(path.parent.parent.name, tuple(images), timed=False)]
    images = _images_in(path)
    if images:
        return [ImageSequence(path.name, tuple(images))]
    sources: list[Source] = []
    for sub in sorted((p for p in path.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        sub_images = _images_in(sub)
        if sub_images:
            sources.append(ImageSequence(sub.name, tuple(sub_images)))
    sources.extend(_open_video(video, video.stem) for video in _videos_in(path))
    if not sources:
        raise EmptySourceError(
            f"expected images, videos or clip subfolders in {spec}, got none; hint: point at a "
            "folder of frames (clip/000.jpg ...) or at the folder holding the clip folders"
        )
    return sources


def resolve_sources(specs: Sequence[str | Path | Source]) -> list[Source]:
    """Turn SOURCE arguments into sources with unique names (sources given as objects, such as a
    labelled test set's, are taken as they are).

    Raises:
        SourceNotFoundError: a path does not exist.
        EmptySourceError: a folder or glob holds no frames.
        UnsupportedSourceError: a file is neither an image nor a readable video.
    """
    if not specs:
        raise EmptySourceError("expected at least one SOURCE, got none; hint: name a video or folder")
    sources: list[Source] = []
    seen: dict[str, int] = {}
    for spec in specs:
        for source in [spec] if isinstance(spec, ImageSequence | VideoFile | FrameArrays) else _resolve_one(str(spec)):
            count = seen.get(source.source_id, 0)
            seen[source.source_id] = count + 1
            if count:
                new_id = f"{source.source_id}-{count + 1}"
                source = dataclasses.replace(source, source_id=new_id)
            sources.append(source)
    return sources


__all__ = [
    "FrameArrays",
    "ImageSequence",
    "Source",
    "UnsupportedSourceError",
    "VideoFile",
    "natural_key",
    "read_image",
    "resolve_sources",
]


def untimed(sources: Sequence[Source]) -> list[str]:
    """The ids of the sources without a time axis (image sets: no motion cues, no filter of
    frame scores); every other source (videos, frame folders, cameras) is video."""
    return [s.source_id for s in sources if not getattr(s, "timed", True)]
