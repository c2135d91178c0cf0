"""From per-position distances to anomaly maps and frame scores."""

from __future__ import annotations

from collections import deque

import kornia
import numpy as np
import torch
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


def axis_operators(*, feature_hw: tuple[int, int], out_hw: tuple[int, int], sigma: float = 4.0) -> tuple[Tensor, Tensor]:
    """The per-axis matrices of :func:`anomaly_map`: ``map = A_h @ grid @ A_w.T``.

    Bilinear upsampling and a Gaussian blur with reflected borders each act on rows and columns
    separately, and the 1-D weights along each axis sum to one, so the whole map is the linear
    map ``grid -> A_h grid A_w^T``. Each matrix is read off :func:`anomaly_map` itself, applied
    (in float64) to grids that vary along one axis only; along the other they are constant, so
    a strip just wide enough for the blur's reflected border gives the same rows. A few strips
    at a time: the float64 convolution unfolds its input (a few MB, not hundreds).

    Returns:
        ``A_h`` of shape (H, h) and ``A_w`` of shape (W, w).
    """
    h, w = feature_hw
    strip = 2 * int(4 * sigma + 0.5) + 1 if sigma > 0 else 1

    def read_off(n: int, grid_hw: tuple[int, int], map_hw: tuple[int, int]) -> Tensor:
        eye = torch.eye(n, dtype=torch.float64)
        maps = [anomaly_map(eye[i : i + 4], feature_hw=grid_hw, out_hw=map_hw, sigma=sigma) for i in range(0, n, 4)]
        return torch.cat(maps)  # (n, *map_hw)

    a_h = read_off(h, (h, 1), (out_hw[0], strip))[:, :, 0].T
    a_w = read_off(w, (1, w), (strip, out_hw[1]))[:, 0, :].T
    return a_h.contiguous(), a_w.contiguous()


class AnomalyMap(nn.Module):
    """:func:`anomaly_map` as two small matrix products (see :func:`axis_operators`).

    Same maps to float rounding, about 10x cheaper than upsampling and blurring the full map.
    """

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
