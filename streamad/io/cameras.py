"""Cameras and their models: naming, pairing ``[name=]URL`` with ``--model [name=]PATH``, and
durations such as ``90s``/``5m``/``2h``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from streamad.errors import ConfigError
from streamad.io.live import is_live


@dataclass(frozen=True, slots=True)
class Camera:
    """A camera: its name, URL (or file) and model store."""

    name: str
    url: str
    model: str


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
