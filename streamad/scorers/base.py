"""The scorer protocol: what every anomaly-scoring method implements.

Jobs talk to a method only through this protocol (plus the registry in
:mod:`streamad.scorers`); stores persist :meth:`Scorer.state`, never fields they know by name.

A step of the engine::

    prepared = scorer.prepare(features)   # parameter-free, runs in the backbone workers
    scorer.update(prepared)               # fit: one streaming step
    scorer.finalise()                     # after the last update (factorise, freeze, ...)
    scorer.distances(prepared)            # score: (B, P) distances on the patch grid
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from torch import Tensor

from streamad.features import Features


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
    """An anomaly-scoring method on one feature extractor's maps.

    Capabilities (class attributes):
        mergeable: :meth:`merge` combines two partial fits exactly (``streamad merge``, Ray).
        trainable: needs an optimiser and several passes (epochs) over its data.
        extractors: how many feature extractors it reads (1: any one backbone).
    """

    mergeable: ClassVar[bool]
    trainable: ClassVar[bool]
    extractors: ClassVar[int]

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
        """Per-position distances, a tensor of shape (B, P) on the scorer's device."""
        ...

    def merge(self, other: Scorer) -> None:
        """Add another partial fit (mergeable scorers only)."""
        ...

    def state(self) -> ScorerState: ...

    def load_state(self, state: ScorerState) -> None: ...
