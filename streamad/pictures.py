"""Pictures people would rather look at than read: heatmap overlays and score timelines."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def overlay(
    image: np.ndarray, anomaly_map: np.ndarray, *, vmin: float, vmax: float, score: float | None = None, alert: bool = False, alpha: float = 0.5
) -> np.ndarray:
    """Blend a JET heatmap of ``anomaly_map`` (any size) onto an RGB uint8 ``image`` (H, W, 3).

    Values at or below ``vmin`` are left uncoloured; ``vmax`` and above are red.
    """
    height, width = image.shape[:2]
    resized = cv2.resize(anomaly_map.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    norm = np.clip((resized - vmin) / max(vmax - vmin, 1e-6), 0, 1)
    heat = cv2.cvtColor(cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    weight = (alpha * np.sqrt(norm))[..., None]  # faint where normal, strong where anomalous
    out = (image.astype(np.float32) * (1 - weight) + heat.astype(np.float32) * weight).astype(np.uint8)
    if score is not None:
        text = f"score {score:.2f}"
        cv2.putText(out, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    if alert:
        cv2.rectangle(out, (1, 1), (width - 2, height - 2), (255, 0, 0), 4)
    return out


def timeline(
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    threshold: float | None = None,
    title: str = "frame scores",
    size: tuple[int, int] = (1200, 420),
) -> None:
    """Plot score against time (seconds) per source and save a PNG.

    Args:
        series: ``{source_id: (pts_s, score)}``.
        threshold: drawn as a dashed red line when given.
    """
    width, height = size
    left, right, top, bottom = 70, 160, 36, 46
    canvas = np.full((height, width, 3), 255, np.uint8)
    values = [s for _, s in series.values() if len(s)]
    times = [t for t, _ in series.values() if len(t)]
    if not values:
        cv2.imwrite(str(path), canvas)
        return
    y_lo = min(float(np.min(v)) for v in values)
    y_hi = max(float(np.max(v)) for v in values)
    if threshold is not None:
        y_lo, y_hi = min(y_lo, threshold), max(y_hi, threshold)
    pad = 0.05 * max(y_hi - y_lo, 1e-6)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_lo = min(float(np.min(t)) for t in times)
    x_hi = max(float(np.max(t)) for t in times)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1

    def to_px(t: np.ndarray, v: np.ndarray) -> np.ndarray:
        x = left + (t - x_lo) / (x_hi - x_lo) * (width - left - right)
        y = height - bottom - (v - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return np.stack([x, y], axis=1).astype(np.int32)

    black, grey = (0, 0, 0), (220, 220, 220)
    for i in range(6):
        v = y_lo + (y_hi - y_lo) * i / 5
        y = int(to_px(np.array([x_lo]), np.array([v]))[0, 1])
        cv2.line(canvas, (left, y), (width - right, y), grey, 1)
        cv2.putText(canvas, f"{v:.2f}", (6, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, black, 1, cv2.LINE_AA)
        t = x_lo + (x_hi - x_lo) * i / 5
        x = int(to_px(np.array([t]), np.array([y_lo]))[0, 0])
        cv2.putText(canvas, f"{t:.1f}s", (x - 14, height - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (width - right, height - bottom), black, 1)
    for n, (name, (t, v)) in enumerate(series.items()):
        colour = PALETTE[n % len(PALETTE)][::-1]
        if len(t) > 1:
            cv2.polylines(canvas, [to_px(np.asarray(t, float), np.asarray(v, float))], False, colour, 2, cv2.LINE_AA)
        cv2.putText(canvas, name[:18], (width - right + 10, top + 16 + 18 * n), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    if threshold is not None:
        y = int(to_px(np.array([x_lo]), np.array([threshold]))[0, 1])
        for x in range(left, width - right, 12):
            cv2.line(canvas, (x, y), (min(x + 6, width - right), y), (0, 0, 214), 1)
        cv2.putText(canvas, "threshold", (width - right + 10, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 214), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (left, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, "time (s)", (width // 2 - 30, height - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, black, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), canvas)
