from __future__ import annotations

import pytest
import torch

from streamad.errors import ConfigError, ShapeError
from streamad.scorers.projection import Projection, make_projection, project, random_channel_subset, semi_orthogonal


class TestSemiOrthogonal:
    @pytest.mark.parametrize(("channels", "k"), [(176, 100), (448, 100), (64, 64), (10, 1)])
    def test_columns_orthonormal(self, channels: int, k: int) -> None:
        w = semi_orthogonal(channels, k, seed=3)
        assert w.shape == (channels, k)
        torch.testing.assert_close(w.double().T @ w.double(), torch.eye(k, dtype=torch.float64), atol=1e-6, rtol=0)

    def test_seeded(self) -> None:
        assert torch.equal(semi_orthogonal(50, 10, seed=1), semi_orthogonal(50, 10, seed=1))
        assert not torch.equal(semi_orthogonal(50, 10, seed=1), semi_orthogonal(50, 10, seed=2))

    def test_k_too_large(self) -> None:
        with pytest.raises(ConfigError, match="k <= 10"):
            semi_orthogonal(10, 11, seed=0)


class TestChannelSubset:
    def test_distinct_sorted_seeded(self) -> None:
        idx = random_channel_subset(176, 100, seed=0)
        assert idx.dtype == torch.int64 and len(set(idx.tolist())) == 100
        assert torch.equal(idx, idx.sort().values)
        assert torch.equal(idx, random_channel_subset(176, 100, seed=0))


class TestProject:
    def test_subset_selects_channels(self) -> None:
        x = torch.randn(2, 6, 3, 4)
        idx = torch.tensor([1, 4])
        out = project(x, idx)
        assert out.shape == (2, 12, 2)
        torch.testing.assert_close(out, x[:, [1, 4]].flatten(2).transpose(1, 2))

    def test_matrix_matches_einsum(self) -> None:
        x = torch.randn(2, 6, 3, 4)
        w = semi_orthogonal(6, 3, seed=0)
        torch.testing.assert_close(project(x, w), torch.einsum("bchw,ck->bhwk", x, w).reshape(2, 12, 3))

    def test_module_equals_function(self) -> None:
        x = torch.randn(1, 6, 2, 2)
        w = make_projection("soe", 6, 3, seed=0)
        torch.testing.assert_close(Projection(w)(x), project(x, w))

    def test_bad_shapes(self) -> None:
        with pytest.raises(ShapeError):
            project(torch.randn(6, 3, 4), torch.tensor([0]))
        with pytest.raises(ShapeError):
            project(torch.randn(1, 6, 3, 4), torch.randn(5, 2))

    def test_unknown_method(self) -> None:
        with pytest.raises(ConfigError, match="padim"):
            make_projection("pca", 6, 3, seed=0)


class TestProjectLayers:
    @pytest.mark.parametrize("method", ["padim", "soe"])
    def test_equals_concatenate_then_project(self, method: str) -> None:
        from streamad.scorers.projection import project_layers

        def concat_features(features: dict[str, torch.Tensor], layers: tuple[str, ...]) -> torch.Tensor:
            """The reference: every map upsampled (nearest) to the finest, then concatenated."""
            size = features[layers[0]].shape[-2:]
            return torch.cat([torch.nn.functional.interpolate(features[n], size=size, mode="nearest") for n in layers], dim=1)

        features = {"a": torch.randn(2, 5, 8, 12), "b": torch.randn(2, 7, 4, 6), "c": torch.randn(2, 9, 2, 3)}
        layers = ("a", "b", "c")
        projection = make_projection(method, 21, 10, seed=4)
        expected = project(concat_features(features, layers), projection)
        got = project_layers(features, layers, projection)
        assert got.shape == (2, 96, 10) and got.is_contiguous()
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("shapes", [((5, 8, 12), (7, 4, 6), (9, 2, 3)), ((6, 9, 13), (4, 4, 5), (3, 3, 2)), ((6, 37, 50), (4, 19, 25), (5, 10, 13))])
    def test_a_channel_subset_is_the_values_upsampling_then_selecting_gives(self, shapes: tuple[tuple[int, int, int], ...]) -> None:
        """PaDiM's subset is one gather (streamad.scorers.projection.subset_index): bit for bit
        what PyTorch's nearest upsampling, concatenation and index_select give, also where a
        map's size does not divide the finest one's."""
        from streamad.scorers.projection import project_layers

        generator = torch.Generator().manual_seed(3)
        features = {str(i): torch.randn(3, *shape, generator=generator) for i, shape in enumerate(shapes)}
        size = shapes[0][1:]
        concatenated = torch.cat([torch.nn.functional.interpolate(f, size=size, mode="nearest") for f in features.values()], dim=1)
        channels = concatenated.shape[1]
        for seed in range(3):
            projection = make_projection("padim", channels, channels // 2, seed=seed)
            expected = concatenated.index_select(1, projection).flatten(2).transpose(1, 2)
            assert torch.equal(project_layers(features, tuple(features), projection), expected)
