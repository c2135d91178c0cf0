"""Motion, causally: how a frame's embeddings changed since the frame one lag before it.

A :class:`MotionTracker` keeps, per source, the last frame's prepared embeddings and
presentation time. For each new frame it emits the change of the embeddings over the lag,
rescaled to exactly one lag (``(e_t - e_prev) * lag / gap``), when the previous frame lies
between half and one and a half lags back; otherwise (a source's first frame, a frame after a
gap: dropped live frames, a held-out frame, another ``--every``) the frame has no motion and is
scored on appearance alone. Lags are times, so ``--every`` and frame rates give true gaps.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from streamad.errors import ConfigError
from streamad.features import Features
from streamad.frames import FeatureBatch

MOTION = "motion"  # (B, P, k): the change of the embedding over one lag
HAS_MOTION = "has_motion"  # (B,) bool: whether the frame had a frame one lag before it
TOLERANCE = 0.5  # a previous frame counts when its gap is within (1 +- TOLERANCE) lags


class MotionTracker:
    """Per-source memory of the last frame, turning batches of prepared features into batches
    with ``motion`` and ``has_motion`` added.

    Args:
        key: the prepared feature whose change is the motion (``"embedding"``).
        lag_s: the lag, in seconds of presentation time.

    Example:
        >>> from streamad.frames import FrameRef
        >>> tracker = MotionTracker("embedding", lag_s=0.1)
        >>> refs = tuple(FrameRef("cam", i, i / 10) for i in (0, 1, 5))
        >>> out = tracker(FeatureBatch(refs, {"embedding": torch.arange(3.0).view(3, 1, 1)}))
        >>> out.features["has_motion"].tolist(), out.features["motion"].flatten().tolist()
        ([False, True, False], [0.0, 1.0, 0.0])
    """

    def __init__(self, key: str, *, lag_s: float) -> None:
        if not lag_s > 0:
            raise ConfigError(f"expected a positive motion lag, got {lag_s} s")
        self.key, self.lag_s = key, lag_s
        self._last: dict[str, tuple[float, Tensor]] = {}

    def __call__(self, batch: FeatureBatch) -> FeatureBatch:
        current = batch.features[self.key]
        motion = torch.zeros_like(current)
        has_motion = torch.zeros(len(batch.refs), dtype=torch.bool, device=current.device)
        for i, ref in enumerate(batch.refs):
            last = self._last.get(ref.source_id)
            if last is not None:
                gap = ref.pts_s - last[0]
                if abs(gap - self.lag_s) <= TOLERANCE * self.lag_s:
                    motion[i] = (current[i] - last[1]) * (self.lag_s / gap)
                    has_motion[i] = True
            self._last[ref.source_id] = (ref.pts_s, current[i])
        features: Features = {**batch.features, MOTION: motion, HAS_MOTION: has_motion}
        return FeatureBatch(batch.refs, features, batch.originals)

    def forget(self, source_id: str) -> None:
        """Drop a source's memory (it ended)."""
        self._last.pop(source_id, None)


def track(batches: Iterator[FeatureBatch], tracker: MotionTracker | None) -> Iterator[FeatureBatch]:
    """The tracker as a stage (the identity when there is none)."""
    for batch in batches:
        yield batch if tracker is None else tracker(batch)
