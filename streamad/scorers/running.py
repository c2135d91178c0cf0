"""Running per-position Gaussian statistics in float64, mergeable exactly (Chan et al.)."""

from __future__ import annotations

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

    def __init__(self, positions: int, k: int, *, device: torch.device | str = "cpu") -> None:
        super().__init__()
        self._positions, self._k = positions, k
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
        return self

    def drop(self, count: int, *, released: bool = False) -> None:
        """Keep only the count: a model that will only score needs no statistics (``released``:
        they were committed to a store first)."""
        self.count.fill_(count)
        self.mean = self.mean.new_zeros(0)
        self.m2 = self.m2.new_zeros(0)
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
        """Add a batch of embeddings of shape (B, P, k).

        Same result as ``chan_merge`` with the batch's moments, done in place with one pass over
        ``m2``: ``m2 += C C^T + w d d^T`` is a single ``baddbmm`` on ``[C, sqrt(w) d]``. Positions
        are taken a block at a time, so the float64 temporaries stay a few MB (not several times
        the batch) and each block of ``m2`` is updated while it is in cache.
        """
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.positions, self.k):
            raise ShapeError(f"expected embeddings of shape (B, {self.positions}, {self.k}), got {tuple(x.shape)}")
        self.ready()
        n_a, n_b = self.n, x.shape[0]
        n = n_a + n_b
        weight = (n_a * n_b / n) ** 0.5
        x = x.to(self.mean.device)
        for block in position_blocks(self.positions, self.k * (n_b + 1)):
            x64 = x[:, block].to(torch.float64, copy=True)
            mean_b = x64.mean(0)
            delta = mean_b - self.mean[block]  # (p, k)
            columns = x64.sub_(mean_b).permute(1, 2, 0)  # (p, k, B)
            if n_a > 0:
                columns = torch.cat([columns, (delta * weight).unsqueeze(-1)], dim=2)
            self.m2[block].baddbmm_(columns, columns.transpose(1, 2))
            self.mean[block].add_(delta, alpha=n_b / n)
        self.count.fill_(n)

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
