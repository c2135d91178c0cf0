"""From per-position distances to anomaly maps and frame scores."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamad.errors import ConfigError, check_shape


def blur_radius(sigma: float) -> int:
    """Half the Gaussian kernel's width: 4 sigma, rounded."""
    return int(4 * sigma + 0.5)


def axis_operators(*, feature_hw: tuple[int, int], out_hw: tuple[int, int], sigma: float = 4.0) -> tuple[Tensor, Tensor]:
    """The per-axis matrices of an anomaly map: distances on the (h, w) grid upsampled
    bilinearly to (H, W) (``align_corners=False``), then blurred with a Gaussian of ``sigma``
    output pixels (reflected borders; 0: no blur), as ``map = A_h @ grid @ A_w.T``.

    Bilinear upsampling and a Gaussian blur with reflected borders each act on rows and columns
    separately, so the whole map is the linear map ``grid -> A_h grid A_w^T`` with, per axis,
    ``A = G U``: ``U`` read off torch's bilinear upsampling of the identity, ``G`` the blur's
    normalised kernel ``exp(-x^2 / 2 sigma^2)`` over ``|x| <= 4 sigma`` with the border
    reflected (kornia's, which the tests hold it to), in float64.

    Returns:
        ``A_h`` of shape (H, h) and ``A_w`` of shape (W, w).
    """
    return _axis(feature_hw[0], out_hw[0], sigma), _axis(feature_hw[1], out_hw[1], sigma)


def _axis(n: int, size: int, sigma: float) -> Tensor:
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, n, 1)
    upsample = F.interpolate(eye, size=(size, 1), mode="bilinear", align_corners=False)[:, 0, :, 0].T  # (size, n)
    if sigma <= 0:
        return upsample.contiguous()
    radius = blur_radius(sigma)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-(offsets.astype(np.float64) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    blur = np.zeros((size, size))
    for i in range(size):
        j = i + offsets
        while (j < 0).any() or (j >= size).any():  # reflect about the edge samples
            j = np.where(j < 0, -j, j)
            j = np.where(j >= size, 2 * (size - 1) - j, j)
        np.add.at(blur[i], j, kernel)
    return (torch.from_numpy(blur) @ upsample).contiguous()


class AnomalyMap(nn.Module):
    """Upsampled, blurred anomaly maps as two small matrix products (:func:`axis_operators`):
    the same maps as upsampling then blurring (kornia's ``gaussian_blur2d``, the tests'
    reference) to float rounding, about 10x cheaper."""

    rows: Tensor
    cols_t: Tensor

    def __init__(self, *, feature_hw: tuple[int, int], out_hw: tuple[int, int], sigma: float = 4.0) -> None:
        super().__init__()
        self.feature_hw, self.out_hw, self.sigma = feature_hw, out_hw, sigma
        a_h, a_w = axis_operators(feature_hw=feature_hw, out_hw=out_hw, sigma=sigma)
        self.register_buffer("rows", a_h.float(), persistent=False)
        self.register_buffer("cols_t", a_w.T.contiguous().float(), persistent=False)

    def forward(self, distances: Tensor) -> Tensor:
        h, w = self.feature_hw
        check_shape("distances", distances.shape, f"(B, {h * w})", distances.ndim == 2 and distances.shape[1] == h * w)
        grid = distances.reshape(-1, h, w).to(self.rows.dtype)
        return torch.matmul(self.rows, torch.matmul(grid, self.cols_t))


def topk_mean(maps: Tensor, *, fraction: float) -> Tensor:
    """Mean of the largest ``fraction`` of each map's pixels; ``fraction=0`` is the maximum.

    Args:
        maps: shape (B, H, W).

    Returns:
        shape (B,).
    """
    flat = maps.flatten(1)
    count = max(1, int(round(fraction * int(flat.shape[1]))))  # int(): a constant when traced (export)
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


class CausalSmoother:
    """Causal exponential filter of frame scores per source, by presentation time: a frame
    ``dt`` seconds after the last one weighs ``1 - exp(-dt / time_s)``, so gaps (dropped live
    frames, ``--every``) count as the time they are, not as one frame.

    Example:
        >>> smooth = CausalSmoother(time_s=1.0)
        >>> [round(smooth("a", pts, s), 3) for pts, s in ((0.0, 1.0), (1.0, 3.0), (1.0, 3.0))]
        [1.0, 2.264, 2.264]
    """

    def __init__(self, time_s: float) -> None:
        if not time_s > 0:
            raise ConfigError(f"expected a positive filter time constant, got {time_s} s")
        self.time_s = time_s
        self._last: dict[str, tuple[float, float]] = {}

    def __call__(self, source_id: str, pts_s: float, score: float) -> float:
        last = self._last.get(source_id)
        if last is not None:
            weight = 1.0 - math.exp(-max(pts_s - last[0], 0.0) / self.time_s)
            score = last[1] + weight * (score - last[1])
        self._last[source_id] = (pts_s, score)
        return score
