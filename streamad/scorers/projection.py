"""Projections of C-channel patch embeddings to k dims: PaDiM's random channel subset and SOE's
random semi-orthogonal matrix."""

from __future__ import annotations

import functools

import numpy as np
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
    A channel subset is a pure copy: one gather from the layers' maps straight into the
    (B, P, k) result (:func:`subset_index`), bit for bit what upsampling then selecting gives.

    Args:
        features: maps (B, C_l, h_l, w_l) by layer name; the first layer is the finest.
        layers: layer order of the concatenation.
        projection: indices (k,) int64 into the concatenated channels, or a matrix (C, k).

    Returns:
        shape (B, h*w, k) with (h, w) the finest map's size.
    """
    first = features[layers[0]]
    size = first.shape[-2:]
    maps = [features[name] for name in layers]
    channels = sum(fmap.shape[1] for fmap in maps)
    subset = projection.dtype == torch.int64
    check_shape("projection", projection.shape, f"indices below {channels} or ({channels}, k)", subset or projection.shape[0] == channels)
    if subset:
        index = subset_index(tuple(tuple(int(d) for d in fmap.shape[1:]) for fmap in maps), tuple(projection.tolist()), str(first.device))
        flat = torch.cat([fmap.flatten(1) for fmap in maps], dim=1)  # (B, sum C_l h_l w_l)
        return flat.index_select(1, index.flatten()).view(first.shape[0], index.shape[0], index.shape[1])
    total: Tensor | None = None
    offset = 0
    for fmap in maps:
        block = projection[offset : offset + fmap.shape[1]].to(fmap.dtype)  # (C_l, k)
        part = torch.einsum("bchw,ck->bkhw", fmap, block)
        part = part if part.shape[-2:] == size else F.interpolate(part, size=size, mode="nearest")
        total = part if total is None else total.add_(part)
        offset += fmap.shape[1]
    assert total is not None
    return total.flatten(2).transpose(1, 2).contiguous()


@functools.lru_cache(maxsize=8)
def subset_index(shapes: tuple[tuple[int, int, int], ...], picked: tuple[int, ...], device: str = "cpu") -> Tensor:
    """Where each value of a channel subset's (P, k) embedding is in the layers' maps flattened
    and concatenated (each ``(C_l, h_l, w_l)`` of ``shapes``, the first the finest): output
    column ``j`` is channel ``picked[j]`` of the concatenation (grouped by layer, as the
    concatenation orders them), at the source position PyTorch's nearest upsampling reads
    (``floor(dst * (in / out))`` in float32, the last row or column at most); on ``device``,
    kept for the next batch.

    Example:
        >>> subset_index(((2, 2, 2), (1, 1, 1)), (1, 2)).tolist()
        [[4, 8], [5, 8], [6, 8], [7, 8]]
    """
    _, height, width = shapes[0]
    index = np.empty((height * width, len(picked)), dtype=np.int64)
    base = offset = column = 0
    for count, h, w in shapes:
        mine = [c - offset for c in picked if offset <= c < offset + count]
        rows = _nearest(h, height)[:, None] * w + _nearest(w, width)[None, :]  # (height, width) source positions
        index[:, column : column + len(mine)] = base + np.asarray(mine, dtype=np.int64)[None, :] * (h * w) + rows.reshape(-1, 1)
        base, offset, column = base + count * h * w, offset + count, column + len(mine)
    return torch.from_numpy(index[:, :column]).to(device)


def _nearest(size: int, out: int) -> np.ndarray:
    """The source indices PyTorch's ``nearest`` mode reads for ``out`` outputs of ``size`` inputs."""
    if size == out:
        return np.arange(out)
    scale = np.float32(size) / np.float32(out)
    return np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int64), size - 1)


class Projection(nn.Module):
    """Holds a projection in a buffer; ``forward`` is :func:`project`."""

    weight: Tensor

    def __init__(self, projection: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", projection)

    def forward(self, x: Tensor) -> Tensor:
        return project(x, self.weight)
