"""Training a trainable scorer on a stream: a bounded feature cache, then epochs over it.

The fitting pass runs the backbones once per frame and offers each frame's prepared features to
a :class:`FeatureCache` (float16 rows in the model store, a uniform reservoir sample when the
sources hold more frames than it keeps). :func:`train` then runs the epochs on the cache alone,
so no backbone runs twice for a frame. Every random choice (the reservoir, each epoch's order)
is a function of the seed and a counter, and the scorer carries its epoch and position in the
epoch's order, so a fit stopped anywhere resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from streamad.errors import ConfigError
from streamad.features import Features
from streamad.store import ArrayStore

PREFIX = "cache"
PRELOAD_BYTES = 1 << 30  # a cache up to this size is read into memory once for the epochs
PAPER_STEPS = 3000  # PFM/PEFM: 200 epochs of batch 16 over an MVTec AD category (~240 images)
MIN_EPOCHS, MAX_EPOCHS = 5, 200
CACHE_FRAMES = 1000  # the default --cache-frames


class TrainableScorer(Protocol):
    """What :func:`train` needs of a scorer (beyond :class:`~streamad.scorers.base.Scorer`)."""

    epoch: int
    position: int
    loss: float
    feature_names: tuple[str, ...]

    @property
    def steps(self) -> int: ...

    def train_step(self, prepared: Features) -> float: ...

    def add_frames(self, count: int) -> None: ...


def default_epochs(frames: int, batch_size: int, steps: int = PAPER_STEPS) -> int:
    """The papers' schedule scaled to the data: about as many optimiser steps as 200 epochs on
    an MVTec AD category (or a method's own ``steps``), within [5, 200] epochs (few frames:
    more epochs; many: fewer).

    Example:
        >>> default_epochs(200, 16), default_epochs(5000, 16), default_epochs(20, 16)
        (200, 10, 200)
    """
    steps_per_epoch = max(1, math.ceil(frames / batch_size))
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, round(steps / steps_per_epoch))))


def reservoir_slot(seed: int, offered: int, capacity: int) -> int | None:
    """Where the frame numbered ``offered`` (0-based, over the whole fit) goes in a cache of
    ``capacity`` rows: the next free row while there is one, then a uniformly random row with
    probability capacity / (offered + 1) (Vitter's algorithm R), else None (not kept)."""
    if offered < capacity:
        return offered
    slot = int(np.random.default_rng([seed, offered]).integers(0, offered + 1))
    return slot if slot < capacity else None


class FeatureCache:
    """Up to ``capacity`` frames' prepared features as float16 rows of a store's arrays.

    Args:
        store: the model store being fitted (arrays ``cache/f0``, ``cache/f1``, ... in the
            order of ``names``).
        capacity: rows kept (``--cache-frames``).
        seed: seeds the reservoir and the epochs' orders.
        names: the prepared features' names.
    """

    def __init__(self, store: ArrayStore, capacity: int, seed: int, names: list[str]) -> None:
        if capacity < 1:
            raise ConfigError(f"expected --cache-frames >= 1, got {capacity}")
        self.store, self.capacity, self.seed, self.names = store, capacity, seed, sorted(names)
        self._reserved = False
        self._memory: dict[str, np.ndarray] | None = None

    def _reserve(self, prepared: Features) -> None:
        if not self._reserved:
            for i, name in enumerate(self.names):
                self.store.reserve(f"{PREFIX}/f{i}", (self.capacity, *prepared[name].shape[1:]), "float16")
            self._reserved = True

    def add(self, prepared: Features, offered: int) -> None:
        """Offer a batch whose first frame is the fit's frame number ``offered``."""
        self._reserve(prepared)
        rows = {name: prepared[name].detach().to("cpu", torch.float16).numpy() for name in self.names}
        for b in range(len(next(iter(rows.values())))):
            slot = reservoir_slot(self.seed, offered + b, self.capacity)
            if slot is not None:
                for i, name in enumerate(self.names):
                    self.store.write_row(f"{PREFIX}/f{i}", slot, rows[name][b])

    def size(self, offered: int) -> int:
        """Rows filled after ``offered`` frames."""
        return min(offered, self.capacity)

    def preload(self, size: int) -> None:
        """Read the first ``size`` rows into memory when they fit in :data:`PRELOAD_BYTES` (the
        epochs then read no file); else rows are read from the store as needed."""
        arrays = [self.store.read_rows(f"{PREFIX}/f{i}", 0, 1) for i in range(len(self.names))]
        if sum(a.nbytes for a in arrays) * size <= PRELOAD_BYTES:
            self._memory = {name: self.store.read_rows(f"{PREFIX}/f{i}", 0, size) for i, name in enumerate(self.names)}

    def read(self, slots: np.ndarray, device: torch.device) -> Features:
        """The features of the given rows (float32 on ``device``), under their feature names."""
        if self._memory is not None:
            return {name: torch.from_numpy(rows[slots]).to(device, torch.float32) for name, rows in self._memory.items()}
        out: Features = {}
        for i, name in enumerate(self.names):
            rows = [self.store.read_rows(f"{PREFIX}/f{i}", int(s), int(s) + 1) for s in slots]
            out[name] = torch.from_numpy(np.concatenate(rows)).to(device, torch.float32)
        return out

    def clear(self) -> None:
        """Delete the cached rows (training is over)."""
        self.store.delete(PREFIX)


def epoch_order(seed: int, epoch: int, size: int) -> np.ndarray:
    """The order of the cache's rows in one epoch (a permutation fixed by seed and epoch)."""
    return np.random.default_rng([seed, 1_000_003, epoch]).permutation(size)


def train(
    scorer: TrainableScorer,
    cache: FeatureCache,
    *,
    size: int,
    epochs: int,
    batch_size: int,
    device: torch.device,
    on_step: Callable[[int], None],
    stopped: Callable[[], bool],
    checkpoint: Callable[[], None],
    checkpoint_every: int = 500,
) -> bool:
    """Run the scorer's remaining epochs over the cache's ``size`` rows, from its epoch and
    position; ``on_step(frames)`` after each step, ``checkpoint()`` after every
    ``checkpoint_every`` frames trained on, when stopped and at the end. Returns whether every
    epoch ran."""
    if size < 1:
        raise ConfigError("expected at least one frame in the feature cache to train on, got none; hint: fit on more frames")
    if scorer.epoch < epochs:
        cache.preload(size)
    since = 0
    while scorer.epoch < epochs:
        order = epoch_order(cache.seed, scorer.epoch, size)
        while scorer.position < size:
            if stopped():
                checkpoint()
                return False
            slots = order[scorer.position : scorer.position + batch_size]
            scorer.train_step(cache.read(slots, device))
            scorer.position += len(slots)
            on_step(len(slots))
            since += len(slots)
            if since >= checkpoint_every:
                checkpoint()
                since = 0
        scorer.epoch, scorer.position = scorer.epoch + 1, 0
    checkpoint()
    return True
