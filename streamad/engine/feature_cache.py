"""The feature cache a trainable scorer's epochs read: bounded, in the model store.

The fitting pass runs the backbones once per frame and offers each frame's prepared features to
a :class:`FeatureCache` (float16 rows in the model store, a uniform reservoir sample when the
sources hold more frames than it keeps). The scorer's ``train``
(:class:`~streamad.scorers.base.Trainable`) then runs the epochs on the cache alone, so no
backbone runs twice for a frame. Every random choice (the reservoir, each epoch's order) is a
function of the seed and a counter, and the scorer carries its epoch and position in the
epoch's order, so a fit stopped anywhere resumes exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from streamad.errors import ConfigError
from streamad.features.extractor import Features
from streamad.stores.array_store import ArrayStore

PREFIX = "cache"
PRELOAD_BYTES = 1 << 30  # a cache up to this size is read into memory once for the epochs
CACHE_FRAMES = 1000  # the default --cache-frames


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
