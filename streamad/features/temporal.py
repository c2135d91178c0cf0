"""Motion, causally: how a frame changed since the frame one lag before it.

A :class:`MotionTracker` keeps, per source, the last frame's prepared embeddings (and, for
flow, its grey image) and presentation time. For each new frame it emits, rescaled to exactly
one lag (``lag / gap``), when the previous frame lies between half and one and a half lags back:

- ``motion``: the change of the embeddings (``(e_t - e_prev) * lag / gap``);
- ``flow``: dense optical flow (OpenCV's DIS) at half the input size, summarised per feature
  cell as the mean speed and an 8-bin histogram of directions weighted by speed (pixels per
  lag, over a 3x3 neighbourhood);
- ``speed``: the moving regions of a dense flow at half the input size
  (:mod:`streamad.features.regions`), each with its speed (pixels per lag) and box.

Otherwise (a source's first frame, a frame after a
gap: dropped live frames, a held-out frame, another ``--every``) the frame has no motion and is
scored on appearance alone. Lags are times, so ``--every`` and frame rates give true gaps.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streamad.errors import ConfigError
from streamad.features.extractor import Features
from streamad.features.regions import FIELDS, MAX_REGIONS, farneback, moving_regions
from streamad.frames import FeatureBatch

MOTION = "motion"  # (B, P, k): the change of the embedding over one lag
FLOW = "flow"  # (B, P, 1 + DIRECTIONS): speed and direction histogram per feature cell
REGIONS = "regions"  # (B, MAX_REGIONS, len(FIELDS)): moving regions, NaN rows past a frame's last
HAS_MOTION = "has_motion"  # (B,) bool: whether the frame had a frame one lag before it
TOLERANCE = 0.5  # a previous frame counts when its gap is within (1 +- TOLERANCE) lags
DIRECTIONS = 8


def dense_flow(previous: np.ndarray, current: np.ndarray, *, dis: cv2.DISOpticalFlow) -> np.ndarray:
    """DIS flow from ``previous`` to ``current`` (grey uint8, same size): (H, W, 2) pixels."""
    flow: np.ndarray = dis.calc(previous, current, None)  # type: ignore[call-overload]  # OpenCV's stubs lack the None initial flow the C++ API takes
    return flow


def flow_features(flow: np.ndarray, feature_hw: tuple[int, int]) -> Tensor:
    """A dense flow (H, W, 2) summarised per cell of the ``feature_hw`` grid:
    (P, 1 + DIRECTIONS) float32, speed then speed per direction bin."""
    speed = np.sqrt((flow**2).sum(-1))
    direction = ((np.arctan2(flow[..., 1], flow[..., 0]) + np.pi) / (2 * np.pi) * DIRECTIONS).astype(np.int64) % DIRECTIONS
    channels = np.zeros((1 + DIRECTIONS, *speed.shape), np.float32)
    channels[0] = speed
    np.put_along_axis(channels[1:], direction[None], speed[None], axis=0)
    maps = F.avg_pool2d(torch.from_numpy(channels)[None], 3, stride=1, padding=1, count_include_pad=False)
    return F.adaptive_avg_pool2d(maps, feature_hw)[0].flatten(1).T.contiguous()


class MotionTracker:
    """Per-source memory of the last frame, turning batches of prepared features into batches
    with ``motion`` and ``has_motion`` added.

    Args:
        key: the prepared feature whose change is the motion (``"embedding"``).
        lag_s: the lag, in seconds of presentation time.
        kinds: ``"feat"`` (the change of ``key``), ``"flow"`` and ``"speed"`` (these two need
            the batches' original frames).
        input_hw: the model's input size (the flow is computed at half of it, :attr:`flow_hw`);
        feature_hw: the grid.

    Example:
        >>> from streamad.frames import FrameRef
        >>> tracker = MotionTracker("embedding", lag_s=0.1)
        >>> refs = tuple(FrameRef("cam", i, i / 10) for i in (0, 1, 5))
        >>> out = tracker(FeatureBatch(refs, {"embedding": torch.arange(3.0).view(3, 1, 1)}))
        >>> out.features["has_motion"].tolist(), out.features["motion"].flatten().tolist()
        ([False, True, False], [0.0, 1.0, 0.0])
    """

    def __init__(
        self,
        key: str,
        *,
        lag_s: float,
        kinds: tuple[str, ...] = ("feat",),
        input_hw: tuple[int, int] = (0, 0),
        feature_hw: tuple[int, int] = (0, 0),
    ) -> None:
        if not lag_s > 0:
            raise ConfigError(f"expected a positive motion lag, got {lag_s} s")
        self.key, self.lag_s, self.kinds = key, lag_s, kinds
        self.flow_hw, self.feature_hw = (input_hw[0] // 2, input_hw[1] // 2), feature_hw
        self._dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST) if "flow" in kinds else None
        self._images = self._dis is not None or "speed" in kinds
        self._last: dict[str, tuple[float, Tensor, np.ndarray | None]] = {}

    def _grey(self, image: np.ndarray) -> np.ndarray:
        small = cv2.resize(image, (self.flow_hw[1], self.flow_hw[0]), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)

    def __call__(self, batch: FeatureBatch) -> FeatureBatch:
        current = batch.features[self.key]
        if self._images and len(batch.originals) != len(batch.refs):
            raise ConfigError("expected the original frames with the batch for the flow cue, got none; hint: keep originals for models with flow")
        motion = torch.zeros_like(current) if "feat" in self.kinds else None
        flow = torch.zeros(len(batch.refs), current.shape[1], 1 + DIRECTIONS, device=current.device) if "flow" in self.kinds else None
        regions = torch.full((len(batch.refs), MAX_REGIONS, len(FIELDS)), float("nan"), device=current.device) if "speed" in self.kinds else None
        has_motion = torch.zeros(len(batch.refs), dtype=torch.bool, device=current.device)
        for i, ref in enumerate(batch.refs):
            grey = self._grey(batch.originals[i]) if self._images else None
            last = self._last.get(ref.source_id)
            gap = ref.pts_s - last[0] if last is not None else 0.0
            if last is not None and abs(gap - self.lag_s) <= TOLERANCE * self.lag_s:
                if motion is not None:
                    motion[i] = (current[i] - last[1]) * (self.lag_s / gap)
                if flow is not None and self._dis is not None and last[2] is not None and grey is not None:
                    flow[i] = flow_features(dense_flow(last[2], grey, dis=self._dis) * (self.lag_s / gap), self.feature_hw).to(flow.device)
                if regions is not None and last[2] is not None and grey is not None:
                    found = torch.from_numpy(moving_regions(farneback(last[2], grey) * (self.lag_s / gap)))
                    regions[i, : len(found)] = found.to(regions.device)
                has_motion[i] = True
            self._last[ref.source_id] = (ref.pts_s, current[i].clone(), grey)  # not a view: the batch is freed
        features: Features = {**batch.features, HAS_MOTION: has_motion}
        if motion is not None:
            features[MOTION] = motion
        if flow is not None:
            features[FLOW] = flow
        if regions is not None:
            features[REGIONS] = regions
        return FeatureBatch(batch.refs, features, batch.originals)


def track(batches: Iterator[FeatureBatch], tracker: MotionTracker | None) -> Iterator[FeatureBatch]:
    """The tracker as a stage (the identity when there is none)."""
    for batch in batches:
        yield batch if tracker is None else tracker(batch)
