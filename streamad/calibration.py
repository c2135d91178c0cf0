"""Calibration, in its two meanings, kept apart by name:

- **normalisation**: per-position statistics of distances on held-out normal frames (maps then
  read "times the normal distance here"), plus the frame scores those frames get;
- **threshold**: the decision threshold on frame scores (a quantile of normal scores,
  F1-optimal on labelled frames, or fixed), stored with the frame-score settings it holds for.

The held-out rule (which frames a fit keeps out to normalise on) is :mod:`streamad.holdout`'s.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from streamad.errors import ConfigError
from streamad.frames import FrameRef
from streamad.scorers.running import batch_moments, chan_merge

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Normalisation:
    """Per-position mean distances on normal frames, and the frame scores those frames get.

    Attributes:
        position_mean: per (cue and) position, the mean normal distance, (P,) or (C, P).
        normal_scores: the normal frames' scores, with the frame-score settings ``frame_score``.
        frames: normal frames measured.
        frame_score: the settings (:meth:`~streamad.config.FrameScoreConfig.attrs`) the normal
            scores were measured with; a quantile of them is a threshold for those settings only.
    """

    position_mean: np.ndarray
    normal_scores: np.ndarray
    frames: int
    frame_score: dict[str, Any] = field(default_factory=dict)

    def with_scores(self, scores: Iterable[float], frame_score: dict[str, Any]) -> Normalisation:
        return Normalisation(self.position_mean, np.asarray(list(scores), np.float32), self.frames, frame_score)


def normalise(distances: Tensor, normalisation: Normalisation) -> Tensor:
    """Distances (B, P), or (B, C, P) for C cues, relative to each (cue and) position's mean
    distance on normal frames.

    A position whose normal distances were (nearly) all zero, as a scorer without a ridge gives
    where the scene never changes, is divided by a floor of 1e-3 times the average position's
    mean instead, so its map stays finite.
    """
    mean = torch.as_tensor(normalisation.position_mean, device=distances.device)
    mean = mean.view(-1, distances.shape[-1]) if distances.ndim == 3 else mean.view(distances.shape[-1])
    floor = (1e-3 * mean.mean(-1, keepdim=True)).clamp_min(1e-6)  # per cue
    return distances / torch.maximum(mean, floor)


PEAK_QUANTILE = 0.99


def cue_scales(normalisation: Normalisation, distances: Tensor, *, peak: bool = False) -> Tensor:
    """Each cue's normal level, shaped to divide distances (B, C, P): its mean normal distance
    over all positions, or with ``peak`` the 99th percentile of its per-position normal means
    (its normal level where it is highest: a motion cue's where things normally move, not the
    average over a mostly still frame, which would make every normal moving thing look
    anomalous beside the appearance cue)."""
    mean = torch.as_tensor(normalisation.position_mean, device=distances.device).view(-1, distances.shape[-1])
    level = mean.quantile(PEAK_QUANTILE, dim=-1, keepdim=True) if peak else mean.mean(-1, keepdim=True)
    return level.clamp_min(1e-6)


def position_statistics(distances: Iterable[Tensor]) -> Normalisation:
    """Mean per (cue and) position of distance batches (B, P) or (B, C, P), without scores; a
    frame's NaN cue (nothing measured) is left out of that cue.

    Uses the same float64 pairwise (Chan) update as the embeddings' statistics.
    """
    moments: list[tuple[int, Tensor, Tensor] | None] = []
    for batch in distances:
        cues = batch.unsqueeze(1) if batch.ndim == 2 else batch
        moments += [None] * (cues.shape[1] - len(moments))
        for c in range(cues.shape[1]):
            rows = cues[:, c][~cues[:, c].isnan().any(-1)]
            if not len(rows):
                continue
            n_b, mean_b, m2_b = batch_moments(rows.unsqueeze(-1))
            before = moments[c]
            moments[c] = (n_b, mean_b, m2_b) if before is None else chan_merge(*before, n_b, mean_b, m2_b)
    if not moments or any(m is None or m[0] < 2 for m in moments):
        counts = [0 if m is None else m[0] for m in moments]
        raise ConfigError(f"expected at least 2 normal frames to normalise every cue on, got {counts or 0}")
    means = [m[1][:, 0] for m in moments if m is not None]
    count = moments[0][0] if moments[0] is not None else 0  # frames, as the appearance cue saw them
    mean = means[0] if len(means) == 1 else torch.stack(means)  # one cue: (P,) as stores of one cue have always held
    return Normalisation(mean.cpu().numpy(), np.zeros(0, np.float32), count)


def measure_normalisation(
    batches: Sequence[tuple[Sequence[FrameRef], Tensor]],
    frame_scores: Callable[[Sequence[FrameRef], Tensor, Normalisation], Sequence[float]],
    frame_score: dict[str, Any],
) -> Normalisation:
    """The normalisation of distances (B, P) measured on normal frames, with the frame scores
    those frames get once normalised by it (``frame_scores(refs, distances, normalisation)``,
    computed with the frame-score settings ``frame_score``, recorded beside them)."""
    partial = position_statistics(d for _, d in batches)
    return partial.with_scores((s for refs, d in batches for s in frame_scores(refs, d, partial)), frame_score)


@dataclass(frozen=True, slots=True)
class Threshold:
    """A decision threshold on frame scores (and on map pixels, which share their units).

    Attributes:
        value: frames scoring above it are anomalous.
        method: ``quantile`` (of scores on normal frames), ``f1`` (F1-optimal on labelled
            frames) or ``fixed``.
        detail: how it was found (quantile, frames, F1, ...).
        frame_score: the frame-score settings it applies to.
    """

    value: float
    method: str
    detail: dict[str, Any]
    frame_score: dict[str, Any]

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):  # NaN would turn every decision off without a word
            raise ConfigError(f"expected a finite threshold, got {self.value}")


DEFAULT_QUANTILE = 0.99


def quantile_threshold(scores: np.ndarray, frame_score: dict[str, Any], *, quantile: float = DEFAULT_QUANTILE, on: str | list[str]) -> Threshold:
    """The ``quantile`` of normal frames' ``scores`` (measured with the settings
    ``frame_score``) as a threshold for those settings.

    Example:
        >>> quantile_threshold(np.arange(101.0), {}, quantile=0.9, on="test").value
        90.0
    """
    if not 0 < quantile <= 1:
        raise ConfigError(f"expected a quantile in (0, 1], got {quantile}")
    if not len(scores):
        raise ConfigError("expected normal frames' scores to set a threshold on, got none")
    return Threshold(float(np.quantile(scores, quantile)), "quantile", {"quantile": quantile, "frames": int(len(scores)), "on": on}, frame_score)


def normal_threshold(normalisation: Normalisation | None, frame_score: dict[str, Any], *, on: str) -> Threshold | None:
    """The default quantile of the normal scores a normalisation holds, when they were measured
    with the frame-score settings ``frame_score`` (else, or without scores, None)."""
    if normalisation is None or not len(normalisation.normal_scores) or normalisation.frame_score != frame_score:
        return None
    return quantile_threshold(normalisation.normal_scores, frame_score, on=on)


def decision_threshold(stored: Threshold | None, given: float | None, frame_score: dict[str, Any]) -> float | None:
    """``given`` (``--threshold``), else the stored threshold when it was set for these
    frame-score settings; None means no decisions."""
    if given is not None:
        if not math.isfinite(given):
            raise ConfigError(f"expected a finite --threshold, got {given}")
        return given
    if stored is None:
        return None
    if stored.frame_score != frame_score:
        logger.warning(
            "the stored threshold was set for frame scores %s, not %s: no decisions written; hint: run `streamad calibrate` with these settings",
            stored.frame_score,
            frame_score,
        )
        return None
    return stored.value
