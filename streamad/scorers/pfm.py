"""PFM and PEFM: a trained mapping between two pretrained backbones' feature spaces.

PFM (Wan et al., IEEE TII 2022): per tapped scale, small networks of 1x1 convolutions map
backbone A's features onto backbone B's and B's back onto A's (bidirectional, one shared middle
layer), trained on normal images with the mean squared error between channel-L2-normalised
features ("l2norm+l2"). Where a position's mapping error is large, the image is unlike the
training images there. PEFM (Wan et al., CASE 2022) adds a fixed 2-D sine/cosine position
encoding to each mapping's input, so the mapping may depend on where in the image it is.

The map of a frame is, per position of the finest grid, the mean over scales of the two
directions' squared errors (summed over channels, averaged over the directions), the coarser
scales upsampled bilinearly. Training state (network weights, batch-norm statistics, Adam
moments, epoch and position in the feature cache) is the scorer's state, as arrays.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamad.config import ModelConfig
from streamad.errors import ConfigError
from streamad.features.extractor import SECOND, FeatureExtractor, Features
from streamad.scorers.registry import ScorerSpec
from streamad.scorers.trained import NetworkScorer, seeded

LR = 3e-4  # the papers' Adam settings
WEIGHT_DECAY = 1e-5
LATENT_RATIO = 200 / 256  # the papers' latent width over target width (200, 400, 800 for 256, 512, 1024)


def position_encoding(channels: int, height: int, width: int) -> Tensor:
    """The PEFM paper's 2-D sine/cosine position encoding (C, H, W), C a multiple of 4.

    The first half of the channels encodes the column, the second half the row, each as
    interleaved ``sin(p * w_i), cos(p * w_i)`` with ``w_i = 10000^(-2i / (C/2))``.
    """
    if channels % 4:
        raise ConfigError(f"expected a channel count divisible by 4 for the position encoding, got {channels}")
    half = channels // 2
    freq = torch.exp(torch.arange(0, half, 2, dtype=torch.float64) * (-math.log(10000.0) / half))  # (half/2,)
    cols = torch.arange(width, dtype=torch.float64)[:, None] * freq  # (W, half/2)
    rows = torch.arange(height, dtype=torch.float64)[:, None] * freq  # (H, half/2)
    out = torch.zeros(channels, height, width, dtype=torch.float64)
    out[0:half:2] = cols.sin().T[:, None, :].expand(-1, height, -1)
    out[1:half:2] = cols.cos().T[:, None, :].expand(-1, height, -1)
    out[half::2] = rows.sin().T[:, :, None].expand(-1, -1, width)
    out[half + 1 :: 2] = rows.cos().T[:, :, None].expand(-1, -1, width)
    return out.float()


def _layers(widths: list[int], *, last_plain: bool) -> nn.Sequential:
    """1x1 convolutions between successive widths, each with batch norm and ReLU (but the last,
    when ``last_plain``)."""
    parts: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        parts.append(nn.Conv2d(a, b, kernel_size=1))
        if not (last_plain and i == len(widths) - 2):
            parts += [nn.BatchNorm2d(b), nn.ReLU()]
    return nn.Sequential(*parts)


class DualMapping(nn.Module):
    """One scale's bidirectional mapping (the papers' "small" dual projection): A -> latent ->
    B and B -> latent -> A, the two directions sharing the layer into the latent space."""

    pe_a: Tensor
    pe_b: Tensor

    def __init__(self, in_a: int, in_b: int, latent: int, *, grid: tuple[int, int] | None) -> None:
        super().__init__()
        self.a_to_latent = _layers([in_a, in_a // 2 + latent, 2 * latent], last_plain=False)
        self.b_to_latent = _layers([in_b, in_b // 2 + latent, 2 * latent], last_plain=False)
        self.shared = nn.Conv2d(2 * latent, latent, kernel_size=1)
        self.latent_to_b = _layers([latent, 2 * latent, in_b // 2 + latent, in_b], last_plain=True)
        self.latent_to_a = _layers([latent, 2 * latent, in_a // 2 + latent, in_a], last_plain=True)
        self.register_buffer("pe_a", position_encoding(in_a, *grid) if grid is not None else torch.zeros(1), persistent=False)
        self.register_buffer("pe_b", position_encoding(in_b, *grid) if grid is not None else torch.zeros(1), persistent=False)

    def forward(self, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """(A's features mapped onto B's, B's mapped onto A's)."""
        b_hat = self.latent_to_b(self.shared(self.a_to_latent(a + self.pe_a)))
        a_hat = self.latent_to_a(self.shared(self.b_to_latent(b + self.pe_b)))
        return b_hat, a_hat


class MappingScorer(NetworkScorer):
    """PFM (``position_encoding=False``) or PEFM scorer on a backbone pair's features.

    Args:
        layers: A's tapped layer names (B's are ``b:`` + its own, in the same order of scale).
        layers_b: B's tapped layer names.
        channels, channels_b: per scale, A's and B's channel counts.
        grids: per scale, the feature grid (h, w) at the model's input size.
        seed: initialises the networks.
    """

    def __init__(
        self,
        *,
        method: str,
        layers: tuple[str, ...],
        layers_b: tuple[str, ...],
        channels: tuple[int, ...],
        channels_b: tuple[int, ...],
        grids: tuple[tuple[int, int], ...],
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.layers, self.layers_b = layers, tuple(SECOND + name for name in layers_b)
        self.grids = grids
        pe = method == "pefm"
        net = seeded(
            seed,
            lambda: nn.ModuleList(
                DualMapping(a, b, max(4, round(LATENT_RATIO * b)), grid=grid if pe else None) for a, b, grid in zip(channels, channels_b, grids, strict=True)
            ),
        )
        self.mappings = net
        super().__init__(method=method, seed=seed, net=net, lr=LR, weight_decay=WEIGHT_DECAY, feature_names=(*self.layers, *self.layers_b), device=device)

    def method_attrs(self) -> dict[str, Any]:
        return {"layers_b": list(self.layers_b)}

    def prepare(self, features: Features) -> Features:
        """Both backbones' maps, L2-normalised over channels at each position (the papers'
        "l2norm"): what the feature cache keeps and the networks read."""
        return {name: F.normalize(features[name].float(), dim=1) for name in self.feature_names}

    def loss_of(self, prepared: Features) -> Tensor:
        """The summed per-scale, per-direction mean squared errors."""
        loss = torch.zeros((), device=self.device)
        for mapping, name_a, name_b in zip(self.mappings, self.layers, self.layers_b, strict=True):
            a, b = prepared[name_a].to(self.device).float(), prepared[name_b].to(self.device).float()
            b_hat, a_hat = mapping(a, b)
            loss = loss + F.mse_loss(b_hat, b) + F.mse_loss(a_hat, a)
        return loss

    @torch.inference_mode()
    def distances(self, prepared: Features) -> Tensor:
        """(B, P): per position of the finest grid, the mean over scales of both directions'
        squared mapping errors (summed over channels, averaged over the two directions)."""
        self.net.eval()
        finest = self.grids[0]
        total: Tensor | None = None
        for mapping, name_a, name_b in zip(self.mappings, self.layers, self.layers_b, strict=True):
            a, b = prepared[name_a].to(self.device).float(), prepared[name_b].to(self.device).float()
            b_hat, a_hat = mapping(a, b)
            error = 0.5 * ((b_hat - b).square().sum(1, keepdim=True) + (a_hat - a).square().sum(1, keepdim=True))
            if error.shape[-2:] != finest:
                error = F.interpolate(error, size=finest, mode="bilinear", align_corners=False)
            total = error if total is None else total + error
        assert total is not None
        return (total / len(self.mappings)).flatten(1)


def default_pair(backbone: str) -> str:
    """The offline default second backbone: lite2 (lite0 when A is lite2 itself)."""
    return "lite0" if backbone == "lite2" else "lite2"


def build(config: ModelConfig, extractor: FeatureExtractor) -> MappingScorer:
    """The registry's factory for ``pfm`` and ``pefm``: sized for the pair's features."""
    spec, spec_b = extractor.spec, extractor.spec_b
    if spec_b is None:
        raise ConfigError(
            f"expected two backbones for --method {config.method}, got only {spec.name}; hint: pass --backbone-b (default {default_pair(spec.name)})"
        )
    if (spec.name, extractor.weights_sha256) == (spec_b.name, extractor.weights_b_sha256):
        raise ConfigError(f"expected two different backbones for --method {config.method}, got {spec.name} twice; hint: pick another --backbone-b")
    if len(spec.layers) != len(spec_b.layers):
        raise ConfigError(f"expected backbones with as many taps, got {len(spec.layers)} for {spec.name} and {len(spec_b.layers)} for {spec_b.name}")
    h, w = extractor.input_hw
    grids = tuple(((h + s - 1) // s, (w + s - 1) // s) for s in spec.strides)
    return MappingScorer(
        method=config.method,
        layers=spec.layers,
        layers_b=spec_b.layers,
        channels=spec.channels,
        channels_b=spec_b.channels,
        grids=grids,
        seed=config.seed,
        device=extractor.device,
    )


PFM = ScorerSpec("pfm", build, extractors=2, default_pair=default_pair, exportable=True)
PEFM = ScorerSpec("pefm", build, extractors=2, default_pair=default_pair, exportable=True)
