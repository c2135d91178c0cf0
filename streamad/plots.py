"""Charts people would rather look at than read, drawn with matplotlib (the only module that
imports it, lazily, on the Agg backend): score timelines, ROC and PRO curves, score histograms
and grids of worst cases. The format follows the path's suffix: PNG (default), SVG or PDF.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from streamad.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FORMATS = (".png", ".svg", ".pdf")
DPI = 120


@contextmanager
def _figure(path: str | Path, *, size_in: tuple[float, float], rows: int = 1, columns: int = 1) -> Iterator[Any]:
    """A figure with ``rows`` x ``columns`` axes, saved to ``path`` (and closed) on exit."""
    suffix = Path(path).suffix.lower() or ".png"
    if suffix not in FORMATS:
        raise ConfigError(f"expected a picture path ending in {'/'.join(FORMATS)}, got {str(path)!r}")
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(rows, columns, figsize=size_in, squeeze=False)
    try:
        yield figure, axes
        figure.tight_layout()
        figure.savefig(str(path), dpi=DPI, format=suffix[1:])
    finally:
        plt.close(figure)


def runs_above(values: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """``[start, stop)`` index ranges where ``values`` exceed ``threshold``.

    Example:
        >>> runs_above(np.array([0, 2, 3, 0, 5]), 1.0)
        [(1, 3), (4, 5)]
    """
    above = np.r_[False, np.asarray(values) > threshold, False]
    edges = np.flatnonzero(np.diff(above.astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def timeline(series: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *, threshold: float | None = None, title: str = "frame scores") -> None:
    """Frame score against presentation time, one line per source; with a threshold, the
    threshold as a dashed line and the spans above it shaded (the events).

    Args:
        series: ``{source_id: (pts_s, score)}``.
    """
    with _figure(path, size_in=(10, 3.6)) as (_, axes):
        ax: Axes = axes[0, 0]
        for name, (times, scores) in series.items():
            times, scores = np.asarray(times, float), np.asarray(scores, float)
            (line,) = ax.plot(times, scores, linewidth=1.2, label=name)
            if threshold is not None:
                for start, stop in runs_above(scores, threshold):
                    ax.axvspan(times[start], times[stop - 1], color=line.get_color(), alpha=0.15, linewidth=0)
        if threshold is not None:
            ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
        ax.set(title=title, xlabel="time (s)", ylabel="frame score")
        ax.grid(alpha=0.3)
        if series or threshold is not None:
            ax.legend(loc="upper left", fontsize="small")


def roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> None:
    """ROC curves ``{label: (fpr, tpr)}`` with the chance diagonal."""
    with _figure(path, size_in=(5.5, 5)) as (_, axes):
        ax: Axes = axes[0, 0]
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1, label="chance")
        for name, (fpr, tpr) in curves.items():
            ax.plot(fpr, tpr, linewidth=1.5, label=name)
        ax.set(title="ROC", xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")


def pro(fpr: np.ndarray, overlap: np.ndarray, path: str | Path, *, max_fpr: float, label: str, saturated: bool) -> None:
    """The (s)PRO curve: mean per-region overlap against the false positive rate, to ``max_fpr``."""
    with _figure(path, size_in=(5.5, 5)) as (_, axes):
        ax: Axes = axes[0, 0]
        ax.plot(fpr, overlap, linewidth=1.5, label=label)
        name = "sPRO" if saturated else "PRO"
        title = "saturated per-region overlap" if saturated else "per-region overlap"
        xlabel = "false positive rate" + (" (defect-free images)" if saturated else "")
        ax.set(title=title, xlabel=xlabel, ylabel=name, xlim=(0, max_fpr), ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")


def histogram(groups: Mapping[str, np.ndarray], path: str | Path, *, title: str, bins: int = 50) -> None:
    """Density histograms of several score sets on shared bins (normal vs anomalous)."""
    values = {name: np.asarray(v, float) for name, v in groups.items() if len(v)}
    with _figure(path, size_in=(7, 4)) as (_, axes):
        ax: Axes = axes[0, 0]
        if values:
            edges = np.histogram_bin_edges(np.concatenate(list(values.values())), bins=bins)
            for name, v in values.items():
                ax.hist(v, bins=list(edges), density=True, alpha=0.5, label=f"{name} ({v.size})")
            ax.legend(fontsize="small")
        ax.set(title=title, xlabel="score", ylabel="density")
        ax.grid(alpha=0.3)


def grid(tiles: Sequence[tuple[np.ndarray, str]], path: str | Path, *, columns: int = 3) -> None:
    """RGB uint8 images with captions, ``columns`` a row (no blank cells but the last row's)."""
    columns = max(1, min(columns, len(tiles)))
    rows = max(1, -(-len(tiles) // columns))
    aspect = max((image.shape[0] / image.shape[1] for image, _ in tiles), default=1.0)
    with _figure(path, size_in=(4.2 * columns, 4.2 * columns * aspect * rows / columns + 0.4 * rows), rows=rows, columns=columns) as (_, axes):
        for cell, ax in enumerate(axes.flat):
            ax.axis("off")
            if cell < len(tiles):
                image, caption = tiles[cell]
                ax.imshow(image)
                ax.set_title(caption, fontsize="small")
