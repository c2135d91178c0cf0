"""The feature extractor: uint8 RGB frames in, named multi-scale feature maps out.

A :class:`FeatureExtractor` is preprocessing (resize, normalise) plus a frozen pretrained
backbone. Scorers never see frames: they get its ``dict[str, Tensor]`` of maps. Jobs build one
extractor per backbone spec (name, weights, input size) and share it between all the models that
use it, so several cameras cost one backbone pass per gathered batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from streamad.backbones import BackboneSpec, build_backbone
from streamad.preprocess import Preprocessor

Features = dict[str, Tensor]


def feature_hw(spec: BackboneSpec, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Size of the finest feature map (the patch grid) for an input size.

    Example:
        >>> from streamad.backbones import SPECS
        >>> feature_hw(SPECS["lite0"], (256, 384))
        (64, 96)
    """
    stride = min(spec.strides)
    return (input_hw[0] + stride - 1) // stride, (input_hw[1] + stride - 1) // stride


class FeatureExtractor(nn.Module):
    """Preprocess + backbone, frozen, on one device.

    Args:
        backbone: a name from :data:`streamad.backbones.SPECS`.
        input_hw: network input (height, width).
        weights: state dict file (torchvision backbones need one; lite0 has its own).
        device: where the backbone runs; on CUDA it runs in float16 autocast, channels_last.
    """

    def __init__(self, backbone: str, *, input_hw: tuple[int, int], weights: str | None = None, device: torch.device | str = "cpu") -> None:
        super().__init__()
        net, spec, sha = build_backbone(backbone, weights=weights)
        self.device = torch.device(device)
        self.spec: BackboneSpec = spec
        self.weights_sha256 = sha
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.feature_hw = feature_hw(spec, self.input_hw)
        self.backbone = net.to(self.device)
        if self.device.type == "cuda":
            self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.preprocessor = Preprocessor(self.input_hw, mean=spec.mean, std=spec.std)

    @property
    def key(self) -> tuple[str, str, tuple[int, int]]:
        """What makes two extractors interchangeable: backbone, weights and input size."""
        return self.spec.name, self.weights_sha256, self.input_hw

    def preprocess(self, frames: Sequence[np.ndarray]) -> Tensor:
        """RGB uint8 frames (H, W, 3) to normalised images (B, 3, H', W') on the device."""
        return self.preprocessor(frames, self.device)

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Features:
        """Normalised images (B, 3, H, W) to float32 maps (B, C_l, h_l, w_l) by layer name."""
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16):
                features = self.backbone(images)
            return {name: f.float() for name, f in features.items()}
        return dict(self.backbone(images))

    def extract(self, frames: Sequence[np.ndarray]) -> Features:
        """RGB uint8 frames to feature maps (:meth:`preprocess`, then the backbone)."""
        return self(self.preprocess(frames))


class Extractors:
    """One :class:`FeatureExtractor` per backbone spec (name, weights file, input size), built
    on first use and shared by every model that asks for the same one."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._built: dict[tuple[str, str | None, tuple[int, int]], FeatureExtractor] = {}

    def get(self, backbone: str, *, input_hw: tuple[int, int], weights: str | None = None) -> FeatureExtractor:
        key = (backbone, weights, (int(input_hw[0]), int(input_hw[1])))
        if key not in self._built:
            self._built[key] = FeatureExtractor(backbone, input_hw=input_hw, weights=weights, device=self.device)
        return self._built[key]
