"""Frozen value objects that travel between stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import Tensor


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame.

    Attributes:
        source_id: name of the source the frame came from (a clip, a camera, an image set).
        index: 0-based position of the frame within its source (before any stride).
        pts_s: presentation time in seconds (``index / fps`` when the container has none).
        image: RGB uint8 array, shape (H, W, 3).
        name: file name for frames read from files, else "".
    """

    source_id: str
    index: int
    pts_s: float
    image: np.ndarray
    name: str = ""
    t_decoded_s: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class FrameRef:
    """The identity of a frame, without its pixels."""

    source_id: str
    index: int
    pts_s: float
    name: str = ""
    t_decoded_s: float = field(default=0.0, compare=False)


@dataclass(frozen=True, slots=True)
class TensorBatch:
    """Preprocessed frames: ``images`` (B, 3, H, W) on the model's device, uint8 at the input
    size (the extractor normalises them)."""

    refs: tuple[FrameRef, ...]
    images: Tensor
    originals: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True, slots=True)
class FeatureBatch:
    """Features of the frames in ``refs``: named tensors with the batch on axis 0 (the
    extractor's maps, or a scorer's prepared features)."""

    refs: tuple[FrameRef, ...]
    features: dict[str, Tensor]
    originals: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True, slots=True)
class ScoreMap:
    """The result for one frame.

    Attributes:
        ref: which frame.
        score: the frame score used for decisions.
        map_max: the maximum of the anomaly map (the classic PaDiM image score).
        anomaly_map: float32 array, shape (H, W) at the model's input size.
        original: the RGB frame, kept only when a sink asked for it (overlays).
        layers: each cue's own map (``appearance``, ``motion``), in the map's units, only when a
            sink asked for them (``--overlay-layers``).
        pooled: the frame score before the temporal filters (``--window``, ``--smooth``);
            None: the same as ``score``.
        regions: with the speed cue, the frame's moving regions as rows (x0, y0, x1, y1,
            speed): the box as fractions of the frame, the speed in the frame's pixels per second.
    """

    ref: FrameRef
    score: float
    map_max: float
    anomaly_map: np.ndarray
    original: np.ndarray | None = None
    layers: dict[str, np.ndarray] | None = None
    pooled: float | None = None
    regions: np.ndarray | None = None
