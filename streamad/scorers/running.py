"""Running per-position Gaussian statistics in float64, mergeable exactly (Chan et al.).

Each batch's centred outer products are summed by a float32 batched GEMM into a float32
accumulator, which is added into the float64 co-moment every :data:`FOLD_FRAMES` frames (and
before anything reads it); the means, the counts and the batches' Chan terms stay float64. On a
CPU the co-moment's pass over memory, not the arithmetic, is the update's cost: the float32
accumulator halves the bytes each batch moves and the float64 pass comes once a fold.

Error bound (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 3.1 and 3.5):
with ``u = 2**-24`` and ``F`` frames folded at a time, each entry of the co-moment differs from
the exact one by at most ``gamma(F + 3) * sqrt(m2_ii * m2_jj)`` (``gamma(n) = n u / (1 - n u)``,
the Cauchy-Schwarz bound on ``sum |c_i c_j|``): about 7.8e-6 for F = 128, relative to the
entry's scale. Rounding errors of opposite signs cancel, so what is measured is far smaller
(tests/test_gaussian.py; docs/design.md). ``exact=True`` keeps the float64 update, whose
statistics are reproducible bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from streamad.errors import ShapeError, StoreError, check_shape


def batch_moments(x: Tensor) -> tuple[int, Tensor, Tensor]:
    """Count, mean and co-moment of a batch of embeddings, in float64.

    Args:
        x: shape (B, P, k).

    Returns:
        ``(n, mean (P, k), m2 (P, k, k))`` with ``m2 = sum_b (x_b - mean)(x_b - mean)^T``.
    """
    check_shape("x", x.shape, "(B, P, k)", x.ndim == 3)
    x64 = x.to(torch.float64)
    mean = x64.mean(0)
    centered = (x64 - mean).permute(1, 2, 0)  # (P, k, B)
    m2 = torch.bmm(centered, centered.transpose(1, 2))
    return x.shape[0], mean, m2


def _sum64(batch: Tensor) -> Tensor:
    """``batch.sum(0)`` accumulated in float64: on a CPU numpy's mixed-type add, row after row
    (a third of torch's time for float32 input; equal to torch's sum to the last bit wherever
    we compared them: 1 to 300 rows, tests/test_gaussian.py)."""
    if batch.device.type == "cpu" and batch.dtype == torch.float32:
        return torch.from_numpy(np.add.reduce(batch.numpy(), axis=0, dtype=np.float64))
    return batch.sum(0, dtype=torch.float64)


FOLD_FRAMES = 128
"""Frames the float32 accumulator sums before it is added into the float64 co-moment."""

BLOCK_BYTES = 8 << 20
"""The float64 working set of one block of positions (updates, merges, factorisations)."""


def position_blocks(positions: int, per_position: int) -> list[slice]:
    """Slices of positions holding about :data:`BLOCK_BYTES` of float64 ``per_position`` values each.

    Example:
        >>> position_blocks(5, 1 << 20)
        [slice(0, 1, None), slice(1, 2, None), slice(2, 3, None), slice(3, 4, None), slice(4, 5, None)]
        >>> position_blocks(5, 10)
        [slice(0, 5, None)]
    """
    size = max(1, BLOCK_BYTES // (8 * max(1, per_position)))
    return [slice(start, min(positions, start + size)) for start in range(0, positions, size)]


def chan_merge(n_a: int, mean_a: Tensor, m2_a: Tensor, n_b: int, mean_b: Tensor, m2_b: Tensor) -> tuple[int, Tensor, Tensor]:
    """Merge two sets of moments (Chan, Golub and LeVeque's pairwise update).

    ``n = n_a + n_b``, ``delta = mean_b - mean_a``, ``mean = mean_a + delta n_b / n``,
    ``m2 = m2_a + m2_b + delta delta^T n_a n_b / n``.
    """
    n = n_a + n_b
    if n_a == 0:
        return n_b, mean_b.clone(), m2_b.clone()
    if n_b == 0:
        return n_a, mean_a.clone(), m2_a.clone()
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + (delta.unsqueeze(-1) * delta.unsqueeze(-2)) * (n_a * n_b / n)
    return n, mean, m2


class RunningGaussian(nn.Module):
    """Per-position mean and co-moment of k-dim embeddings, updated batch by batch.

    Memory is O(P k^2) whatever the number of samples; everything is float64.

    Example:
        >>> g = RunningGaussian(positions=2, k=3)
        >>> g.update(torch.randn(10, 2, 3))
        >>> g.covariance().shape
        torch.Size([2, 3, 3])
    """

    count: Tensor
    mean: Tensor
    m2: Tensor

    def __init__(self, positions: int, k: int, *, device: torch.device | str = "cpu", exact: bool = False) -> None:
        super().__init__()
        self._positions, self._k = positions, k
        self.exact = exact  # the float64 update (bit-reproducible) instead of the float32 one
        self._folded: Tensor | None = None  # float32 outer products not yet in m2 (allocated by the first float32 update)
        self._pending = 0  # frames in it
        self.dropped = False  # the statistics were left out on purpose (a model that only scores)
        self.released = False  # ... after they were committed to a store, which keeps them
        self.register_buffer("count", torch.zeros((), dtype=torch.int64, device=device))
        # Allocated on first use: a model loaded only to score never holds them.
        self.register_buffer("mean", torch.zeros(0, dtype=torch.float64, device=device))
        self.register_buffer("m2", torch.zeros(0, dtype=torch.float64, device=device))

    @property
    def positions(self) -> int:
        return self._positions

    @property
    def k(self) -> int:
        return self._k

    @property
    def n(self) -> int:
        return int(self.count.item())

    def ready(self) -> RunningGaussian:
        """Self, with its statistics allocated (zeros until data arrives).

        Raises:
            StoreError: they were left out when the model was loaded to score only.
        """
        if self.dropped:
            raise StoreError("expected the running statistics, got a model loaded only to score; hint: load it to fit (resume, merge, adapt)")
        if self.m2.numel() == 0 and self._positions * self._k:
            device = self.m2.device
            self.mean = torch.zeros(self._positions, self._k, dtype=torch.float64, device=device)
            self.m2 = torch.zeros(self._positions, self._k, self._k, dtype=torch.float64, device=device)
        self._fold(release=True)
        return self

    @torch.no_grad()
    def _fold(self, *, release: bool = False) -> None:
        """Add the float32 accumulator into the float64 co-moment (numpy's mixed-type add on a
        CPU: several times torch's there), a block of positions at a time; ``release``: let the
        accumulator go (the statistics are read: a fit is ending or checkpointing)."""
        if self._pending:
            assert self._folded is not None
            for block in position_blocks(self.positions, self.k * self.k):
                if self.m2.device.type == "cpu":
                    target = self.m2[block].numpy()
                    np.add(target, self._folded[block].numpy(), out=target)
                else:
                    self.m2[block] += self._folded[block]
            self._pending = 0  # the next update overwrites the accumulator (no pass to zero it)
        if release:
            self._folded = None

    def drop(self, count: int, *, released: bool = False) -> None:
        """Keep only the count: a model that will only score needs no statistics (``released``:
        they were committed to a store first)."""
        self.count.fill_(count)
        self.mean = self.mean.new_zeros(0)
        self.m2 = self.m2.new_zeros(0)
        self._folded, self._pending = None, 0
        self.dropped, self.released = True, released

    def restore(self, count: int, mean: Tensor, m2: Tensor) -> None:
        """Statistics as a store kept them (a loaded model that may fit on)."""
        self.dropped = self.released = False
        self.ready()
        if tuple(mean.shape) != tuple(self.mean.shape):
            raise StoreError(f"expected statistics of shape {tuple(self.mean.shape)}, got {tuple(mean.shape)}")
        self.count.fill_(count)
        self.mean.copy_(mean)
        self.m2.copy_(m2)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Add a batch of embeddings of shape (B, P, k): Chan's update with the batch's moments,
        ``m2 += C C^T + w d d^T`` (``C`` the centred batch, ``d`` its mean's offset), as one
        batched GEMM on ``[C, sqrt(w) d]``, in float32 (or float64 when :attr:`exact`).
        Positions are taken a block at a time, so the temporaries stay a few MB and each block
        is updated while it is in cache."""
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.positions, self.k):
            raise ShapeError(f"expected embeddings of shape (B, {self.positions}, {self.k}), got {tuple(x.shape)}")
        if self.exact:
            self.ready()
        elif self._folded is None:
            self.ready()
            self._folded = torch.empty(self.m2.shape, dtype=torch.float32, device=self.m2.device)
        n_a, n_b = self.n, x.shape[0]
        n = n_a + n_b
        weight = (n_a * n_b / n) ** 0.5
        dtype = torch.float64 if self.exact else torch.float32
        target = self.m2 if self.exact else self._folded
        assert target is not None
        keep = 1.0 if self.exact or self._pending else 0.0  # an empty accumulator is written, not added to
        x = x.to(self.mean.device)
        for block in position_blocks(self.positions, self.k * (n_b + 2)):
            batch = x[:, block]
            mean_b = _sum64(batch) / n_b
            delta = mean_b - self.mean[block]  # (p, k)
            rows = torch.empty((n_b + (n_a > 0), *batch.shape[1:]), dtype=dtype, device=batch.device)
            # Centred in the input's precision when that is the GEMM's (float32 embeddings: the
            # difference of two floats is exact to u), else in float64, then rounded.
            source = batch if batch.dtype == dtype else batch.to(torch.float64)
            torch.sub(source, mean_b.to(source.dtype), out=rows[:n_b])
            if n_a > 0:
                rows[n_b] = delta * weight
            columns = rows.permute(1, 2, 0)  # (p, k, B [+ 1])
            target[block].baddbmm_(columns, columns.transpose(1, 2), beta=keep)
            self.mean[block].add_(delta, alpha=n_b / n)
        self.count.fill_(n)
        if not self.exact:
            self._pending += n_b
            if self._pending >= FOLD_FRAMES:
                self._fold()

    @torch.no_grad()
    def merge(self, other: RunningGaussian) -> None:
        """Add another partial fit's statistics (exact; any order gives the same result), in
        place a block of positions at a time."""
        if (other.positions, other.k) != (self.positions, self.k):
            raise ShapeError(f"expected statistics of shape ({self.positions}, {self.k}), got ({other.positions}, {other.k})")
        self.ready()
        other.ready()
        n_a, n_b = self.n, other.n
        for block in position_blocks(self.positions, self.k * self.k):
            _, mean, m2 = chan_merge(n_a, self.mean[block], self.m2[block], n_b, other.mean[block].to(self.mean.device), other.m2[block].to(self.m2.device))
            self.mean[block] = mean
            self.m2[block] = m2
        self.count.fill_(n_a + n_b)

    def covariance(self) -> Tensor:
        """Unbiased covariance ``m2 / (n - 1)``, shape (P, k, k), float64."""
        if self.n < 2:
            raise ValueError(f"expected at least 2 samples for a covariance, got {self.n}")
        return self.ready().m2 / (self.n - 1)
