"""Pictures people would rather look at than read: heatmap overlays and score timelines."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def save_rgb(path: str | Path, image: np.ndarray) -> None:
    """Write an RGB uint8 image (PNG or JPEG by the suffix)."""
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


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
    line_plot(series, path, title=title, x_label="time (s)", threshold=threshold, size=size, x_unit="s")


def _data_limits(drawn: Mapping[str, tuple[np.ndarray, np.ndarray]], threshold: float | None) -> tuple[float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi) holding every line and the threshold, y padded by 5 %."""
    y_lo = min(float(np.min(y)) for _, y in drawn.values())
    y_hi = max(float(np.max(y)) for _, y in drawn.values())
    if threshold is not None:
        y_lo, y_hi = min(y_lo, threshold), max(y_hi, threshold)
    pad = 0.05 * max(y_hi - y_lo, 1e-6)
    x_lo = min(float(np.min(x)) for x, _ in drawn.values())
    x_hi = max(float(np.max(x)) for x, _ in drawn.values())
    return x_lo, x_hi, y_lo - pad, y_hi + pad


def _grid(
    canvas: np.ndarray,
    to_px: Callable[[np.ndarray, np.ndarray], np.ndarray],
    limits: tuple[float, float, float, float],
    margins: tuple[int, int, int, int],
    *,
    x_unit: str,
) -> None:
    """Six labelled horizontal grid lines, six x tick labels and the plot's frame."""
    x_lo, x_hi, y_lo, y_hi = limits
    left, right, top, bottom = margins
    height, width = canvas.shape[:2]
    black, grey, font = (0, 0, 0), (220, 220, 220), cv2.FONT_HERSHEY_SIMPLEX
    for i in range(6):
        v = y_lo + (y_hi - y_lo) * i / 5
        y = int(to_px(np.array([x_lo]), np.array([v]))[0, 1])
        cv2.line(canvas, (left, y), (width - right, y), grey, 1)
        cv2.putText(canvas, f"{v:.2f}", (6, y + 4), font, 0.4, black, 1, cv2.LINE_AA)
        t = x_lo + (x_hi - x_lo) * i / 5
        x = int(to_px(np.array([t]), np.array([y_lo]))[0, 0])
        cv2.putText(canvas, f"{t:.3g}{x_unit}", (x - 14, height - bottom + 18), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(canvas, (left, top), (width - right, height - bottom), black, 1)


def line_plot(
    series: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    title: str,
    x_label: str,
    y_label: str = "",
    limits: tuple[float, float, float, float] | None = None,
    threshold: float | None = None,
    diagonal: bool = False,
    steps: bool = False,
    size: tuple[int, int] = (1200, 420),
    x_unit: str = "",
) -> None:
    """Lines ``{name: (x, y)}`` on one set of axes, saved as a PNG.

    Args:
        limits: (x_lo, x_hi, y_lo, y_hi); default fits the data.
        threshold: a dashed red horizontal line.
        diagonal: a grey x = y line (ROC chance level).
        steps: draw each line as a step function (histograms).
    """
    width, height = size
    left, right, top, bottom = 70, 190, 36, 46
    canvas = np.full((height, width, 3), 255, np.uint8)
    drawn = {name: (np.asarray(x, float), np.asarray(y, float)) for name, (x, y) in series.items() if len(x)}
    if limits is None and not drawn:
        cv2.imwrite(str(path), canvas)
        return
    x_lo, x_hi, y_lo, y_hi = limits if limits is not None else _data_limits(drawn, threshold)
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    y_hi = y_hi if y_hi > y_lo else y_lo + 1

    def to_px(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        px = left + (np.clip(x, x_lo, x_hi) - x_lo) / (x_hi - x_lo) * (width - left - right)
        py = height - bottom - (np.clip(y, y_lo, y_hi) - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return np.stack([px, py], axis=1).astype(np.int32)

    black = (0, 0, 0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    _grid(canvas, to_px, (x_lo, x_hi, y_lo, y_hi), (left, right, top, bottom), x_unit=x_unit)
    if diagonal:
        cv2.line(canvas, tuple(to_px(np.array([x_lo]), np.array([y_lo]))[0]), tuple(to_px(np.array([x_hi]), np.array([y_hi]))[0]), (180, 180, 180), 1)
    for n, (name, (x, y)) in enumerate(drawn.items()):
        colour = PALETTE[n % len(PALETTE)][::-1]
        if steps:
            x, y = np.repeat(x, 2)[1:], np.repeat(y, 2)[:-1]
        if len(x) > 1:
            cv2.polylines(canvas, [to_px(x, y)], False, colour, 2, cv2.LINE_AA)
        cv2.putText(canvas, name[:24], (width - right + 10, top + 16 + 18 * n), font, 0.45, colour, 1, cv2.LINE_AA)
    if threshold is not None:
        y = int(to_px(np.array([x_lo]), np.array([threshold]))[0, 1])
        for x in range(left, width - right, 12):
            cv2.line(canvas, (x, y), (min(x + 6, width - right), y), (0, 0, 214), 1)
        cv2.putText(canvas, "threshold", (width - right + 10, y + 4), font, 0.4, (0, 0, 214), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (left, 24), font, 0.6, black, 1, cv2.LINE_AA)
    cv2.putText(canvas, x_label, (width // 2 - 4 * len(x_label), height - 8), font, 0.45, black, 1, cv2.LINE_AA)
    if y_label:
        cv2.putText(canvas, y_label, (left + 6, top + 16), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.imwrite(str(path), canvas)


def histogram(groups: Mapping[str, np.ndarray], path: str | Path, *, title: str, bins: int = 50) -> None:
    """Density histograms of several score sets on shared bins (e.g. normal vs anomalous)."""
    values = [np.asarray(v, float) for v in groups.values() if len(v)]
    if not values:
        line_plot({}, path, title=title, x_label="score")
        return
    edges = np.histogram_bin_edges(np.concatenate(values), bins=bins)
    series = {}
    for name, v in groups.items():
        if len(v):
            density, _ = np.histogram(np.asarray(v, float), bins=edges, density=True)
            series[f"{name} ({len(v)})"] = (edges, np.r_[density, density[-1]])
    line_plot(series, path, title=title, x_label="score", y_label="density", steps=True)


def grid(tiles: list[tuple[np.ndarray, str]], path: str | Path, *, columns: int = 4, tile_width: int = 320) -> None:
    """RGB images with captions in a grid, each fitted into a square tile, saved as a PNG."""
    cells = []
    for image, caption in tiles:
        scale = tile_width / max(image.shape[:2])
        height, width = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
        cell = np.full((tile_width + 24, tile_width, 3), 255, np.uint8)
        cell[24 : 24 + height, :width] = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        cv2.putText(cell, caption[:48], (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
        cells.append(cell)
    cell_h = max(c.shape[0] for c in cells)
    rows = []
    for start in range(0, len(cells), columns):
        row = [np.pad(c, ((0, cell_h - c.shape[0]), (0, 0), (0, 0)), constant_values=255) for c in cells[start : start + columns]]
        row += [np.full((cell_h, tile_width, 3), 255, np.uint8)] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
