"""The pipeline's stages, as plain iterator transforms (no threads here; see :mod:`runner`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from streamad.anomaly_map import TemporalMean, topk_mean
from streamad.errors import ConfigError
from streamad.frames import FeatureBatch, Frame, FrameRef, ScoreMap, TensorBatch
from streamad.gaussian import batch_moments, chan_merge
from streamad.model import AnomalyModel
from streamad.model_store import Calibration


def ref_of(frame: Frame) -> FrameRef:
    return FrameRef(frame.source_id, frame.index, frame.pts_s, frame.name, frame.t_decoded_s)


def batch_frames(frames: Iterable[Frame], *, max_batch: int, stopped: Callable[[], bool] | None = None) -> Iterator[list[Frame]]:
    """Group frames into lists of at most ``max_batch``, in arrival order.

    When the stream ended because ``stopped()`` turned true, a trailing partial batch is not
    yielded: a fit then counts only whole batches, so a resumed fit sees the same batches (and
    bit-identical backbone outputs) as an uninterrupted one.

    Example:
        >>> import numpy as np
        >>> fs = [Frame("a", i, 0.0, np.zeros((1, 1, 3), np.uint8)) for i in range(5)]
        >>> [len(b) for b in batch_frames(fs, max_batch=2)]
        [2, 2, 1]
    """
    if max_batch < 1:
        raise ConfigError(f"expected a batch size of at least 1, got {max_batch}")
    batch: list[Frame] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == max_batch:
            yield batch
            batch = []
    if batch and not (stopped is not None and stopped()):
        yield batch


def preprocess(batches: Iterable[Sequence[Frame]], model: AnomalyModel, *, keep_originals: bool = False) -> Iterator[TensorBatch]:
    """Frames to normalised tensors at the model's input size, on its device."""
    for batch in batches:
        images = model.preprocess([f.image for f in batch], model.device)
        originals = tuple(f.image for f in batch) if keep_originals else ()
        yield TensorBatch(tuple(ref_of(f) for f in batch), images, originals)


def embed_batch(batch: TensorBatch, model: AnomalyModel) -> FeatureBatch:
    """Backbone forward and projection of one batch: tensors to embeddings (B, P, k)."""
    return FeatureBatch(batch.refs, model.embed_images(batch.images), batch.originals)


def embed(batches: Iterable[TensorBatch], model: AnomalyModel) -> Iterator[FeatureBatch]:
    """:func:`embed_batch` over a stream of batches."""
    for batch in batches:
        yield embed_batch(batch, model)


@dataclass(frozen=True, slots=True)
class FrameScoreConfig:
    """How a frame's score is derived from its anomaly map, causally.

    Attributes:
        calibrated: divide each position's distance by its mean on normal frames (``d / mean_p``),
            so maps read "times the normal distance here"; needs the calibration stored by ``fit``.
        topk_fraction: frame score = mean of the top fraction of map pixels (0 = the maximum).
        window: causal moving average over the last ``window`` frames of the same source.
    """

    calibrated: bool = True
    topk_fraction: float = 0.01
    window: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.topk_fraction <= 1:
            raise ConfigError(f"expected a top-k fraction in [0, 1], got {self.topk_fraction}")
        if self.window < 1:
            raise ConfigError(f"expected a temporal window >= 1, got {self.window}")

    def attrs(self) -> dict[str, object]:
        """As stored with scores and thresholds (a threshold holds only for the same settings)."""
        return {"calibrated": self.calibrated, "topk_fraction": self.topk_fraction, "window": self.window}


def calibrate_distances(distances: Tensor, calibration: Calibration) -> Tensor:
    """Distances (B, P) relative to each position's mean distance on normal frames."""
    mean = torch.as_tensor(calibration.position_mean, device=distances.device)
    return distances / mean.clamp_min(1e-6)


def score(
    batches: Iterable[FeatureBatch],
    model: AnomalyModel,
    *,
    calibration: Calibration | None,
    config: FrameScoreConfig,
) -> Iterator[ScoreMap]:
    """Embeddings to anomaly maps and pooled (not yet temporally smoothed) frame scores."""
    if config.calibrated and calibration is None:
        raise ConfigError("expected a calibrated model for calibrated frame scores, got a store without calibration; hint: refit, or score with --raw")
    for batch in batches:
        yield from score_distances(batch.refs, model.distances(batch.embeddings), model, calibration=calibration, config=config, originals=batch.originals)


def score_distances(
    refs: Sequence[FrameRef],
    distances: Tensor,
    model: AnomalyModel,
    *,
    calibration: Calibration | None,
    config: FrameScoreConfig,
    originals: Sequence[np.ndarray] = (),
) -> Iterator[ScoreMap]:
    """Distances (B, P) to anomaly maps and pooled frame scores."""
    if config.calibrated and calibration is not None:
        distances = calibrate_distances(distances, calibration)
    maps = model.maps(distances)
    pooled = topk_mean(maps, fraction=config.topk_fraction).cpu().numpy()
    peak = maps.flatten(1).amax(1).cpu().numpy()
    maps_np = maps.cpu().numpy()
    for i, ref in enumerate(refs):
        yield ScoreMap(ref, float(pooled[i]), float(peak[i]), maps_np[i], originals[i] if originals else None)


def smooth(results: Iterable[ScoreMap], *, window: int) -> Iterator[ScoreMap]:
    """Causal per-source moving average of frame scores (the map is unchanged)."""
    if window == 1:
        yield from results
        return
    mean = TemporalMean(window)
    for result in results:
        yield ScoreMap(result.ref, mean(result.ref.source_id, result.score), result.map_max, result.anomaly_map, result.original)


def rebatch(batches: Iterable[FeatureBatch], *, min_frames: int) -> Iterator[FeatureBatch]:
    """Concatenate consecutive feature batches until each holds at least ``min_frames`` frames.

    The running Gaussian's update and the Mahalanobis distances each read (P, k, k) float
    matrices once per batch whatever its size, so larger batches are cheaper per frame.
    """
    refs: list[FrameRef] = []
    parts: list[Tensor] = []
    originals: list[np.ndarray] = []
    for batch in batches:
        refs.extend(batch.refs)
        parts.append(batch.embeddings)
        originals.extend(batch.originals)
        if len(refs) >= min_frames:
            yield FeatureBatch(tuple(refs), torch.cat(parts), tuple(originals))
            refs, parts, originals = [], [], []
    if refs:
        yield FeatureBatch(tuple(refs), torch.cat(parts), tuple(originals))


def position_statistics(distances: Iterable[Tensor]) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and standard deviation per position of distance batches (B, P).

    Uses the same float64 pairwise (Chan) update as the embeddings' statistics.
    """
    count, mean, m2 = 0, None, None
    for batch in distances:
        n_b, mean_b, m2_b = batch_moments(batch.unsqueeze(-1))
        if mean is None or m2 is None:
            count, mean, m2 = n_b, mean_b, m2_b
        else:
            count, mean, m2 = chan_merge(count, mean, m2, n_b, mean_b, m2_b)
    if mean is None or m2 is None or count < 2:
        raise ConfigError(f"expected at least 2 calibration frames, got {count}")
    std = (m2[:, 0, 0] / (count - 1)).clamp_min(1e-12).sqrt()
    return mean[:, 0].cpu().numpy(), std.cpu().numpy(), count
