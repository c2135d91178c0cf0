"""The feature extractor: uint8 RGB frames in, named multi-scale feature maps out.

A :class:`FeatureExtractor` is preprocessing (resize, normalise) plus a frozen pretrained
backbone. Scorers never see frames: they get its ``dict[str, Tensor]`` of maps. Jobs build one
extractor per backbone spec (name, weights, input size) and share it between all the models that
use it, so several cameras cost one backbone pass per gathered batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from streamad.errors import ConfigError
from streamad.features.backbones import BackboneSpec, build_backbone
from streamad.features.preprocess import Preprocessor

if TYPE_CHECKING:
    from streamad.config import ModelConfig

Features = dict[str, Tensor]

SECOND = "b:"  # prefix of the second backbone's maps in a pair's features (``b:layer1``)

CPU_MICRO_BATCH = 1
"""On a CPU the backbone runs a batch this many frames at a time: at the usual input sizes a
frame's features do not depend on the others in its batch (tested: bitwise at 256x336), a fit
ran as fast (vtest.avi: 0.95x the wall time of 4 at a time) and the activations alive at once
are a fraction (fit peak 1.47 against 1.72 GB with 4 at a time, 2.04 with whole batches of 8)."""


def feature_hw(spec: BackboneSpec, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Size of the finest feature map (the patch grid) for an input size.

    Example:
        >>> from streamad.features.backbones import SPECS
        >>> feature_hw(SPECS["lite0"], (256, 384))
        (64, 96)
    """
    stride = min(spec.strides)
    return (input_hw[0] + stride - 1) // stride, (input_hw[1] + stride - 1) // stride


class FeatureExtractor(nn.Module):
    """Preprocess + backbone (or a pair of backbones on the same images), frozen, on one device.

    Args:
        backbone: a name from :data:`streamad.features.backbones.SPECS`.
        input_hw: network input (height, width).
        weights: state dict file (torchvision backbones need one; the lites have their own).
        device: where the backbone runs; on CUDA it runs in float16 autocast, channels_last.
        backbone_b: a second backbone (feature-mapping scorers): its maps join the features
            under ``b:<layer>``. It must take the same normalised images (mean, std).
        weights_b: the second backbone's state dict file.
    """

    def __init__(
        self,
        backbone: str,
        *,
        input_hw: tuple[int, int],
        weights: str | None = None,
        device: torch.device | str = "cpu",
        backbone_b: str | None = None,
        weights_b: str | None = None,
    ) -> None:
        super().__init__()
        net, spec, sha = build_backbone(backbone, weights=weights)
        self.device = torch.device(device)
        self.spec: BackboneSpec = spec
        self.weights_sha256 = sha
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.feature_hw = feature_hw(spec, self.input_hw)
        self.backbone = self._placed(net)
        self.spec_b: BackboneSpec | None = None
        self.weights_b_sha256: str | None = None
        self.backbone_b: nn.Module | None = None
        if backbone_b is not None:
            net_b, self.spec_b, self.weights_b_sha256 = build_backbone(backbone_b, weights=weights_b, option="--weights-b")
            pixels = self.spec_b.name == "pixels"  # the image itself, as normalised for the first backbone
            if not pixels and (self.spec_b.mean, self.spec_b.std, self.spec_b.strides) != (spec.mean, spec.std, spec.strides):
                raise ConfigError(f"expected a second backbone with {backbone}'s input normalisation and strides, got {backbone_b}")
            self.backbone_b = self._placed(net_b)
        self.preprocessor = Preprocessor(self.input_hw, mean=spec.mean, std=spec.std)

    def _placed(self, net: nn.Module) -> nn.Module:
        net = net.to(self.device)
        return net.to(memory_format=torch.channels_last) if self.device.type == "cuda" else net

    @property
    def key(self) -> tuple[object, ...]:
        """What makes two extractors interchangeable: backbone(s), weights and input size."""
        second = (self.spec_b.name, self.weights_b_sha256) if self.spec_b is not None else ()
        return self.spec.name, self.weights_sha256, self.input_hw, *second

    def preprocess(self, frames: Sequence[np.ndarray]) -> Tensor:
        """RGB uint8 frames (H, W, 3) to uint8 images (B, 3, H', W') at the input size on the
        device; :meth:`forward` normalises them."""
        return self.preprocessor(frames, self.device)

    def resize(self, frame: np.ndarray) -> np.ndarray:
        """One RGB uint8 frame at the input size, on the host (:meth:`Preprocessor.resize`)."""
        return self.preprocessor.resize(frame, self.device)

    @torch.inference_mode()
    def forward(self, images: Tensor) -> Features:
        """Images (B, 3, H, W), uint8 as :meth:`preprocess` makes them or already normalised
        floats, to float32 maps (B, C_l, h_l, w_l) by layer name."""
        if images.dtype == torch.uint8:
            images = self.preprocessor.normalise(images)
        return self._both(images, self._run)

    def whole(self, images: Tensor) -> Features:
        """The backbone(s) on normalised float images in one pass each, without the CPU's
        micro-batches or CUDA's half precision: the graph an export traces."""
        return self._both(images, lambda net, x: dict(net(x)))

    def _both(self, images: Tensor, run: Callable[[nn.Module, Tensor], Features]) -> Features:
        """The backbone's maps by layer name, and a second backbone's under ``b:<layer>``."""
        features = run(self.backbone, images)
        if self.backbone_b is not None:
            features |= {SECOND + name: f for name, f in run(self.backbone_b, images).items()}
        return features

    def _run(self, net: nn.Module, images: Tensor) -> Features:
        if self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.float16):
                features = net(images)
            return {name: f.float() for name, f in features.items()}
        if len(images) <= CPU_MICRO_BATCH:
            return dict(net(images))
        parts = [dict(net(images[i : i + CPU_MICRO_BATCH])) for i in range(0, len(images), CPU_MICRO_BATCH)]
        return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}

    def extract(self, frames: Sequence[np.ndarray]) -> Features:
        """RGB uint8 frames to feature maps (:meth:`preprocess`, then the backbone)."""
        return self(self.preprocess(frames))


class Extractors:
    """One :class:`FeatureExtractor` per backbone spec (name, weights file, input size), built
    on first use and shared by every model that asks for the same one."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._built: dict[tuple[object, ...], FeatureExtractor] = {}

    def get(
        self, backbone: str, *, input_hw: tuple[int, int], weights: str | None = None, backbone_b: str | None = None, weights_b: str | None = None
    ) -> FeatureExtractor:
        key = (backbone, weights, (int(input_hw[0]), int(input_hw[1])), backbone_b, weights_b)
        if key not in self._built:
            self._built[key] = FeatureExtractor(backbone, input_hw=input_hw, weights=weights, device=self.device, backbone_b=backbone_b, weights_b=weights_b)
        return self._built[key]

    def for_config(self, config: ModelConfig) -> FeatureExtractor:
        """The extractor of a model config (its input size must be set)."""
        hw = config.input_hw or (0, 0)
        return self.get(config.backbone, input_hw=hw, weights=config.weights, backbone_b=config.backbone_b, weights_b=config.weights_b)
