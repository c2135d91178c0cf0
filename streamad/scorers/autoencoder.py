"""The MVTec AD paper's autoencoder baselines: ``ae-l2`` and ``ae-ssim``.

Bergmann et al. (CVPR 2019) evaluate a convolutional autoencoder on MVTec AD with two residual
maps: the per-pixel squared error (L2) and one minus the structural similarity (SSIM) of an
image and its reconstruction. The architecture is the SSIM autoencoder's (Bergmann et al.,
VISAPP 2019): 128x128 input, nine convolutions down to a latent vector of d = 100 (kernels 4x4
stride 2 and 3x3 stride 1, then one convolution over the remaining 8x8 grid), the decoder its
mirror with transposed convolutions, leaky ReLU (slope 0.2) after every layer but the last.
Training minimises the same measure the map uses (MSE, or 1 - mean SSIM with an 11x11 Gaussian
window, sigma 1.5), with Adam (lr 2e-4, weight decay 1e-5) as in the papers.

Differences from the paper, for a streaming tool: the whole frame is resized to the input size
(default 128x128; any multiple of 16, the last encoder layer then spans the input / 16 grid)
instead of training on random patches of textures, there is no augmentation, and the output
passes a sigmoid (images are in [0, 1]). The scorer reads the ``pixels`` input (no backbone).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamad.config import ModelConfig
from streamad.errors import ConfigError
from streamad.features.extractor import FeatureExtractor, Features
from streamad.scorers.registry import ScorerSpec
from streamad.scorers.trained import NetworkScorer, seeded

LR = 2e-4
WEIGHT_DECAY = 1e-5
LATENT = 100
SLOPE = 0.2
INPUT_HW = (128, 128)
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
C1, C2 = 0.01**2, 0.03**2  # SSIM's stabilisers for images in [0, 1]


def _stack(layers: list[nn.Module]) -> nn.Sequential:
    """The layers with a leaky ReLU after each but the last."""
    parts: list[nn.Module] = []
    for i, layer in enumerate(layers):
        parts.append(layer)
        if i < len(layers) - 1:
            parts.append(nn.LeakyReLU(SLOPE))
    return nn.Sequential(*parts)


class ConvAutoencoder(nn.Module):
    """The SSIM autoencoder's architecture for an (H, W) input, H and W multiples of 16."""

    def __init__(self, hw: tuple[int, int], *, channels: int = 3, latent: int = LATENT) -> None:
        super().__init__()
        grid = (hw[0] // 16, hw[1] // 16)
        self.encoder = _stack(
            [
                nn.Conv2d(channels, 32, 4, 2, 1),
                nn.Conv2d(32, 32, 4, 2, 1),
                nn.Conv2d(32, 32, 3, 1, 1),
                nn.Conv2d(32, 64, 4, 2, 1),
                nn.Conv2d(64, 64, 3, 1, 1),
                nn.Conv2d(64, 128, 4, 2, 1),
                nn.Conv2d(128, 64, 3, 1, 1),
                nn.Conv2d(64, 32, 3, 1, 1),
                nn.Conv2d(32, latent, grid, 1, 0),
            ]
        )
        self.decoder = _stack(
            [
                nn.ConvTranspose2d(latent, 32, grid, 1, 0),
                nn.Conv2d(32, 64, 3, 1, 1),
                nn.Conv2d(64, 128, 3, 1, 1),
                nn.ConvTranspose2d(128, 64, 4, 2, 1),
                nn.Conv2d(64, 64, 3, 1, 1),
                nn.ConvTranspose2d(64, 32, 4, 2, 1),
                nn.Conv2d(32, 32, 3, 1, 1),
                nn.ConvTranspose2d(32, 32, 4, 2, 1),
                nn.ConvTranspose2d(32, channels, 4, 2, 1),
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(self.encoder(x)))  # a linear latent vector


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(x: Tensor, y: Tensor, *, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> Tensor:
    """Per-pixel, per-channel SSIM of images in [0, 1] (B, C, H, W), with a Gaussian window
    (Wang et al. 2004) and reflected borders."""
    channels = x.shape[1]
    kernel = _gaussian_window(window, sigma, channels, x.device)
    pad = window // 2

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="reflect"), kernel, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + C1) * (2 * cov + C2)) / ((mu_x**2 + mu_y**2 + C1) * (var_x + var_y + C2))


class AutoencoderScorer(NetworkScorer):
    """``ae-l2`` / ``ae-ssim``: reconstruction residuals of a convolutional autoencoder.

    Args:
        method: ``ae-l2`` or ``ae-ssim``.
        input_hw: the model's input size (multiples of 16).
    """

    def __init__(self, *, method: str, input_hw: tuple[int, int], seed: int = 0, device: torch.device | str = "cpu") -> None:
        self.residual = method.removeprefix("ae-")
        self.input_hw = input_hw
        net = seeded(seed, lambda: ConvAutoencoder(input_hw))
        super().__init__(method=method, seed=seed, net=net, lr=LR, weight_decay=WEIGHT_DECAY, feature_names=("image",), device=device)

    def method_attrs(self) -> dict[str, Any]:
        return {"latent": LATENT}

    def _residual(self, x: Tensor) -> Tensor:
        """(B, H, W): the L2 (summed over channels) or 1 - SSIM (mean over channels) residual."""
        recon = self.net(x)
        if self.residual == "l2":
            return (recon - x).square().sum(1)
        return 1 - ssim_map(recon, x).mean(1)

    def loss_of(self, prepared: Features) -> Tensor:
        return self._residual(prepared["image"].to(self.device).float()).mean()

    @torch.inference_mode()
    def distances(self, prepared: Features) -> Tensor:
        """(B, H*W): the residual of each input pixel."""
        self.net.eval()
        return self._residual(prepared["image"].to(self.device).float()).flatten(1)

    def reconstruct(self, images: Tensor) -> Tensor:
        """The reconstructions of images in [0, 1] (B, 3, H, W)."""
        with torch.inference_mode():
            self.net.eval()
            return self.net(images.to(self.device).float())


def build(config: ModelConfig, extractor: FeatureExtractor) -> AutoencoderScorer:
    """The registry's factory for ``ae-l2`` and ``ae-ssim`` (on the ``pixels`` input)."""
    if extractor.spec.name != "pixels":
        raise ConfigError(f"expected the pixels input for --method {config.method}, got backbone {extractor.spec.name}; hint: leave out --backbone")
    h, w = extractor.input_hw
    if h % 16 or w % 16:
        raise ConfigError(f"expected an input size in multiples of 16 for --method {config.method}, got {h}x{w}")
    return AutoencoderScorer(method=config.method, input_hw=(h, w), seed=config.seed, device=extractor.device)


AE_L2 = ScorerSpec("ae-l2", build, fixed_input="pixels", input_hw=INPUT_HW)  # the paper's input size, unless one is given
AE_SSIM = ScorerSpec("ae-ssim", build, fixed_input="pixels", input_hw=INPUT_HW)
