"""From per-position distances to anomaly maps and frame scores."""

from __future__ import annotations

from collections import deque

import kornia
import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from streamad.errors import ConfigError, check_shape


def anomaly_map(distances: Tensor, *, feature_hw: tuple[int, int], out_hw: tuple[int, int], sigma: float = 4.0) -> Tensor:
    """Upsample per-position distances to the input size and smooth them.

    Args:
        distances: shape (B, P) with ``P = h * w``.
        feature_hw: (h, w) of the feature grid.
        out_hw: output (H, W), normally the model's input size.
        sigma: Gaussian blur sigma in output pixels (0 disables it).

    Returns:
        Maps of shape (B, H, W).
    """
    check_shape(
        "distances", distances.shape, f"(B, {feature_hw[0] * feature_hw[1]})", distances.ndim == 2 and distances.shape[1] == feature_hw[0] * feature_hw[1]
    )
    grid = distances.reshape(-1, 1, *feature_hw)
    up = F.interpolate(grid, size=out_hw, mode="bilinear", align_corners=False)
    if sigma > 0:
        radius = int(4 * sigma + 0.5)
        up = kornia.filters.gaussian_blur2d(up, (2 * radius + 1, 2 * radius + 1), (sigma, sigma), border_type="reflect")
    return up[:, 0]


class AnomalyMap(nn.Module):
    """Module form of :func:`anomaly_map`."""

    def __init__(self, *, feature_hw: tuple[int, int], out_hw: tuple[int, int], sigma: float = 4.0) -> None:
        super().__init__()
        self.feature_hw, self.out_hw, self.sigma = feature_hw, out_hw, sigma

    def forward(self, distances: Tensor) -> Tensor:
        return anomaly_map(distances, feature_hw=self.feature_hw, out_hw=self.out_hw, sigma=self.sigma)


def topk_mean(maps: Tensor, *, fraction: float) -> Tensor:
    """Mean of the largest ``fraction`` of each map's pixels; ``fraction=0`` is the maximum.

    Args:
        maps: shape (B, H, W).

    Returns:
        shape (B,).
    """
    flat = maps.flatten(1)
    count = max(1, int(round(fraction * flat.shape[1])))
    if count == 1:
        return flat.amax(1)
    return flat.topk(count, dim=1).values.mean(1)


class TemporalMean:
    """Causal moving average of frame scores, kept separately per source.

    Example:
        >>> smooth = TemporalMean(window=2)
        >>> [smooth("a", s) for s in (1.0, 3.0, 5.0)]
        [1.0, 2.0, 4.0]
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ConfigError(f"expected a temporal window of at least 1 frame, got {window}")
        self.window = window
        self._history: dict[str, deque[float]] = {}

    def __call__(self, source_id: str, score: float) -> float:
        history = self._history.setdefault(source_id, deque(maxlen=self.window))
        history.append(score)
        return float(np.mean(history))
