"""Projections of C-channel patch embeddings to k dims: PaDiM's random channel subset and SOE's
random semi-orthogonal matrix."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from streamad.errors import ConfigError, check_shape

METHODS = ("padim", "soe")


def random_channel_subset(channels: int, k: int, *, seed: int) -> Tensor:
    """PaDiM's projection: ``k`` distinct channel indices drawn with a seeded generator.

    Example:
        >>> idx = random_channel_subset(176, 100, seed=0)
        >>> idx.shape, len(set(idx.tolist()))
        (torch.Size([100]), 100)
    """
    if not 0 < k <= channels:
        raise ConfigError(f"expected 0 < k <= {channels} channels for padim, got k={k}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(channels, generator=gen)[:k].sort().values


def semi_orthogonal(channels: int, k: int, *, seed: int) -> Tensor:
    """SOE's projection: W of shape (C, k) with orthonormal columns (W^T W = I), seeded.

    Computed as the Q factor of a Gaussian random matrix in float64, signs fixed by R's diagonal so
    the draw is uniform (Haar) and reproducible.

    Example:
        >>> w = semi_orthogonal(176, 100, seed=0)
        >>> bool(torch.allclose(w.T @ w, torch.eye(100), atol=1e-5))
        True
    """
    if not 0 < k <= channels:
        raise ConfigError(f"expected 0 < k <= {channels} channels for soe, got k={k}")
    gen = torch.Generator().manual_seed(seed)
    gauss = torch.randn(channels, k, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.float()


def make_projection(method: str, channels: int, k: int, *, seed: int) -> Tensor:
    """The projection tensor of a method: indices (k,) int64 for padim, W (C, k) for soe."""
    if method == "padim":
        return random_channel_subset(channels, k, seed=seed)
    if method == "soe":
        return semi_orthogonal(channels, k, seed=seed)
    raise ConfigError(f"expected a method in {METHODS}, got {method!r}")


def project(x: Tensor, projection: Tensor) -> Tensor:
    """Project embeddings on their channel axis.

    Args:
        x: embeddings, shape (B, C, H, W).
        projection: indices (k,) int64 or a matrix (C, k).

    Returns:
        Projected embeddings, shape (B, H*W, k).
    """
    check_shape("x", x.shape, "(B, C, H, W)", x.ndim == 4)
    flat = x.flatten(2)  # (B, C, P)
    if projection.dtype == torch.int64:
        return flat.index_select(1, projection).transpose(1, 2)
    check_shape("projection", projection.shape, f"({x.shape[1]}, k)", projection.ndim == 2 and projection.shape[0] == x.shape[1])
    return torch.matmul(flat.transpose(1, 2), projection.to(flat.dtype))


class Projection(nn.Module):
    """Holds a projection in a buffer; ``forward`` is :func:`project`."""

    def __init__(self, projection: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", projection)

    def forward(self, x: Tensor) -> Tensor:
        return project(x, self.weight)
