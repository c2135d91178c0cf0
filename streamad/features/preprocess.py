"""Preprocessing: RGB uint8 frames to uint8 tensors at the model's input size (what waits in a
job's queues), then normalised for the backbone (in its worker).

On a CPU, resizing is torch's uint8 bilinear (the fastest there) and normalising is
``(x - mean) / std`` in torch, the same operations as kornia's ``normalize`` (tested bitwise);
kornia resizes on CUDA and is imported only then: its import is about 0.5 s of a command's start.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamad.errors import ConfigError, ShapeError


def default_input_hw(frame_hw: tuple[int, int], *, short_side: int = 256, long_side: int = 1024, multiple: int = 16) -> tuple[int, int]:
    """Input size that keeps a frame's aspect ratio with the short side near ``short_side``, and
    the long side at most ``long_side`` (a strip-shaped image keeps a bounded size).

    Example:
        >>> default_input_hw((240, 360))
        (256, 384)
        >>> default_input_hw((576, 768))
        (256, 336)
        >>> default_input_hw((1, 2000))
        (32, 1024)
    """
    height, width = frame_hw
    scale = min(short_side / min(height, width), long_side / max(height, width))

    def snap(value: float) -> int:
        return max(2 * multiple, int(round(value / multiple)) * multiple)

    return snap(height * scale), snap(width * scale)


def to_tensor(images: Sequence[np.ndarray], input_hw: tuple[int, int], *, device: torch.device) -> Tensor:
    """Resize uint8 RGB frames to ``input_hw`` (still uint8, antialiased) and stack them.

    Args:
        images: arrays of shape (H, W, 3), sizes may differ.
        input_hw: output (height, width).

    Returns:
        uint8 tensor of shape (B, 3, height, width) on ``device``.
    """
    out = []
    for image in images:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ShapeError(f"expected a uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device, non_blocking=True)
        tensor = tensor.permute(2, 0, 1).unsqueeze(0)
        if tuple(tensor.shape[-2:]) != tuple(input_hw):
            antialias = tensor.shape[-2] > input_hw[0] or tensor.shape[-1] > input_hw[1]
            if device.type == "cpu":  # uint8 bilinear is fastest on CPU
                tensor = F.interpolate(tensor, size=input_hw, mode="bilinear", antialias=antialias)
            else:
                import kornia

                resized = kornia.geometry.transform.resize(tensor.float(), input_hw, antialias=antialias)
                tensor = resized.round().clamp(0, 255).to(torch.uint8)
        out.append(tensor)
    return torch.cat(out)


def normalize_images(images: Tensor, *, mean: tuple[float, float, float], std: tuple[float, float, float]) -> Tensor:
    """uint8 (B, 3, H, W) in [0, 255] to float, normalised with the backbone's mean and std
    (kornia's ``normalize``)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ShapeError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    import kornia  # here, not at the top: a scoring job that never preprocesses does not load it

    x = images.float().div_(255.0)
    return kornia.enhance.normalize(x, torch.tensor(mean, device=x.device, dtype=x.dtype), torch.tensor(std, device=x.device, dtype=x.dtype))


class Preprocessor(nn.Module):
    """Resize frames to the model's input size and normalise them for its backbone."""

    def __init__(
        self,
        input_hw: tuple[int, int],
        *,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
    ) -> None:
        super().__init__()
        if min(input_hw) < 32:
            raise ConfigError(f"expected an input size of at least 32x32, got {input_hw}")
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.mean, self.std = mean, std

    def forward(self, images: Sequence[np.ndarray], device: torch.device) -> Tensor:
        """Frames at the input size, uint8 (B, 3, H', W') on ``device``: what waits in a job's
        queues, a quarter of the normalised float images (:meth:`normalise` follows in the
        backbone's worker)."""
        return to_tensor(images, self.input_hw, device=device)

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 images to the backbone's normalised float input."""
        return normalize_images(images, mean=self.mean, std=self.std)

    def resize(self, image: np.ndarray, device: torch.device) -> np.ndarray:
        """One frame at the input size, RGB uint8 (H', W', 3), on the host: what :meth:`forward`
        makes of it (and a frame already at size it leaves as it is)."""
        return to_tensor([image], self.input_hw, device=device)[0].permute(1, 2, 0).cpu().numpy()
