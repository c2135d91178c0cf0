"""Detection and localisation metrics, exact for scalars and streaming for pixels.

- :func:`auroc` is exact (ties count one half, as ``sklearn.metrics.roc_auc_score``) and is used
  for image- and frame-level scores, where one float per frame fits in memory.
- :class:`PixelMetrics` streams anomaly maps: it keeps three 65536-bin histograms over the
  float16 value of every pixel (normal pixels, anomalous pixels, and anomalous pixels weighted
  by one over their region's size), so memory is constant whatever the number of frames.
  Maps are stored as float16 (:mod:`streamad.stores.score_store`), so on stored maps the histograms are
  *exact*; on float32 maps the only approximation is the rounding to float16 (relative error
  at most 2**-11), which can merge two scores into a tie, never reorder them.
- Pixel AUROC and AUPRO follow the MVTec AD protocol: PRO at a threshold is the mean, over every
  connected ground-truth region of every image (8-connectivity), of the fraction of the region
  above the threshold; AUPRO integrates PRO over the false-positive rate of normal pixels from
  0 to ``max_fpr`` (0.3), with linear interpolation at ``max_fpr``, divided by ``max_fpr``.
- :class:`SproMetrics` is MVTec LOCO AD's saturated PRO: each annotated defect (one mask file,
  whatever its connected components) with its saturation threshold ``s`` in pixels counts
  ``min(overlap / s, 1)``; sPRO at a threshold is the mean over defects, integrated over the
  false-positive rate of the pixels of the *defect-free* test images up to ``max_fpr`` (0.05)
  and normalised, as the LOCO evaluation does. It streams like :class:`PixelMetrics`: a
  defect's pixels, taken from the highest score down, each add ``1/s`` until ``s`` pixels are
  covered, so per-key weights sum exactly to the saturated overlap at every threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from streamad.errors import ConfigError, ShapeError

BINS = 1 << 16


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve, exact, with ties counted one half (Mann-Whitney U).

    Example:
        >>> auroc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
        0.75
    """
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    if scores.shape != labels.shape:
        raise ShapeError(f"expected as many labels as scores, got {labels.size} labels for {scores.size} scores")
    _check_finite(scores)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ConfigError(f"expected both normal and anomalous samples for an AUROC, got {positives} anomalous and {negatives} normal")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, np.float64)
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    midranks = (starts + ends + 1) / 2.0  # 1-based mean rank of each tie group
    ranks[order] = np.repeat(midranks, ends - starts)
    u = ranks[labels].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


PAPERS_SIGMA = 3.0  # frames: the Gaussian the video anomaly detection papers smooth their scores with


def papers_protocol(clips: dict[str, tuple[np.ndarray, np.ndarray]], *, sigma: float = PAPERS_SIGMA) -> dict[str, object]:
    """Frame AUROC as most video anomaly detection papers report it, for comparison with their
    tables only: each clip's frame scores (before streamad's causal filter) smoothed by a
    non-causal Gaussian of ``sigma`` frames and min-max normalised per clip (both need the
    whole clip: no live camera can do this), then pooled. ``clips``: name -> (scores, labels).

    Example:
        >>> clips = {"a": (np.array([0.0, 1, 9, 8]), np.array([0, 0, 1, 1])), "b": (np.array([5.0, 6, 7, 5]), np.array([0, 1, 1, 0]))}
        >>> papers_protocol(clips, sigma=0.5)["groups"]["a"]
        1.0
    """
    from scipy.ndimage import gaussian_filter1d

    normalised, labels, groups = [], [], {}
    for name, (scores, flags) in clips.items():
        smooth = gaussian_filter1d(np.asarray(scores, np.float64), sigma) if len(scores) > 1 else np.asarray(scores, np.float64)
        span = smooth.max() - smooth.min() if len(smooth) else 0.0
        normalised.append((smooth - smooth.min()) / span if span > 0 else np.zeros_like(smooth))
        labels.append(np.asarray(flags, bool))
        groups[name] = round(auroc(smooth, labels[-1]), 6) if labels[-1].any() and not labels[-1].all() else None
    pooled = np.concatenate(normalised) if normalised else np.zeros(0)
    every = np.concatenate(labels) if labels else np.zeros(0, bool)
    overall = round(auroc(pooled, every), 6) if every.any() and not every.all() else None
    return {"auroc": overall, "sigma": sigma, "groups": groups}


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) over every distinct score, highest threshold first."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]
    tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
    return np.r_[0.0, fp / max(1, fp[-1])], np.r_[0.0, tp / max(1, tp[-1])], np.r_[np.inf, s[last]]


