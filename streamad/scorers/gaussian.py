"""PaDiM and SOE: a Gaussian per patch position of k projected feature dimensions.

The projection (PaDiM: a random channel subset; SOE: a random semi-orthogonal matrix) is part of
the scorer. Fitting streams float64 running statistics (exactly mergeable); finalising factorises
each position's covariance (Cholesky) and scores with the whitening factors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from streamad.config import ModelConfig
from streamad.errors import ConfigError, StoreError
from streamad.features import FeatureExtractor, Features
from streamad.gaussian import RunningGaussian
from streamad.mahalanobis import Mahalanobis, cholesky_factors, whitening_factors
from streamad.projection import METHODS, make_projection, project_layers
from streamad.scorers.base import Scorer, ScorerState

EMBEDDING = "embedding"


class GaussianScorer(nn.Module):
    """Per-position Gaussians of projected multi-scale features (``padim`` or ``soe``).

    Args:
        method: ``padim`` or ``soe``.
        layers: the extractor's layer names, finest first (their channels are concatenated).
        channels: channels of each layer.
        positions: patches of the finest map (h * w).
        k: projected dimension.
        seed: seeds the projection.
        eps: ridge added to every covariance.
        device: where statistics and factors live.
    """

    mergeable: ClassVar[bool] = True
    trainable: ClassVar[bool] = False
    extractors: ClassVar[int] = 1

    projection: Tensor

    def __init__(
        self,
        *,
        method: str,
        layers: tuple[str, ...],
        channels: int,
        positions: int,
        k: int,
        seed: int,
        eps: float,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"expected a Gaussian method in {METHODS}, got {method!r}")
        if k > channels:
            raise ConfigError(f"expected k <= {channels} (the backbone's channels), got k={k}")
        self.method, self.layers, self.k, self.seed, self.eps = method, layers, k, seed, eps
        self.register_buffer("projection", make_projection(method, channels, k, seed=seed).to(device))
        self.gaussian = RunningGaussian(positions, k, device=device)
        self.factors: Mahalanobis | None = None
        self.chol: Tensor | None = None
        self.factor_count = 0  # frames the factors were computed from

    @property
    def frames_seen(self) -> int:
        return self.gaussian.n

    @property
    def finalised(self) -> bool:
        return self.factors is not None

    def attrs(self) -> dict[str, Any]:
        return {"k": self.k, "seed": self.seed, "eps": self.eps}

    @torch.inference_mode()
    def prepare(self, features: Features) -> Features:
        """Multi-scale maps to projected embeddings ``{"embedding": (B, P, k)}``."""
        return {EMBEDDING: project_layers(features, self.layers, self.projection)}

    def update(self, prepared: Features) -> None:
        """Accumulate a batch; distances keep using the factors of the last :meth:`finalise`."""
        self.gaussian.update(prepared[EMBEDDING])

    @torch.inference_mode()
    def finalise(self) -> None:
        """Cholesky factors of the covariances (+ eps I), stored as float32 so that a loaded
        store scores exactly like the fit that wrote it."""
        if self.gaussian.n < 2:
            raise ConfigError(f"expected at least 2 frames to fit, got {self.gaussian.n}; hint: check the sources or lower --every")
        chol = cholesky_factors(self.gaussian.covariance(), eps=self.eps)
        self._set_factors(self.gaussian.mean.float(), chol.float(), self.gaussian.n)

    def _set_factors(self, mean: Tensor, chol: Tensor, count: int) -> None:
        self.factor_count = count
        device = self.projection.device
        whitener = whitening_factors(chol.to(device, torch.float64)).float()
        self.factors = Mahalanobis(mean.to(device, torch.float32), whitener)
        self.chol = chol.to(device, torch.float32)

    @torch.inference_mode()
    def distances(self, prepared: Features) -> Tensor:
        """Mahalanobis distances (B, P) of the embeddings to the fitted Gaussians."""
        if self.factors is None:
            raise RuntimeError("the scorer has no factors; call finalise() or load a fitted store")
        return self.factors(prepared[EMBEDDING])

    def merge(self, other: Scorer) -> None:
        if not isinstance(other, GaussianScorer) or (other.method, other.attrs()) != (self.method, self.attrs()):
            raise ConfigError("expected partial fits of the same Gaussian model to merge, got another kind")
        self.gaussian.merge(other.gaussian)

    def state(self) -> ScorerState:
        """Statistics (revision: their frame count) and, once finalised, the factors (revision:
        the count they were computed from, which is also the state's revision: distances
        change only when the factors do)."""
        n, f = str(self.gaussian.n), str(self.factor_count)
        arrays = {
            "projection": self.projection.cpu().numpy(),
            "count": np.asarray(self.gaussian.n, dtype=np.int64),
            "mean": self.gaussian.mean.cpu().numpy(),
            "m2": self.gaussian.m2.cpu().numpy(),
        }
        revisions = {"projection": "0", "count": n, "mean": n, "m2": n}
        if self.factors is not None and self.chol is not None:
            arrays.update(factor_mean=self.factors.mean.cpu().numpy(), chol=self.chol.cpu().numpy())
            revisions.update(factor_mean=f, chol=f)
        attrs = {**self.attrs(), "finalised": self.finalised, "factor_count": self.factor_count}
        return ScorerState(arrays, attrs, revision=f"f{f}" if self.finalised else f"n{n}", revisions=revisions)

    def load_state(self, state: ScorerState) -> None:
        arrays = state.arrays
        projection = torch.from_numpy(arrays["projection"]).to(self.projection.device)
        if projection.shape != self.projection.shape:
            raise StoreError(f"expected a stored projection of shape {tuple(self.projection.shape)} (k={self.k}), got {tuple(projection.shape)}")
        if not torch.equal(projection, self.projection):
            raise StoreError(f"expected the stored projection of method {self.method} with seed {self.seed} and k={self.k}, got another one")
        mean = arrays["mean"]
        if mean.shape != tuple(self.gaussian.mean.shape):
            raise StoreError(f"expected statistics of shape {tuple(self.gaussian.mean.shape)}, got {mean.shape}")
        self.gaussian.count.fill_(int(arrays["count"]))
        self.gaussian.mean.copy_(torch.from_numpy(mean))
        self.gaussian.m2.copy_(torch.from_numpy(arrays["m2"]))
        self.factors, self.chol, self.factor_count = None, None, 0
        if state.attrs.get("finalised") and "chol" in arrays:
            self._set_factors(torch.from_numpy(arrays["factor_mean"]), torch.from_numpy(arrays["chol"]), int(state.attrs.get("factor_count", 0)))


def build(config: ModelConfig, extractor: FeatureExtractor) -> GaussianScorer:
    """The registry's factory for ``padim`` and ``soe``: sized for ``extractor``'s features."""
    h, w = extractor.feature_hw
    spec = extractor.spec
    return GaussianScorer(
        method=config.method,
        layers=spec.layers,
        channels=spec.total_channels,
        positions=h * w,
        k=config.k,
        seed=config.seed,
        eps=config.eps,
        device=extractor.device,
    )
