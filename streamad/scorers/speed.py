"""The object-speed cue: how fast the moving things of a frame are, against normal footage.

Fitting keeps the moving regions of normal frames (:mod:`streamad.features.regions`: speed
and box) in a bounded reservoir. Finalising learns two things from them:

- **perspective**: a thing far from the camera moves fewer pixels than the same thing near it,
  and for a camera over a ground plane the pixel speed of things at one true speed grows
  linearly with the image row of their feet. The median speed of the normal regions whose box
  ends in each of ``BANDS`` horizontal bands, fitted by a line (weighted by the regions in each
  band), is the normal speed at that height; a region's *relative speed* is its speed over the
  normal speed at its box's bottom (floored at a quarter of the overall median, so a band above
  the horizon cannot divide by nothing);
- **a position-free density** of relative speeds (log scale): a region scores its distance to
  the ``K``-th nearest normal region, counted only when it is faster than the normal median
  (slow things are what the appearance cue judges), as a ratio ``exp(distance)``: 1 for a
  normal speed, 3 for three times faster than anything normal seen.

A frame's speed map is each region's ratio over its box (the fastest region where boxes
overlap) and 1 elsewhere: the normal level, as for a cue with nothing to measure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from streamad.errors import ConfigError, StoreError

logger = logging.getLogger(__name__)

RESERVOIR = 20000  # normal regions kept (at a few regions a frame: hours of video)
BANDS = 8
MIN_BAND = 20  # regions for a band's median to count
K = 5  # neighbours: the 5th nearest normal speed, robust to a few odd regions in the footage
FLOOR = 0.25  # the normal speed at any height is at least this fraction of the overall median


class SpeedModel:
    """The normal speeds of moving regions, and how unusual a region's speed is."""

    def __init__(self) -> None:
        self.regions = np.zeros((0, 2), np.float32)  # (speed, bottom) of normal regions
        self.seen = 0  # regions offered
        self.stride = 1  # the reservoir keeps the regions whose number is a multiple of this
        self.line = (0.0, 0.0)  # the perspective fit: normal speed = a * bottom + b
        self.normal = np.zeros(0, np.float32)  # sorted log relative speeds of the normal regions

    def update(self, regions: Tensor) -> None:
        """Keep a batch's regions (B, R, FIELDS) rows (NaN rows are padding): every one while
        the reservoir has room, then, deterministically, every other (the reservoir halves)."""
        rows = regions.reshape(-1, regions.shape[-1]).cpu().numpy()
        rows = rows[~np.isnan(rows[:, 0])]
        kept = np.stack([rows[:, 0], rows[:, 4]], 1)
        self.regions = np.concatenate([self.regions, kept[(-self.seen) % self.stride :: self.stride]])
        self.seen += len(kept)
        self._halve()

    def _halve(self) -> None:
        while len(self.regions) > RESERVOIR:  # keeps the multiples of twice the stride
            self.regions, self.stride = self.regions[::2], 2 * self.stride

    def merge(self, other: SpeedModel) -> None:
        """Both reservoirs, halved to the bound (deterministic, not one fit's reservoir)."""
        self.regions = np.concatenate([self.regions, other.regions])
        self.seen, self.stride = self.seen + other.seen, max(self.stride, other.stride)
        self._halve()

    def finalise(self) -> None:
        """The perspective line and the sorted normal relative speeds."""
        speed, bottom = self.regions[:, 0].astype(np.float64), self.regions[:, 1].astype(np.float64)
        if len(speed) < K:  # nothing to compare with: the cue stays at its normal level
            logger.warning("the speed cue learned nothing: %d moving regions in the normal footage, %d needed; it calls every frame normal", len(speed), K)
            self.line, self.normal = (0.0, 0.0), np.full(1, np.inf, np.float32)
            return
        edges = np.linspace(0, 1, BANDS + 1)
        band = np.clip(np.searchsorted(edges, bottom, side="right") - 1, 0, BANDS - 1)
        centres, medians, counts = [], [], []
        for b in range(BANDS):
            inside = speed[band == b]
            if len(inside) >= MIN_BAND:
                centres.append((edges[b] + edges[b + 1]) / 2)
                medians.append(np.median(inside))
                counts.append(len(inside))
        if len(centres) >= 2:
            a, c = np.polyfit(centres, medians, 1, w=np.sqrt(counts))
        else:
            a, c = 0.0, float(np.median(speed))
        self.line = (float(a), float(c))
        self.normal = np.sort(self._log_relative(speed, bottom)).astype(np.float32)

    def _log_relative(self, speed: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        a, c = self.line
        floor = FLOOR * float(np.median(self.regions[:, 0]))
        return np.log(np.maximum(speed, 1e-6) / np.maximum(a * bottom + c, floor))

    def ratios(self, speed: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        """Each region's unusualness: ``exp`` of its log relative speed's distance to the
        ``K``-th nearest normal one, 1 for regions at most as fast as the normal median."""
        if not len(self.normal):
            raise ConfigError("expected a finalised speed model, got one still fitting")
        if np.isinf(self.normal).all():  # learned nothing
            return np.ones(len(speed), np.float32)
        value = self._log_relative(speed, bottom)
        at = np.searchsorted(self.normal, value)
        out = np.ones(len(value), np.float32)
        median = self.normal[len(self.normal) // 2]
        for i, (v, j) in enumerate(zip(value, at, strict=True)):
            if v > median:
                near = self.normal[max(0, j - K) : j + K]
                out[i] = np.exp(np.sort(np.abs(near - v))[min(K, len(near)) - 1])
        return out

    def maps(self, regions: Tensor, has_motion: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, h * w) speed maps on ``grid``: each region's ratio over its box, 1 elsewhere, NaN
        for a frame without motion."""
        h, w = grid
        out = torch.ones(regions.shape[0], h, w)
        rows = regions.cpu().numpy()
        for i in range(len(rows)):
            found = rows[i][~np.isnan(rows[i][:, 0])]
            if not len(found):
                continue
            for (x0, y0, x1, y1), ratio in zip(found[:, 1:5], self.ratios(found[:, 0], found[:, 4]), strict=True):
                top, left = int(y0 * h), int(x0 * w)
                box = out[i, top : max(int(np.ceil(y1 * h)), top + 1), left : max(int(np.ceil(x1 * w)), left + 1)]
                box.clamp_(min=float(ratio))
        out[~has_motion.cpu()] = float("nan")
        return out.flatten(1).to(regions.device)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"speed_regions": self.regions}

    def attrs(self) -> dict[str, Any]:
        return {"speed_seen": self.seen, "speed_stride": self.stride}

    def load(self, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any], *, finalised: bool) -> None:
        regions = np.asarray(arrays.get("speed_regions", np.zeros((0, 2), np.float32)))
        if regions.ndim != 2 or regions.shape[1] != 2:
            raise StoreError(f"expected speed_regions of shape (N, 2), got {regions.shape}")
        self.regions, self.seen = regions.astype(np.float32), int(attrs.get("speed_seen", len(regions)))
        self.stride = int(attrs.get("speed_stride", 1))
        if finalised:
            self.finalise()