def f1_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold whose decisions ``score > threshold`` have the best F1, and that F1.

    The threshold lies halfway between the lowest score called anomalous and the next lower
    score (below every score when all are called anomalous).

    Example:
        >>> f1_threshold(np.array([0.0, 0.5, 1.5, 2.0]), np.array([0, 0, 1, 1]))
        (1.0, 1.0)
    """
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    _check_finite(scores)
    if not labels.any():
        raise ConfigError("expected at least one anomalous frame to pick an F1-optimal threshold, got none")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), s.size - 1]  # end of each tie group
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    f1 = 2 * tp / (2 * tp + fp + (labels.sum() - tp))
    best = int(np.argmax(f1))
    lowest = s[last[best]]
    below = s[last[best] + 1] if last[best] + 1 < s.size else lowest - max(1.0, abs(lowest))
    return float((lowest + below) / 2), float(f1[best])


def _check_finite(values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        raise ConfigError("expected finite scores, got NaN or infinite values; hint: the model or the predictions are broken")


def float16_keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint16 keys of the float16 values: key order is value order.

    Example:
        >>> float16_keys(np.array([-1.0, 0.0, 0.5, 2.0], np.float16)).tolist() == sorted(float16_keys(np.array([-1.0, 0.0, 0.5, 2.0], np.float16)).tolist())
        True
    """
    half = np.asarray(values, np.float16)
    if np.isnan(half).any():
        raise ConfigError("expected finite map values, got NaN; hint: the model or the predictions are broken")
    bits = half.view(np.uint16)
    return np.where(bits & 0x8000, ~bits, bits | 0x8000).astype(np.uint16)


