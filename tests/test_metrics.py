from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from streamad.errors import ConfigError, ShapeError
from streamad.evaluation.metrics import BINS, PixelMetrics, SproMetrics, auroc, float16_keys


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(500) < 0.3
    scores = rng.integers(0, 20, 500) + labels * rng.integers(0, 4, 500)  # many ties
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_auroc_refuses_one_class_and_nan() -> None:
    with pytest.raises(ConfigError, match="both normal and anomalous"):
        auroc(np.arange(3.0), np.zeros(3))
    with pytest.raises(ConfigError, match="finite"):
        auroc(np.array([0.0, np.nan]), np.array([0, 1]))
    with pytest.raises(ShapeError, match="as many labels"):
        auroc(np.arange(3.0), np.zeros(2))


def key_values() -> np.ndarray:
    """The float16 value of every key 0..65535, by inverting the key's bit trick."""
    keys = np.arange(BINS, dtype=np.uint32)
    bits = np.where(keys & 0x8000, keys & 0x7FFF, ~keys & 0xFFFF).astype(np.uint16)
    return bits.view(np.float16).astype(np.float64)


def test_float16_keys_are_ordered_and_invert() -> None:
    values = np.array([-np.inf, -65504, -1.5, -0.0, 0.0, 1e-7, 0.5, 1.0, 65504, np.inf], np.float16)
    keys = float16_keys(values)
    assert np.all(np.diff(keys.astype(np.int64)) >= 0)
    assert np.array_equal(key_values()[keys], values.astype(np.float64))


