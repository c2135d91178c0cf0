"""Moving regions: the things that move in a frame, found in its dense optical flow.

The flow is Farneback's (OpenCV, 3 pyramid levels, 15-pixel windows): on small things moving
several pixels a frame it keeps their speed where DIS's fast presets, which stop at a coarser
scale, smear it over the background (measured: a 20-pixel square moving 9 pixels a frame reads
9.05 at its fastest pixel, against 2.6 with DIS ultrafast).

A pixel moves when its flow is faster than ``NOISE_FACTOR`` times the frame's median flow
speed (the median pixel of a surveillance frame is background, so the median is the flow's
noise level on this camera and light) and than ``MIN_SPEED``. Moving pixels, closed over 3x3
gaps, form connected components (OpenCV's ``connectedComponentsWithStats``); a component of
at least ``MIN_AREA`` pixels is a region, described by the ``SPEED_QUANTILE`` quantile of its
pixels' speeds (flow is smoothed over a window, so a thing's edges and the background next to
it read slower than the thing: a high quantile, not the maximum, which a single noisy pixel
sets), its box and its size. A frame keeps its ``MAX_REGIONS``
fastest regions (a frame with more moving things than that is reported by its fastest).
"""

from __future__ import annotations

import cv2
import numpy as np

NOISE_FACTOR = 4.0
MIN_SPEED = 0.1  # pixels per lag: below this DIS's sub-pixel flow is noise
MIN_AREA = 8  # pixels of the flow image
MAX_REGIONS = 32
SPEED_QUANTILE = 0.9
FIELDS = ("speed", "x0", "y0", "x1", "y1", "area")  # speed in flow pixels per lag; box and area as fractions of the image


def farneback(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Dense flow from ``previous`` to ``current`` (grey uint8, same size): (H, W, 2) pixels."""
    flow: np.ndarray = cv2.calcOpticalFlowFarneback(previous, current, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return flow


def moving_regions(flow: np.ndarray) -> np.ndarray:
    """Regions of a dense flow (H, W, 2) as rows of :data:`FIELDS`, fastest first, at most
    :data:`MAX_REGIONS` (float32, (R, 6)).

    Example:
        >>> flow = np.zeros((40, 60, 2), np.float32)
        >>> flow[10:20, 30:40, 0] = 3.0
        >>> [round(float(v), 3) for v in moving_regions(flow)[0]]
        [3.0, 0.5, 0.25, 0.667, 0.5, 0.042]
    """
    h, w = flow.shape[:2]
    speed = np.sqrt((flow.astype(np.float32) ** 2).sum(-1))
    threshold = max(NOISE_FACTOR * float(np.median(speed)), MIN_SPEED)
    moving = cv2.morphologyEx((speed > threshold).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(moving, connectivity=8)
    rows = []
    for label in range(1, count):
        x, y, bw, bh, area = (int(v) for v in stats[label])
        if area < MIN_AREA:
            continue
        inside = speed[y : y + bh, x : x + bw][labels[y : y + bh, x : x + bw] == label]
        rows.append((float(np.quantile(inside, SPEED_QUANTILE)), x / w, y / h, (x + bw) / w, (y + bh) / h, area / (h * w)))
    rows.sort(key=lambda row: -row[0])
    return np.asarray(rows[:MAX_REGIONS], np.float32).reshape(-1, len(FIELDS))
