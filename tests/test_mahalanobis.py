from __future__ import annotations

import numpy as np
import pytest
import torch

from streamad.errors import ShapeError
from streamad.scorers.mahalanobis import Mahalanobis, cholesky_factors, mahalanobis, whitening_factors


def random_gaussians(positions: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(positions, k, k))
    cov = a @ a.transpose(0, 2, 1) / k + 0.1 * np.eye(k)
    return rng.normal(size=(positions, k)), cov


def explicit_inverse_reference(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(cov)
    diff = x - mean[None]
    return np.sqrt(np.einsum("bpi,pij,bpj->bp", diff, inv, diff))


class TestMahalanobis:
    @pytest.mark.parametrize("k", [1, 7, 100])
    def test_matches_explicit_inverse(self, k: int) -> None:
        mean, cov = random_gaussians(5, k)
        x = np.random.default_rng(1).normal(size=(3, 5, k)) * 2
        eps = 1e-3
        chol = cholesky_factors(torch.from_numpy(cov), eps=eps)
        expected = explicit_inverse_reference(x, mean, cov + eps * np.eye(k))
        got = mahalanobis(torch.from_numpy(x), torch.from_numpy(mean), whitening_factors(chol))
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)

    def test_float32_path_close(self) -> None:
        mean, cov = random_gaussians(4, 100)
        x = np.random.default_rng(2).normal(size=(2, 4, 100))
        chol = cholesky_factors(torch.from_numpy(cov), eps=0.01)
        module = Mahalanobis(torch.from_numpy(mean).float(), whitening_factors(chol).float())
        expected = explicit_inverse_reference(x, mean, cov + 0.01 * np.eye(100))
        np.testing.assert_allclose(module(torch.from_numpy(x).float()).numpy(), expected, rtol=1e-4)

    def test_cholesky_reconstructs(self) -> None:
        _, cov = random_gaussians(3, 6)
        chol = cholesky_factors(torch.from_numpy(cov), eps=0.5)
        np.testing.assert_allclose((chol @ chol.transpose(1, 2)).numpy(), cov + 0.5 * np.eye(6), rtol=1e-12)

    def test_singular_covariance_names_position(self) -> None:
        cov = torch.eye(3).repeat(2, 1, 1).double()
        cov[1] = -torch.eye(3)
        with pytest.raises(ValueError, match="position 1"):
            cholesky_factors(cov, eps=1e-3)

    def test_shape_error(self) -> None:
        with pytest.raises(ShapeError):
            mahalanobis(torch.zeros(2, 3, 4), torch.zeros(3, 5), torch.eye(5).repeat(3, 1, 1))
