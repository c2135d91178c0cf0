from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from streamad.errors import ShapeError
from streamad.scorers.running import FOLD_FRAMES, RunningGaussian, batch_moments, chan_merge

EXACT = pytest.mark.parametrize("exact", [True, False], ids=["float64", "float32"])


def assert_statistics(got: np.ndarray, expected: np.ndarray, *, exact: bool) -> None:
    """float64: to 1e-9; float32 GEMMs: within running.py's stated bound, every entry within
    gamma(FOLD_FRAMES + 3) * sqrt(c_ii c_jj) of the exact one."""
    if exact:
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
        return
    n, u = FOLD_FRAMES + 3, 2.0**-24
    diagonal = np.diagonal(expected, axis1=-2, axis2=-1)
    bound = n * u / (1 - n * u) * np.sqrt(diagonal[..., :, None] * diagonal[..., None, :])
    assert (np.abs(got - expected) <= bound).all(), float((np.abs(got - expected) / bound).max())
    assert np.abs(got - expected).max() > 0  # the float32 path did run


def reference(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy mean and covariance per position of (N, P, k) data."""
    mean = data.mean(0)
    cov = np.stack([np.cov(data[:, p].T) for p in range(data.shape[1])])
    return mean, cov


@pytest.fixture
def data() -> np.ndarray:
    rng = np.random.default_rng(1)
    # large offset: the case where E[xx^T] - mu mu^T would cancel catastrophically
    return rng.normal(size=(97, 3, 5)) * rng.uniform(0.1, 3, size=(1, 3, 5)) + 1e4


class TestRunningGaussian:
    @EXACT
    @pytest.mark.parametrize("splits", [[97], [1, 96], [10, 20, 30, 37], [1] * 97, [50, 2, 45]])
    def test_batch_splits_match_numpy(self, data: np.ndarray, splits: list[int], exact: bool) -> None:
        g = RunningGaussian(3, 5, exact=exact)
        start = 0
        for size in splits:
            g.update(torch.from_numpy(data[start : start + size]))
            start += size
        mean, cov = reference(data)
        assert g.n == 97
        np.testing.assert_allclose(g.mean.numpy(), mean, rtol=1e-12)
        assert_statistics(g.covariance().numpy(), cov, exact=exact)

    def test_merge_any_order_matches_numpy(self, data: np.ndarray) -> None:
        parts = [data[:13], data[13:40], data[40:41], data[41:]]
        mean, cov = reference(data)
        for order in itertools.permutations(range(4)):
            total = RunningGaussian(3, 5)
            for i in order:
                g = RunningGaussian(3, 5, exact=True)
                g.update(torch.from_numpy(parts[i]))
                total.merge(g)
            np.testing.assert_allclose(total.mean.numpy(), mean, rtol=1e-12)
            np.testing.assert_allclose(total.covariance().numpy(), cov, rtol=1e-9, atol=1e-12)

    @EXACT
    def test_update_equals_chan_merge(self, data: np.ndarray, exact: bool) -> None:
        g = RunningGaussian(3, 5, exact=exact)
        g.update(torch.from_numpy(data[:30]))
        g.update(torch.from_numpy(data[30:]))
        n, mean, m2 = chan_merge(*batch_moments(torch.from_numpy(data[:30])), *batch_moments(torch.from_numpy(data[30:])))
        assert n == g.n
        torch.testing.assert_close(g.mean, mean, rtol=1e-12, atol=0)
        assert_statistics(g.ready().m2.numpy(), m2.numpy(), exact=exact)

    def test_float32_path_stays_within_its_bound_on_float32_embeddings(self) -> None:
        """Embeddings as fits see them (float32, far from zero, uneven scales), more frames than
        a fold, against numpy's float64 covariance of the same numbers."""
        rng = np.random.default_rng(3)
        data = (rng.normal(size=(3 * FOLD_FRAMES + 17, 4, 6)) * rng.uniform(0.01, 5, size=(1, 4, 6)) + rng.uniform(-50, 50, size=(1, 4, 6))).astype(np.float32)
        g, start = RunningGaussian(4, 6), 0
        for size in itertools.cycle([32, 7, 32, 1]):
            if start >= len(data):
                break
            g.update(torch.from_numpy(data[start : start + size]))
            start += size
        mean, cov = reference(data.astype(np.float64))
        np.testing.assert_allclose(g.mean.numpy(), mean, rtol=1e-12, atol=1e-12)
        assert_statistics(g.covariance().numpy(), cov, exact=False)

    def test_position_blocks_change_nothing(self, data: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
        """Updates and merges go a block of positions at a time; one position per block gives
        numpy's statistics as the whole does."""
        import streamad.scorers.running as gaussian

        monkeypatch.setattr(gaussian, "BLOCK_BYTES", 8)
        assert len(gaussian.position_blocks(3, 5 * 11)) == 3
        g, other = RunningGaussian(3, 5, exact=True), RunningGaussian(3, 5, exact=True)
        g.update(torch.from_numpy(data[:10]))
        g.update(torch.from_numpy(data[10:50]))
        other.update(torch.from_numpy(data[50:]))
        g.merge(other)
        mean, cov = reference(data)
        np.testing.assert_allclose(g.mean.numpy(), mean, rtol=1e-12)
        np.testing.assert_allclose(g.covariance().numpy(), cov, rtol=1e-9, atol=1e-12)

    def test_float64_input_is_not_modified(self, data: np.ndarray) -> None:
        x = torch.from_numpy(data.copy())
        RunningGaussian(3, 5).update(x)
        np.testing.assert_array_equal(x.numpy(), data)

    def test_float32_input_accumulates_in_float64(self) -> None:
        g = RunningGaussian(1, 2)
        g.update(torch.ones(4, 1, 2, dtype=torch.float32))
        assert g.mean.dtype == torch.float64 and g.m2.dtype == torch.float64

    @pytest.mark.parametrize("rows", [1, 2, 7, 32, 128, 300])
    def test_the_batch_sum_equals_torchs_float64_sum_bit_for_bit(self, rows: int) -> None:
        """The update's batch means: numpy's float64 sum of float32 rows on a CPU (faster),
        the same bits as torch's ``sum(0, dtype=float64)``, on a strided block as the update takes it."""
        from streamad.scorers.running import _sum64

        x = (torch.randn(rows, 64, 30, generator=torch.Generator().manual_seed(rows)) * 100 + 3)[:, 10:50]
        assert torch.equal(_sum64(x), x.sum(0, dtype=torch.float64))

    def test_wrong_shape(self) -> None:
        with pytest.raises(ShapeError, match=r"expected embeddings of shape \(B, 3, 5\)"):
            RunningGaussian(3, 5).update(torch.zeros(2, 3, 4))

    def test_merge_wrong_shape(self) -> None:
        with pytest.raises(ShapeError):
            RunningGaussian(3, 5).merge(RunningGaussian(2, 5))

    def test_covariance_needs_two_samples(self) -> None:
        g = RunningGaussian(1, 2)
        g.update(torch.zeros(1, 1, 2))
        with pytest.raises(ValueError, match="at least 2"):
            g.covariance()
