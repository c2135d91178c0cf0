"""Projections of C-channel patch embeddings to k dims: PaDiM's random channel subset and SOE's
random semi-orthogonal matrix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def project_layers(features: dict[str, Tensor], layers: tuple[str, ...], projection: Tensor) -> Tensor:
    """Project multi-scale maps without building the concatenated embedding.

    Equal to ``project(concat(upsample_nearest(f_l)), projection)`` because nearest upsampling
    commutes with any per-position linear map: each layer is projected at its own (coarser)
    resolution and only the k-dim result is upsampled, which saves most of the memory traffic.

    Args:
        features: maps (B, C_l, h_l, w_l) by layer name; the first layer is the finest.
        layers: layer order of the concatenation.
        projection: indices (k,) int64 into the concatenated channels, or a matrix (C, k).

    Returns:
        shape (B, h*w, k) with (h, w) the finest map's size.
    """
    first = features[layers[0]]
    size = first.shape[-2:]
    parts: list[Tensor] = []
    total: Tensor | None = None
    offset = 0
    for name in layers:
        fmap = features[name]
        channels = fmap.shape[1]
        if projection.dtype == torch.int64:
            picked = projection[(projection >= offset) & (projection < offset + channels)] - offset
            if len(picked):
                part = fmap.index_select(1, picked)
                parts.append(part if part.shape[-2:] == size else F.interpolate(part, size=size, mode="nearest"))
        else:
            block = projection[offset : offset + channels].to(fmap.dtype)  # (C_l, k)
            part = torch.einsum("bchw,ck->bkhw", fmap, block)
            part = part if part.shape[-2:] == size else F.interpolate(part, size=size, mode="nearest")
            total = part if total is None else total.add_(part)
        offset += channels
    check_shape("projection", projection.shape, f"indices below {offset} or ({offset}, k)", projection.dtype == torch.int64 or projection.shape[0] == offset)
    out = torch.cat(parts, dim=1) if total is None else total
    return out.flatten(2).transpose(1, 2).contiguous()


class Projection(nn.Module):
    """Holds a projection in a buffer; ``forward`` is :func:`project`."""

    weight: Tensor

    def __init__(self, projection: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", projection)

    def forward(self, x: Tensor) -> Tensor:
        return project(x, self.weight)
