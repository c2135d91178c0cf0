"""GCAD: local and global branches for structural and logical anomalies.

Bergmann et al. ("Beyond Dents and Scratches", IJCV 2022) pair a pretrained *teacher*'s patch
features with networks trained on normal images only:

- the **local branch** is a student with a small receptive field that regresses the teacher's
  features from the image; where it fails, the patch is unlike any normal patch (structural
  anomalies);
- the **global branch** is an encoder-decoder whose bottleneck is a low-resolution latent code
  (here a single vector), so it can reconstruct the teacher's features only from the image's
  global context, plus a regression network without a bottleneck trained to reproduce the
  encoder-decoder's output; where the two disagree, the image breaks a constraint learned from
  the whole of normal images (logical anomalies: a missing or extra object, a wrong count).

As in EfficientAD (by the same authors, the leaner later design), one student network has twice
the teacher's channels: the first half is the local student, the second half the global branch's
regression network. The teacher here is any streamad backbone (lite0 by default): its three taps,
each L2-normalised over channels per position, resampled to the stride-8 grid and concatenated.
The networks read the normalised image itself (the ``pixels`` input as second "backbone").

Each branch's map (mean squared difference over channels) is one *cue*: the model normalises
each on held-out normal frames (its mean over all positions) and averages them, which is the
paper's normalised sum; ``--branch local|global`` scores one branch alone. Sizes are chosen to
train on a CPU: the student's receptive field is 31 pixels of the input, the autoencoder's latent
vector has 64 dimensions.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamad.config import ModelConfig
from streamad.errors import ConfigError
from streamad.features.extractor import SECOND, FeatureExtractor, Features
from streamad.scorers.registry import ScorerSpec
from streamad.scorers.trained import NetworkScorer, seeded

LR = 1e-3  # small networks trained for few steps on a CPU (see TRAIN_STEPS)
WEIGHT_DECAY = 1e-5
TRAIN_STEPS = 400  # default optimiser steps: the 30-minute CPU budget for 335 images at 256x512
LATENT = 64
WIDTH = 64
GRID_STRIDE = 8
IMAGE = SECOND + "image"
CUES = ("local", "global")


def _convs(widths: list[int], *, kernel: int = 3, stride: int = 1, last_plain: bool = True) -> list[nn.Module]:
    parts: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        parts.append(nn.Conv2d(a, b, kernel, stride, kernel // 2))
        if not (last_plain and i == len(widths) - 2):
            parts.append(nn.ReLU())
    return parts


class Student(nn.Module):
    """Image -> (2C, H/8, W/8): the local student (first C channels) and the global branch's
    regression network (last C), one network with a 31-pixel receptive field."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *_convs([3, 32], stride=2, last_plain=False),
            *_convs([32, 64], stride=2, last_plain=False),
            *_convs([64, 128], stride=2, last_plain=False),
            *_convs([128, 128], last_plain=False),
            nn.Conv2d(128, 2 * channels, 1),
        )

    def forward(self, image: Tensor) -> Tensor:
        return self.body(image)


