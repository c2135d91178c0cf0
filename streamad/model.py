"""The anomaly model: backbone, projection, running Gaussian, factors and map generator."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from streamad.anomaly_map import AnomalyMap
from streamad.backbones import BackboneSpec, build_backbone
from streamad.errors import ConfigError
from streamad.gaussian import RunningGaussian
from streamad.mahalanobis import Mahalanobis, cholesky_factors, whitening_factors
from streamad.preprocess import Preprocessor
from streamad.projection import METHODS, Projection, make_projection, project_layers


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Everything that defines a model before it has seen data.

    Attributes:
        method: ``padim`` (random channel subset) or ``soe`` (semi-orthogonal projection).
        backbone: a name from :data:`streamad.backbones.SPECS`.
        input_hw: network input (height, width), multiples of 16; None picks it from the first
            frame (aspect ratio kept, short side near 256).
        k: projected dimension.
        seed: seeds the projection.
        eps: ridge added to every covariance.
        sigma: Gaussian blur of the anomaly map, in input pixels.
        weights: weights file (required for torchvision backbones).
    """

    method: str = "padim"
    backbone: str = "lite0"
    input_hw: tuple[int, int] | None = None
    k: int = 100
    seed: int = 0
    eps: float = 0.01
    sigma: float = 4.0
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"expected --method in {METHODS}, got {self.method!r}")
        if self.input_hw is not None and any(v < 32 or v % 16 for v in self.input_hw):
            raise ConfigError(f"expected an input size whose sides are multiples of 16 and >= 32, got {self.input_hw}")
        if self.k < 1:
            raise ConfigError(f"expected k >= 1, got {self.k}")
        if self.eps <= 0:
            raise ConfigError(f"expected eps > 0, got {self.eps}")


def feature_hw(spec: BackboneSpec, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Size of the finest feature map (the patch grid)."""
    stride = min(spec.strides)
    return (input_hw[0] + stride - 1) // stride, (input_hw[1] + stride - 1) // stride


class AnomalyModel(nn.Module):
    """Frames in, embeddings, distances and anomaly maps out.

    The fitted state (projection, running statistics, factors) lives in buffers; stores read and
    write it through :mod:`streamad.model_store`.
    """

    def __init__(self, config: ModelConfig, *, device: torch.device | str = "cpu") -> None:
        super().__init__()
        if config.input_hw is None:
            raise ConfigError("expected a model config with a concrete input_hw, got None")
        self.config = config
        self.input_hw: tuple[int, int] = config.input_hw
        self.device = torch.device(device)
        backbone, spec, sha = build_backbone(config.backbone, weights=config.weights)
        self.spec, self.weights_sha256 = spec, sha
        self.backbone = backbone.to(self.device)
        if self.device.type == "cuda":
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.preprocess = Preprocessor(self.input_hw, mean=spec.mean, std=spec.std)
        channels = spec.total_channels
        if config.k > channels:
            raise ConfigError(f"expected k <= {channels} (channels of {spec.name}), got k={config.k}")
        self.projection = Projection(make_projection(config.method, channels, config.k, seed=config.seed)).to(self.device)
        self.feature_hw = feature_hw(spec, self.input_hw)
        positions = self.feature_hw[0] * self.feature_hw[1]
        self.gaussian = RunningGaussian(positions, config.k, device=self.device)
        self.scorer: Mahalanobis | None = None
        self.to_map = AnomalyMap(feature_hw=self.feature_hw, out_hw=self.input_hw, sigma=config.sigma)

    @property
    def positions(self) -> int:
        return self.feature_hw[0] * self.feature_hw[1]

    @torch.inference_mode()
    def embed_images(self, images: Tensor) -> Tensor:
        """Normalised images (B, 3, H, W) to projected embeddings (B, P, k), float32."""
        return self.project(self.features(images))

    @torch.inference_mode()
    def features(self, images: Tensor) -> dict[str, Tensor]:
        """The backbone's multi-scale maps of normalised images (B, 3, H, W), float32."""
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16):
                features = self.backbone(images)
            return {name: f.float() for name, f in features.items()}
        return self.backbone(images)

    @torch.inference_mode()
    def project(self, features: dict[str, Tensor]) -> Tensor:
        """Multi-scale maps (from any model with this backbone) to this model's embeddings (B, P, k)."""
        return project_layers(features, self.spec.layers, self.projection.weight)

    def embed(self, frames: Sequence[np.ndarray]) -> Tensor:
        """RGB uint8 frames to projected embeddings (B, P, k)."""
        return self.embed_images(self.preprocess(frames, self.device))

    @torch.inference_mode()
    def finalise(self) -> None:
        """Factorise the running statistics into the scorer's factors."""
        chol = cholesky_factors(self.gaussian.covariance(), eps=self.config.eps)
        self.set_factors(self.gaussian.mean.float(), chol.float())  # as stored: loading gives the same scores

    def set_factors(self, mean: Tensor, chol: Tensor) -> None:
        """Install factors (mean (P, k), lower Cholesky (P, k, k)) for scoring."""
        whitener = whitening_factors(chol.to(self.device, torch.float64)).float()
        self.scorer = Mahalanobis(mean.to(self.device, torch.float32), whitener)
        self.chol = chol.to(self.device, torch.float32)

    @torch.inference_mode()
    def distances(self, embeddings: Tensor) -> Tensor:
        """Mahalanobis distances (B, P) of embeddings (B, P, k) to the fitted Gaussians."""
        if self.scorer is None:
            raise RuntimeError("model has no factors; call finalise() or load a fitted store")
        return self.scorer(embeddings)

    @torch.inference_mode()
    def maps(self, distances: Tensor) -> Tensor:
        """Anomaly maps (B, H, W) at the input size from distances (B, P)."""
        return self.to_map(distances)
