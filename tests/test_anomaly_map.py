from __future__ import annotations

import kornia
import pytest
import torch
import torch.nn.functional as F

from streamad.maps import AnomalyMap, axis_operators


def anomaly_map(distances: torch.Tensor, *, feature_hw: tuple[int, int], out_hw: tuple[int, int], sigma: float) -> torch.Tensor:
    """The reference: upsample the grid (torch), then blur it (kornia, reflected borders)."""
    up = F.interpolate(distances.reshape(-1, 1, *feature_hw), size=out_hw, mode="bilinear", align_corners=False)
    if sigma > 0:
        radius = int(4 * sigma + 0.5)
        up = kornia.filters.gaussian_blur2d(up, (2 * radius + 1, 2 * radius + 1), (sigma, sigma), border_type="reflect")
    return up[:, 0]


@pytest.mark.parametrize(
    ("feature_hw", "out_hw", "sigma"), [((64, 84), (256, 336), 4.0), ((7, 5), (28, 20), 2.0), ((8, 12), (32, 48), 0.0), ((3, 3), (48, 48), 4.0)]
)
def test_matrix_form_equals_upsample_then_blur(feature_hw: tuple[int, int], out_hw: tuple[int, int], sigma: float) -> None:
    torch.manual_seed(0)
    distances = torch.rand(3, feature_hw[0] * feature_hw[1], dtype=torch.float64) * 5
    reference = anomaly_map(distances, feature_hw=feature_hw, out_hw=out_hw, sigma=sigma)
    module = AnomalyMap(feature_hw=feature_hw, out_hw=out_hw, sigma=sigma)
    assert torch.allclose(module(distances.float()).double(), reference, rtol=1e-5, atol=1e-5)


def test_axis_operators_preserve_constants() -> None:
    a_h, a_w = axis_operators(feature_hw=(6, 9), out_hw=(24, 36), sigma=4.0)
    assert a_h.shape == (24, 6) and a_w.shape == (36, 9)
    assert torch.allclose(a_h.sum(1), torch.ones(24, dtype=a_h.dtype))
    assert torch.allclose(a_w.sum(1), torch.ones(36, dtype=a_w.dtype))