def blobs(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for _ in range(rng.integers(0, 4)):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        h, w = rng.integers(1, 12, 2)
        mask[y : y + h, x : x + w] = True
    return mask


def sample(seed: int, n: int = 12, shape: tuple[int, int] = (40, 56)) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mask = blobs(rng, shape)
        anomaly_map = ndimage.gaussian_filter(rng.random(shape), 2) + mask * rng.uniform(0, 0.3)
        out.append((anomaly_map.astype(np.float32), mask))
    return out


def slow_aupro(pairs: list[tuple[np.ndarray, np.ndarray]], max_fpr: float = 0.3) -> float:
    """Exact reference: every unique threshold, regions from scipy.ndimage.label (8-connectivity)."""
    regions = []
    for anomaly_map, mask in pairs:
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [anomaly_map[labelled == r] for r in range(1, count + 1)]
    normal = np.concatenate([m[~k] for m, k in pairs])
    thresholds = np.unique(np.concatenate([m.ravel() for m, _ in pairs]))[::-1]
    fprs, pros = [0.0], [0.0]
    for t in thresholds:
        fprs.append(float((normal >= t).mean()))
        pros.append(float(np.mean([(r >= t).mean() for r in regions])))
    return area_to(np.array(fprs), np.array(pros), max_fpr)


def area_to(fpr: np.ndarray, curve: np.ndarray, max_fpr: float) -> float:
    """The normalised trapezoid area under curve(fpr) up to max_fpr, interpolated there."""
    keep = fpr <= max_fpr
    j = int(np.argmax(~keep))
    x = np.r_[fpr[keep], max_fpr]
    y = np.r_[curve[keep], curve[j - 1] + (curve[j] - curve[j - 1]) * (max_fpr - fpr[j - 1]) / (fpr[j] - fpr[j - 1])]
    return float(np.trapezoid(y, x) / max_fpr)


@pytest.mark.parametrize("seed", range(3))
def test_aupro_equals_exact_reference(seed: int) -> None:
    pairs = sample(seed)
    metrics = PixelMetrics()
    for anomaly_map, mask in pairs:
        metrics.add(anomaly_map, mask)
    assert metrics.result().aupro == pytest.approx(slow_aupro(pairs), abs=1e-3)


@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_equals_sklearn_on_float16_maps(seed: int) -> None:
    pairs = [(m.astype(np.float16), k) for m, k in sample(seed)]
    metrics = PixelMetrics()
    for anomaly_map, mask in pairs:
        metrics.add(anomaly_map, mask)
    labels = np.concatenate([k.ravel() for _, k in pairs])
    scores = np.concatenate([m.ravel() for m, _ in pairs]).astype(np.float64)
    assert metrics.result().auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_streaming_state_is_constant_and_mergeable() -> None:
    pairs = sample(7, n=40)
    whole, first, second = PixelMetrics(), PixelMetrics(), PixelMetrics()
    size = sum(a.nbytes for a in (whole.normal, whole.anomalous, whole.region_weight))
    for i, (anomaly_map, mask) in enumerate(pairs):
        whole.add(anomaly_map, mask)
        (first if i < 17 else second).add(anomaly_map, mask)
    assert sum(a.nbytes for a in (whole.normal, whole.anomalous, whole.region_weight)) == size  # no growth with frames
    first.merge(second)
    a, b = whole.result(), first.result()
    assert (a.auroc, a.aupro, a.regions) == (b.auroc, b.aupro, b.regions)


def test_masks_without_anomalies_give_no_pixel_metrics() -> None:
    metrics = PixelMetrics()
    metrics.add(np.random.default_rng(0).random((8, 8)), np.zeros((8, 8), bool))
    result = metrics.result()
    assert result.auroc is None and result.aupro is None


def test_shape_mismatch_refused() -> None:
    with pytest.raises(ShapeError, match=r"map \(4, 4\) and mask \(4, 5\)"):
        PixelMetrics().add(np.zeros((4, 4)), np.zeros((4, 5), bool))


@pytest.mark.parametrize("seed", range(4))
def test_f1_threshold_is_the_best_of_every_cut(seed: int) -> None:
    from sklearn.metrics import f1_score

    from streamad.evaluation.metrics import f1_threshold

    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.2
    scores = np.round(rng.normal(size=300) + 1.5 * labels, 1)  # ties
    threshold, best = f1_threshold(scores, labels)
    assert f1_score(labels, scores > threshold) == pytest.approx(best, abs=1e-12)
    brute = max(f1_score(labels, scores >= t) for t in np.unique(scores))
    assert best == pytest.approx(brute, abs=1e-12)


# -- sPRO (MVTec LOCO) ---------------------------------------------------------------------------

Defects = list[tuple[np.ndarray, float]]


def loco_sample(seed: int, shape: tuple[int, int] = (36, 48)) -> list[tuple[np.ndarray, Defects]]:
    """Good images and images with several, possibly overlapping, defects of several types: an
    absolute saturation (in pixels, sometimes above the defect's area) or a relative one."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(14):
        defects: Defects = []
        if i >= 5:
            for _ in range(rng.integers(1, 4)):
                mask = np.zeros(shape, bool)
                while not mask.any():
                    mask = blobs(rng, shape)  # a defect may have several connected parts
                area = int(mask.sum())
                kind = rng.integers(0, 3)
                saturation = [float(rng.integers(1, 2 * area + 2)), rng.uniform(0.2, 1.0) * area, float(area)][kind]
                defects.append((mask, saturation))
        bump = sum((mask * rng.uniform(0, 0.4) for mask, _ in defects), np.zeros(shape))
        anomaly_map = ndimage.gaussian_filter(rng.random(shape), 2) + bump
        out.append((anomaly_map.astype(np.float32), defects))
    return out


def slow_spro(images: list[tuple[np.ndarray, Defects]], max_fpr: float) -> float:
    """Independent reference: every threshold, each defect's saturated overlap counted directly;
    the false-positive rate over the pixels of the defect-free images only."""
    normal = np.concatenate([m.ravel() for m, d in images if not d])
    defects = [(m[mask], s) for m, d in images for mask, s in d]
    thresholds = np.unique(np.concatenate([m.ravel() for m, _ in images]))[::-1]
    fprs, spros = [0.0], [0.0]
    for t in thresholds:
        fprs.append(float((normal >= t).mean()))
        spros.append(float(np.mean([min((values >= t).sum() / s, 1.0) for values, s in defects])))
    return area_to(np.array(fprs), np.array(spros), max_fpr)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("max_fpr", [0.05, 0.3])
def test_spro_equals_exact_reference(seed: int, max_fpr: float) -> None:
    images = loco_sample(seed)
    assert sum(len(d) > 1 for _, d in images) >= 2  # several defects per image, some overlapping
    metrics = SproMetrics()
    for anomaly_map, defects in images:
        metrics.add(anomaly_map, defects)
    assert metrics.result(max_fpr=max_fpr).spro == pytest.approx(slow_spro(images, max_fpr), abs=1e-3)


def test_spro_with_area_saturation_is_the_per_region_overlap() -> None:
    """Saturation = each defect's area gives the PRO curve: here each defect fills its own image,
    so PixelMetrics (regions by connectivity, FPR over every normal pixel) sees the same
    regions and the same normal pixels."""
    rng = np.random.default_rng(4)
    spro, pro = SproMetrics(), PixelMetrics()
    for i in range(12):
        anomaly_map = ndimage.gaussian_filter(rng.random((20, 24)), 2) + (i >= 6) * rng.uniform(0, 0.3)
        whole = np.full(anomaly_map.shape, i >= 6)
        spro.add(anomaly_map, [(whole, float(whole.sum()))] if i >= 6 else [])
        pro.add(anomaly_map, whole)
    for limit in (0.05, 0.3, 1.0):
        assert spro.result(max_fpr=limit).spro == pytest.approx(pro.result(max_fpr=limit).aupro, abs=1e-12)
    fpr_a, curve_a = spro.result().curve
    fpr_b, curve_b = pro.result().pro
    assert np.allclose(fpr_a, fpr_b) and np.allclose(curve_a, curve_b)


def test_spro_merge_and_refusals() -> None:
    images = loco_sample(7)
    whole, a, b = SproMetrics(), SproMetrics(), SproMetrics()
    for i, (anomaly_map, defects) in enumerate(images):
        whole.add(anomaly_map, defects)
        (a if i % 2 else b).add(anomaly_map, defects)
    a.merge(b)
    assert a.result().spro == whole.result().spro and a.defects == whole.defects
    with pytest.raises(ConfigError, match="positive saturation"):
        SproMetrics().add(np.zeros((2, 2)), [(np.ones((2, 2), bool), 0.0)])
    with pytest.raises(ShapeError, match="one shape"):
        SproMetrics().add(np.zeros((2, 2)), [(np.ones((3, 2), bool), 1.0)])
    assert SproMetrics().result().spro is None
