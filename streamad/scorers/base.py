"""The scorer protocol: what every anomaly-scoring method implements.

Jobs talk to a method only through this protocol (plus the registry in
:mod:`streamad.scorers.registry`); stores persist :meth:`Scorer.state`, never fields they know by name.

A step of the engine::

    prepared = scorer.prepare(features)   # parameter-free, runs in the backbone workers
    scorer.update(prepared)               # fit: one streaming step
    scorer.finalise()                     # after the last update (factorise, freeze, ...)
    scorer.distances(prepared)            # score: (B, P) distances on the patch grid

What a method can do beyond that is declared, never probed: small capability protocols checked
with ``isinstance`` (:class:`Mergeable`, :class:`Trainable`, :class:`MultiCue`,
:class:`Temporal`, :class:`Releasable`), and what it needs (extractors, default backbones,
input size, training steps) in its :class:`~streamad.scorers.registry.ScorerSpec`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from streamad.features.extractor import Features

if TYPE_CHECKING:
    from streamad.features.temporal import MotionTracker


@dataclass(frozen=True, slots=True)
class ScorerState:
    """A scorer's state as named arrays plus JSON-able attributes (never a pickle).

    Attributes:
        arrays: name -> array; names are flat (``[a-z0-9_]``).
        attrs: JSON-able settings and progress (``finalised``, hyper-parameters, ...).
        revision: changes whenever :meth:`Scorer.distances` would change (normalisations and
            thresholds measured on one revision are stale on another).
        revisions: per array, a tag that stays equal while the array is unchanged; a store
            skips rewriting an array whose tag it already holds. Arrays without a tag are always
            written. A tag without an array: the scorer let go of an array the store holds
            (with that tag), which stays as stored.
        scoring: the model being loaded will only score: :meth:`Scorer.load_state` may leave
            out what only fitting needs (arrays are then read from the store only when used).
    """

    arrays: Mapping[str, np.ndarray]
    attrs: dict[str, Any]
    revision: str
    revisions: dict[str, str] = field(default_factory=dict)
    scoring: bool = False


@runtime_checkable
class Scorer(Protocol):
    """An anomaly-scoring method on one feature extractor's maps (or two: its spec says)."""

    @property
    def frames_seen(self) -> int:
        """How many frames :meth:`update` has taken."""
        ...

    @property
    def finalised(self) -> bool:
        """Whether :meth:`distances` can be called."""
        ...

    def attrs(self) -> dict[str, Any]:
        """The settings that define the scorer (compared on resume and merge)."""
        ...

    def prepare(self, features: Features) -> Features:
        """The parameter-free per-batch part (a projection, a crop): safe in worker threads."""
        ...

    def update(self, prepared: Features) -> None:
        """One streaming step on a batch."""
        ...

    def finalise(self) -> None:
        """Make the fitted state ready to score."""
        ...

    def distances(self, prepared: Features) -> Tensor:
        """Per-position distances, a tensor of shape (B, P), or (B, C, P) for C cues
        (:class:`MultiCue`), on the scorer's device."""
        ...

    def state(self) -> ScorerState: ...

    def load_state(self, state: ScorerState) -> None: ...


class FitCounts:
    """The protocol's two counters, for scorers that keep them as ``_frames`` and ``_finalised``."""

    _frames: int
    _finalised: bool

    @property
    def frames_seen(self) -> int:
        return self._frames

    @property
    def finalised(self) -> bool:
        return self._finalised


@runtime_checkable
class Mergeable(Protocol):
    """Partial fits combine exactly (``streamad merge``, Ray): fitting A then B equals fitting
    A and B apart and merging."""

    def merge(self, other: Scorer) -> None:
        """Add another partial fit of the same settings."""
        ...


@runtime_checkable
class MultiCue(Protocol):
    """Distances of several cues, (B, C, P), named in order (``appearance``, ``motion``, ...)."""

    @property
    def cues(self) -> tuple[str, ...]: ...


@runtime_checkable
class Temporal(Protocol):
    """A scorer that may measure change over time: jobs run its :meth:`tracker` per source, in
    frame order, between ``prepare`` and the scorer."""

    @property
    def needs_images(self) -> bool:
        """Whether the tracker reads each frame's original image (dense flow)."""
        ...

    def tracker(self) -> MotionTracker | None:
        """A new per-source memory adding the temporal features (None: this fit has none)."""
        ...


@runtime_checkable
class Releasable(Protocol):
    """Keeps statistics that only fitting needs and can let them go once the factors are stored."""

    def release_statistics(self) -> None: ...


@dataclass(frozen=True, slots=True)
class TrainStep:
    """Where a trainable scorer's training stands (emitted after each optimiser step).

    Attributes:
        epoch: epochs over the feature cache completed.
        position: frames of the current epoch's order trained on.
        frames: frames in the step just taken (0: no step yet).
        loss: the last step's loss (NaN before the first).
    """

    epoch: int
    position: int
    frames: int
    loss: float


@dataclass(frozen=True, slots=True)
class TrainRun:
    """What a training run is told: how long, in what batches, and whom to tell.

    Attributes:
        epochs: train until this many epochs are complete.
        batch_size: frames per optimiser step.
        on_step: told each step's :class:`TrainStep`.
        stopped: polled before each step; true ends the run (after a checkpoint).
        checkpoint: persists the scorer's state.
        checkpoint_every: frames trained on between checkpoints (also one when stopped and at the end).
    """

    epochs: int
    batch_size: int
    on_step: Callable[[TrainStep], None]
    stopped: Callable[[], bool]
    checkpoint: Callable[[], None]
    checkpoint_every: int = 500


class TrainingRows(Protocol):
    """The rows a trainable scorer's epochs read (:class:`~streamad.engine.feature_cache.FeatureCache`)."""

    seed: int

    def preload(self, size: int) -> None: ...

    def read(self, slots: np.ndarray, device: torch.device) -> Features: ...


@runtime_checkable
class Trainable(Protocol):
    """Needs an optimiser and epochs over a cache of prepared features (the fitting pass fills
    the cache, :meth:`train` runs the epochs); resumable from its own state."""

    feature_names: tuple[str, ...]

    @property
    def steps(self) -> int:
        """Optimiser steps taken."""
        ...

    @property
    def trained(self) -> TrainStep:
        """Where training stands."""
        ...

    def add_frames(self, count: int) -> None:
        """Count frames that went into the feature cache instead of ``update``."""
        ...

    def train(self, rows: TrainingRows, size: int, run: TrainRun) -> bool:
        """The remaining epochs over the first ``size`` rows; returns whether they all ran."""
        ...
