from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from streamad.errors import WeightsError
from streamad.features.backbones import build_backbone, build_classifier
from streamad.features.preprocess import default_input_hw, normalize_images, to_tensor


class TestLite:
    @pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
    def test_classifies_a_real_cat_photo(self, name: str) -> None:
        """Weights and preprocessing are right: chelsea lands among ImageNet's cats."""
        skimage_data = pytest.importorskip("skimage.data")
        net = build_classifier(name)
        images = to_tensor([skimage_data.chelsea()], (224, 224), device=torch.device("cpu"))
        x = normalize_images(images, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
        with torch.inference_mode():
            top = net(x).softmax(-1)[0].topk(3).indices.tolist()
        cats = {281, 282, 283, 284, 285, 286, 287}  # tabby, tiger cat, Persian, Siamese, Egyptian cat, ...
        assert top[0] in cats, top

    def test_feature_maps(self) -> None:
        features, spec, sha = build_backbone("lite0")
        with torch.inference_mode():
            out = features(torch.randn(1, 3, 64, 96))
        assert [tuple(v.shape[1:]) for v in out.values()] == [(24, 16, 24), (40, 8, 12), (112, 4, 6)]
        assert len(sha) == 64 and spec.total_channels == 176

    @pytest.mark.parametrize(("name", "channels"), [("lite1", (24, 40, 112)), ("lite2", (24, 48, 120))])
    def test_deeper_lites_tap_strides_4_8_16(self, name: str, channels: tuple[int, ...]) -> None:
        features, spec, _ = build_backbone(name)
        with torch.inference_mode():
            out = features(torch.randn(1, 3, 64, 96))
        assert [tuple(v.shape[1:]) for v in out.values()] == [(c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16), strict=True)]
        assert spec.channels == channels


class TestTorchvision:
    def test_missing_weights_is_clear(self) -> None:
        with pytest.raises(WeightsError, match="--weights FILE for backbone resnet18.*never"):
            build_backbone("resnet18")

    def test_nonexistent_file(self, tmp_path: Path) -> None:
        with pytest.raises(WeightsError, match="no such file"):
            build_backbone("resnet18", weights=tmp_path / "nope.pth")

    def test_wrong_state_dict(self, tmp_path: Path) -> None:
        torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "bad.pth")
        with pytest.raises(WeightsError, match="other shapes"):
            build_backbone("resnet18", weights=tmp_path / "bad.pth")

    def test_loads_user_file(self, tmp_path: Path) -> None:
        import torchvision

        torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
        features, spec, _ = build_backbone("resnet18", weights=tmp_path / "r18.pth")
        with torch.inference_mode():
            out = features(torch.randn(1, 3, 64, 64))
        assert [v.shape[1] for v in out.values()] == [64, 128, 256] and spec.total_channels == 448


class TestPreprocess:
    def test_default_input_size(self) -> None:
        assert default_input_hw((240, 360)) == (256, 384)
        assert default_input_hw((1080, 1920)) == (256, 448)

    def test_resize_and_normalise(self) -> None:
        images = to_tensor([np.full((40, 60, 3), 255, np.uint8), np.zeros((10, 10, 3), np.uint8)], (32, 48), device=torch.device("cpu"))
        assert images.shape == (2, 3, 32, 48) and images.dtype == torch.uint8
        x = normalize_images(images, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        torch.testing.assert_close(x[0], torch.ones(3, 32, 48))
        torch.testing.assert_close(x[1], -torch.ones(3, 32, 48))

    def test_normalise_matches_numpy(self) -> None:
        images = torch.randint(0, 256, (2, 3, 16, 24), dtype=torch.uint8)
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        as_float = images.numpy().astype(np.float32) / np.float32(255)
        expected = (as_float - np.array(mean, np.float32)[:, None, None]) / np.array(std, np.float32)[:, None, None]
        np.testing.assert_allclose(normalize_images(images, mean=mean, std=std).numpy(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("input_hw", "rtol"), [((256, 336), 0.0), ((64, 96), 1e-5)])
def test_cpu_micro_batches_give_the_whole_batch(input_hw: tuple[int, int], rtol: float) -> None:
    """The extractor runs a CPU batch a few frames at a time (features.CPU_MICRO_BATCH). At the
    usual input sizes a frame's features do not depend on its batch (bitwise); at small ones
    oneDNN picks other kernels by batch size and they differ by float rounding."""
    from streamad.features import extractor as features
    from streamad.features.extractor import FeatureExtractor

    extractor = FeatureExtractor("lite0", input_hw=input_hw)
    x = torch.randn(2 * features.CPU_MICRO_BATCH + 1, 3, *input_hw)
    with torch.inference_mode():
        whole = dict(extractor.backbone(x))
    parted = extractor(x)
    assert set(whole) == set(parted)
    for name in whole:
        torch.testing.assert_close(parted[name], whole[name], rtol=rtol, atol=rtol * float(whole[name].abs().max()))


@pytest.mark.parametrize("name", ["lite0", "resnet18"])
def test_taps_equal_torchvisions_feature_extractor_bitwise(name: str, tmp_path: Path) -> None:
    """The truncated backbones return exactly what torchvision's create_feature_extractor (FX
    tracing of the whole classifier) returns for the same taps. streamad keeps its own truncated
    modules: tracing costs 1-4 s a backbone build and keeps the unused blocks' weights (lite0:
    2.35 M parameters against 0.70 M), measured on the 2-core machine."""
    import warnings

    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    weights = None
    if name == "resnet18":
        weights = tmp_path / "r18.pth"
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    features, spec, _ = build_backbone(name, weights=weights)
    with warnings.catch_warnings():  # "nodes traced in eval mode are a subsequence of train mode's"
        warnings.simplefilter("ignore", UserWarning)
        reference = create_feature_extractor(build_classifier(name, weights=weights), return_nodes={t: t for t in spec.layers}).eval()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, theirs = features(x), reference(x)
    assert list(ours) == list(spec.layers)
    for tap in spec.layers:
        assert torch.equal(ours[tap], theirs[tap]), tap
