"""Gaussian factors and Mahalanobis distances of patch embeddings."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from streamad.errors import check_shape


def cholesky_factors(covariance: Tensor, *, eps: float, first: int = 0) -> Tensor:
    """Lower Cholesky factors of ``covariance + eps I`` (batched, float64 inside).

    Args:
        covariance: shape (P, k, k).
        eps: ridge added to the diagonal; must keep every matrix positive definite.
        first: the position of ``covariance[0]`` (errors name positions by it).

    Returns:
        L of shape (P, k, k), float64, with ``L L^T = covariance + eps I``.
    """
    check_shape("covariance", covariance.shape, "(P, k, k)", covariance.ndim == 3 and covariance.shape[1] == covariance.shape[2])
    cov = covariance.to(torch.float64)
    ridge = eps * torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    chol, info = torch.linalg.cholesky_ex(cov + ridge)
    if bool((info > 0).any()):
        bad = first + int((info > 0).nonzero()[0].item())
        raise ValueError(f"expected positive definite covariances, got a singular one at position {bad}; hint: raise eps or fit on more frames")
    return chol


def whitening_factors(chol: Tensor) -> Tensor:
    """``L^-1`` by a batched triangular solve against the identity, shape (P, k, k).

    Scoring with it is one batched matmul, ``||L^-1 (x - mu)||``; it is computed once per fit by a
    triangular solve in float64, never by inverting the covariance.
    """
    eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device).expand_as(chol)
    return torch.linalg.solve_triangular(chol, eye, upper=False)


def mahalanobis(x: Tensor, mean: Tensor, whitener: Tensor) -> Tensor:
    """Distance of patch embeddings to per-position Gaussians: ``|L^-1 (x - mean)|``, one bmm.

    Args:
        x: embeddings, shape (B, P, k).
        mean: shape (P, k).
        whitener: ``L^-1`` of the lower Cholesky factors of the covariances, shape (P, k, k)
            (:func:`whitening_factors`).

    Returns:
        Distances, shape (B, P).

    Example:
        >>> x = torch.zeros(1, 2, 3); mean = torch.zeros(2, 3); whitener = torch.eye(3).expand(2, 3, 3)
        >>> mahalanobis(x + 2, mean, whitener)
        tensor([[3.4641, 3.4641]])
    """
    check_shape("x", x.shape, "(B, P, k)", x.ndim == 3 and tuple(x.shape[1:]) == tuple(mean.shape))
    diff = (x - mean.to(x.dtype)).permute(1, 2, 0)  # (P, k, B)
    z = torch.bmm(whitener.to(x.dtype), diff)
    return z.square().sum(1).sqrt().transpose(0, 1)


class Mahalanobis(nn.Module):
    """Fitted Gaussian factors in buffers; ``forward`` is :func:`mahalanobis`."""

    mean: Tensor
    whitener: Tensor

    def __init__(self, mean: Tensor, whitener: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("whitener", whitener)

    def forward(self, x: Tensor) -> Tensor:
        return mahalanobis(x, self.mean, self.whitener)
