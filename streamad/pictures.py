"""Images of what the detector sees: heat maps blended over frames, outlines, captions (cv2).
Charts (timelines, curves, histograms) are :mod:`streamad.plots`'s."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


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


def heatmap(anomaly_map: np.ndarray, hw: tuple[int, int], *, vmin: float, vmax: float) -> np.ndarray:
    """A JET heat map of ``anomaly_map`` at ``hw`` (RGB uint8), every value coloured: ``vmin``
    and below blue, ``vmax`` and above red."""
    resized = cv2.resize(anomaly_map.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    norm = np.clip((resized - vmin) / max(vmax - vmin, 1e-6), 0, 1)
    return cv2.cvtColor(cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def outline(image: np.ndarray, mask: np.ndarray, *, colour: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """The image with the outline of a boolean mask (any size, resized to the image) drawn on it."""
    height, width = image.shape[:2]
    resized = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(resized, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.ascontiguousarray(image.copy())
    cv2.drawContours(out, contours, -1, colour, max(1, round(max(height, width) / 200)))
    return out


def label(image: np.ndarray, text: str) -> np.ndarray:
    """The image with ``text`` written at its bottom left (white on a dark outline)."""
    out = image.copy()
    at = (8, out.shape[0] - 10)
    cv2.putText(out, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(out, text, at, cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def boxes(image: np.ndarray, regions: np.ndarray, *, colour: tuple[int, int, int] = (0, 255, 255)) -> np.ndarray:
    """The image with each region's box and its speed: rows (x0, y0, x1, y1, pixels/s), the box
    as fractions of the image's width and height."""
    out = image.copy()
    h, w = out.shape[:2]
    for x0, y0, x1, y1, speed in regions:
        top_left, bottom_right = (int(x0 * w), int(y0 * h)), (int(np.ceil(x1 * w)) - 1, int(np.ceil(y1 * h)) - 1)
        cv2.rectangle(out, top_left, bottom_right, colour, 1, cv2.LINE_AA)
        at = (top_left[0], max(top_left[1] - 3, 10))
        cv2.putText(out, f"{speed:.0f} px/s", at, cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, f"{speed:.0f} px/s", at, cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return out


def jpeg(image: np.ndarray, *, quality: int = 80) -> bytes:
    """An RGB uint8 image as JPEG bytes."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"expected an image OpenCV can encode, got shape {image.shape}")
    return encoded.tobytes()


def save_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image (PNG or JPEG by the suffix)."""
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