class GlobalAutoencoder(nn.Module):
    """Image -> latent vector -> (C, H/8, W/8): teacher features from global context only."""

    def __init__(self, channels: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.encoder = nn.Sequential(
            *_convs([3, 32], stride=2, last_plain=False),
            *_convs([32, 32], stride=2, last_plain=False),
            *_convs([32, 64], stride=2, last_plain=False),
            *_convs([64, 64], stride=2, last_plain=False),
            *_convs([64, 64], stride=2, last_plain=False),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, LATENT),
        )
        self.start = (max(1, grid[0] // 8), max(1, grid[1] // 8))
        self.expand = nn.Linear(LATENT, WIDTH * self.start[0] * self.start[1])
        self.stages = nn.ModuleList(nn.Sequential(*_convs([WIDTH, WIDTH], last_plain=False)) for _ in range(3))
        # each stage doubles the grid, the last reaches the teacher's
        self.sizes = [(min(grid[0], self.start[0] * 2**i), min(grid[1], self.start[1] * 2**i)) for i in (1, 2)] + [grid]
        self.head = nn.Conv2d(WIDTH, channels, 3, 1, 1)

    def forward(self, image: Tensor) -> Tensor:
        x = F.relu(self.expand(self.encoder(image))).view(-1, WIDTH, *self.start)
        for size, stage in zip(self.sizes, self.stages, strict=True):
            x = stage(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return self.head(x)


class GcadNet(nn.Module):
    def __init__(self, channels: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.student = Student(channels)
        self.autoencoder = GlobalAutoencoder(channels, grid)


class GcadScorer(NetworkScorer):
    """GCAD on a teacher backbone's taps (``layers``, ``channels``) at ``input_hw``."""

    cues: ClassVar[tuple[str, ...]] = CUES

    def __init__(
        self,
        *,
        layers: tuple[str, ...],
        channels: tuple[int, ...],
        input_hw: tuple[int, int],
        finest: tuple[int, int],
        seed: int = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.layers, self.channels = layers, sum(channels)
        self.grid = ((input_hw[0] + GRID_STRIDE - 1) // GRID_STRIDE, (input_hw[1] + GRID_STRIDE - 1) // GRID_STRIDE)
        self.finest = finest
        net = seeded(seed, lambda: GcadNet(self.channels, self.grid))
        self.gcad = net
        super().__init__(method="gcad", seed=seed, net=net, lr=LR, weight_decay=WEIGHT_DECAY, feature_names=("teacher", IMAGE), device=device)

    def method_attrs(self) -> dict[str, Any]:
        return {"latent": LATENT, "grid_stride": GRID_STRIDE}

    def prepare(self, features: Features) -> Features:
        """The teacher's target (each tap L2-normalised per position, on the stride-8 grid,
        concatenated) and the image the networks read."""
        target = [_resampled(F.normalize(features[name].float(), dim=1), self.grid) for name in self.layers]
        return {"teacher": torch.cat(target, 1), IMAGE: features[IMAGE].float()}

    def _outputs(self, prepared: Features) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        teacher = prepared["teacher"].to(self.device).float()
        image = prepared[IMAGE].to(self.device).float()
        student = self.gcad.student(image)
        return teacher, student[:, : self.channels], student[:, self.channels :], self.gcad.autoencoder(image)

    def loss_of(self, prepared: Features) -> Tensor:
        """Local student vs teacher, autoencoder vs teacher, regression vs autoencoder (whose
        output is its target, not trained through this term)."""
        teacher, local, regression, decoded = self._outputs(prepared)
        return F.mse_loss(local, teacher) + F.mse_loss(decoded, teacher) + F.mse_loss(regression, decoded.detach())

    @torch.inference_mode()
    def distances(self, prepared: Features) -> Tensor:
        """(B, 2, P): the local and global branches' squared differences (mean over channels),
        upsampled to the finest feature grid."""
        self.net.eval()
        teacher, local, regression, decoded = self._outputs(prepared)
        maps = torch.stack([(local - teacher).square().mean(1), (regression - decoded).square().mean(1)], 1)
        if maps.shape[-2:] != self.finest:
            maps = F.interpolate(maps, size=self.finest, mode="bilinear", align_corners=False)
        return maps.flatten(2)


def _resampled(tap: Tensor, grid: tuple[int, int]) -> Tensor:
    """A tap on the grid: averaged over its cells when finer, bilinear when coarser."""
    if tap.shape[-2] >= grid[0] and tap.shape[-1] >= grid[1]:
        return F.adaptive_avg_pool2d(tap, grid)
    return F.interpolate(tap, size=grid, mode="bilinear", align_corners=False)


def default_pair(backbone: str) -> str:
    """GCAD's networks read the image: the ``pixels`` input is its second "backbone"."""
    return "pixels"


def build(config: ModelConfig, extractor: FeatureExtractor) -> GcadScorer:
    """The registry's factory for ``gcad`` (teacher: ``--backbone``)."""
    if extractor.spec_b is None or extractor.spec_b.name != "pixels":
        got = extractor.spec_b.name if extractor.spec_b is not None else "none"
        raise ConfigError(f"expected no --backbone-b for --method gcad (its networks read the image), got {got}")
    if extractor.spec.name == "pixels":
        raise ConfigError("expected a pretrained teacher --backbone for --method gcad, got pixels; hint: leave out --backbone for lite0")
    return GcadScorer(
        layers=extractor.spec.layers,
        channels=extractor.spec.channels,
        input_hw=extractor.input_hw,
        finest=extractor.feature_hw,
        seed=config.seed,
        device=extractor.device,
    )


GCAD = ScorerSpec("gcad", build, extractors=2, default_pair=default_pair, steps=TRAIN_STEPS)