def regions(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected regions (8-connectivity, as the MVTec AD evaluation) of a boolean mask.

    Returns:
        (number of regions, label image with 0 for background and 1..n for regions).
    """
    count, labelled = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return count - 1, labelled


@dataclass(frozen=True, slots=True)
class PixelResult:
    auroc: float | None
    aupro: float | None
    roc: tuple[np.ndarray, np.ndarray]  # (fpr, tpr), thresholds descending
    pro: tuple[np.ndarray, np.ndarray]  # (fpr, pro), thresholds descending
    pixels: int
    anomalous_pixels: int
    regions: int


class PixelMetrics:
    """Pixel AUROC and AUPRO over a stream of (map, mask) pairs, in constant memory.

    Example:
        >>> m = PixelMetrics()
        >>> m.add(np.array([[0.1, 0.9], [0.2, 0.8]]), np.array([[0, 1], [0, 1]], bool))
        >>> m.result().auroc
        1.0
    """

    def __init__(self) -> None:
        self.normal = np.zeros(BINS, np.int64)
        self.anomalous = np.zeros(BINS, np.int64)
        self.region_weight = np.zeros(BINS, np.float64)
        self.region_count = 0

    def add(self, anomaly_map: np.ndarray, mask: np.ndarray) -> None:
        """One map and its ground-truth mask (same shape; True = anomalous)."""
        if anomaly_map.shape != mask.shape:
            raise ShapeError(f"expected a map and a mask of one shape, got map {anomaly_map.shape} and mask {mask.shape}")
        mask = mask.astype(bool)
        keys = float16_keys(anomaly_map)
        self.normal += np.bincount(keys[~mask], minlength=BINS)
        if not mask.any():
            return
        self.anomalous += np.bincount(keys[mask], minlength=BINS)
        count, labelled = regions(mask)
        sizes = np.bincount(labelled.ravel(), minlength=count + 1).astype(np.float64)
        inside = labelled[mask]
        self.region_weight += np.bincount(keys[mask], weights=1.0 / sizes[inside], minlength=BINS)
        self.region_count += count

    def merge(self, other: PixelMetrics) -> None:
        """Add another stream's counts (e.g. from another worker)."""
        self.normal += other.normal
        self.anomalous += other.anomalous
        self.region_weight += other.region_weight
        self.region_count += other.region_count

    def result(self, *, max_fpr: float = 0.3) -> PixelResult:
        if not 0 < max_fpr <= 1:
            raise ConfigError(f"expected 0 < max_fpr <= 1, got {max_fpr}")
        negatives, positives = int(self.normal.sum()), int(self.anomalous.sum())
        used = np.flatnonzero((self.normal + self.anomalous) > 0)[::-1]  # thresholds, highest first
        fp = np.r_[0, np.cumsum(self.normal[used])]
        tp = np.r_[0, np.cumsum(self.anomalous[used])]
        covered = np.r_[0.0, np.cumsum(self.region_weight[used])]
        fpr = fp / max(1, negatives)
        tpr = tp / max(1, positives)
        pro = covered / max(1, self.region_count)
        score_auroc = float(np.trapezoid(tpr, fpr)) if positives and negatives else None
        score_aupro = _integrate_to(fpr, pro, max_fpr) / max_fpr if positives and negatives else None
        return PixelResult(score_auroc, score_aupro, (fpr, tpr), (fpr, pro), negatives + positives, positives, self.region_count)


def _integrate_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(x) (x ascending) from x[0] to ``limit``, interpolating at ``limit``."""
    inside = x <= limit
    xs, ys = x[inside], y[inside]
    if xs[-1] < limit and inside.sum() < x.size:
        j = int(np.argmax(~inside))  # first point beyond the limit
        y_at = y[j - 1] + (y[j] - y[j - 1]) * (limit - x[j - 1]) / (x[j] - x[j - 1])
        xs, ys = np.r_[xs, limit], np.r_[ys, y_at]
    return float(np.trapezoid(ys, xs))


@dataclass(frozen=True, slots=True)
class SproResult:
    spro: float | None
    curve: tuple[np.ndarray, np.ndarray]  # (fpr, sPRO), thresholds descending
    defects: int
    normal_pixels: int


class SproMetrics:
    """Saturated per-region overlap (sPRO, MVTec LOCO AD) over a stream of maps, constant memory.

    ``add`` takes a map with its defects: ``(mask, saturation)`` pairs, the saturation threshold
    in pixels (relative thresholds already multiplied by the defect's area). A map without
    defects is a defect-free image: its pixels are the normal pixels of the false-positive rate.
    The normal pixels of images with defects are not counted, as in the LOCO evaluation.

    Example:
        >>> m = SproMetrics()
        >>> m.add(np.array([[0.1, 0.2]]), [])
        >>> m.add(np.array([[0.9, 0.8], [0.0, 0.0]]), [(np.array([[1, 1], [0, 0]], bool), 1.0)])
        >>> m.result(max_fpr=1.0).spro
        1.0
    """

    def __init__(self) -> None:
        self.normal = np.zeros(BINS, np.int64)
        self.weight = np.zeros(BINS, np.float64)
        self.defects = 0

    def add(self, anomaly_map: np.ndarray, defects: Sequence[tuple[np.ndarray, float]]) -> None:
        keys = float16_keys(anomaly_map)
        if not defects:
            self.normal += np.bincount(keys.ravel(), minlength=BINS)
            return
        for mask, saturation in defects:
            if mask.shape != anomaly_map.shape:
                raise ShapeError(f"expected a map and a defect mask of one shape, got map {anomaly_map.shape} and mask {mask.shape}")
            if not saturation > 0:
                raise ConfigError(f"expected a positive saturation threshold, got {saturation}")
            inside = np.sort(keys[mask.astype(bool)])[::-1]  # highest score first
            covered = np.minimum(np.arange(inside.size + 1, dtype=np.float64), saturation) / saturation
            self.weight += np.bincount(inside, weights=np.diff(covered), minlength=BINS)
            self.defects += 1

    def merge(self, other: SproMetrics) -> None:
        self.normal += other.normal
        self.weight += other.weight
        self.defects += other.defects

    def result(self, *, max_fpr: float = 0.05, normal: np.ndarray | None = None) -> SproResult:
        """The normalised area under sPRO(FPR) up to ``max_fpr``; ``normal`` replaces this
        stream's normal-pixel histogram (a group of anomalies ranked against every good image)."""
        if not 0 < max_fpr <= 1:
            raise ConfigError(f"expected 0 < max_fpr <= 1, got {max_fpr}")
        normal = self.normal if normal is None else normal
        negatives = int(normal.sum())
        used = np.flatnonzero((normal > 0) | (self.weight > 0))[::-1]
        fpr = np.r_[0, np.cumsum(normal[used])] / max(1, negatives)
        spro = np.r_[0.0, np.cumsum(self.weight[used])] / max(1, self.defects)
        area = _integrate_to(fpr, spro, max_fpr) / max_fpr if negatives and self.defects else None
        return SproResult(area, (fpr, spro), self.defects, negatives)
