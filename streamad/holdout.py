"""Which frames a fit keeps out of the fit to normalise on: one rule, one default, for every job
that fits (fit, Ray shards, watch's learning). Plain Python, no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from streamad.errors import ConfigError

HOLDOUT_EVERY = 10  # the default: every 10th frame used is held out to normalise on


@dataclass(frozen=True, slots=True)
class HoldOut:
    """Which frames a fit keeps out: every ``every_nth`` used frame (frames used are those with
    ``index % stride == 0``), at most ``limit`` of them spread evenly over ``total`` candidates.

    Example:
        >>> rule = HoldOut(every_nth=10, stride=1)
        >>> [i for i in range(30) if rule.held_out(i)]
        [9, 19, 29]
    """

    every_nth: int = HOLDOUT_EVERY
    stride: int = 1

    def __post_init__(self) -> None:
        if self.every_nth < 2:
            raise ConfigError(f"expected --holdout-every >= 2, got {self.every_nth}")

    @property
    def period(self) -> int:
        return self.every_nth * self.stride

    def held_out(self, index: int) -> bool:
        return index % self.period == self.period - self.stride

    def fitted(self, index: int) -> bool:
        return not self.held_out(index)

    def sampler(self, total: int, limit: int) -> NormalisationSample:
        """Which held-out frames to normalise on: at most ``limit`` of ``total``, evenly spread."""
        return NormalisationSample(self, max(1, math.ceil(total / max(1, limit))))


@dataclass(frozen=True, slots=True)
class NormalisationSample:
    rule: HoldOut
    step: int

    def __call__(self, index: int) -> bool:
        return self.rule.held_out(index) and (index // self.rule.period) % self.step == 0
