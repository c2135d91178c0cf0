"""The scorer registry: ``--method`` names to scorer factories.

Built in: ``padim`` and ``soe`` (:class:`~streamad.scorers.gaussian.GaussianScorer`), ``pfm``
and ``pefm`` (:class:`~streamad.scorers.mapping.MappingScorer`, on a pair of backbones),
``ae-l2`` and ``ae-ssim`` (:class:`~streamad.scorers.autoencoder.AutoencoderScorer`, on the
pixels), ``gcad`` (:class:`~streamad.scorers.gcad.GcadScorer`, a teacher backbone and the pixels). Another
method plugs in with :func:`register_scorer` and then runs in every job (fit, score, eval,
calibrate, watch; merge when it is mergeable) without touching them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from streamad.errors import ConfigError

if TYPE_CHECKING:
    from streamad.config import ModelConfig
    from streamad.features import FeatureExtractor
    from streamad.scorers.base import Scorer

ScorerFactory = Callable[["ModelConfig", "FeatureExtractor"], "Scorer"]

_BUILTIN = {
    "padim": "streamad.scorers.gaussian:build",
    "soe": "streamad.scorers.gaussian:build",
    "pfm": "streamad.scorers.mapping:build",
    "pefm": "streamad.scorers.mapping:build",
    "ae-l2": "streamad.scorers.autoencoder:build",
    "ae-ssim": "streamad.scorers.autoencoder:build",
    "gcad": "streamad.scorers.gcad:build",
}
_REGISTERED: dict[str, ScorerFactory] = {}


def register_scorer(name: str, factory: ScorerFactory, *, replace: bool = False) -> None:
    """Make ``factory(config, extractor)`` the scorer of ``--method name``.

    Raises:
        ConfigError: the name is taken (pass ``replace=True`` to re-register your own).
    """
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"expected a method name of letters, digits, '-' and '_', got {name!r}")
    if not replace and (name in _BUILTIN or name in _REGISTERED):
        raise ConfigError(f"expected a new method name, got {name!r}, which is registered already; hint: pass replace=True")
    _REGISTERED[name] = factory


def unregister_scorer(name: str) -> None:
    """Remove a scorer added with :func:`register_scorer` (built-in ones stay)."""
    _REGISTERED.pop(name, None)


def scorer_names() -> list[str]:
    """Every method name that :func:`build_scorer` accepts."""
    return sorted({*_BUILTIN, *_REGISTERED})


def scorer_factory(name: str) -> ScorerFactory:
    """The factory of a method, or a :class:`ConfigError` listing the choices."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        module, _, attr = _BUILTIN[name].partition(":")
        factory: ScorerFactory = getattr(importlib.import_module(module), attr)
        return factory
    raise ConfigError(f"expected --method in {scorer_names()}, got {name!r}")


def resolve(config: ModelConfig) -> ModelConfig:
    """The config with the method's defaults filled in: the second backbone of a method that
    reads two (a factory's ``extractors = 2`` and ``default_pair``), none for the others; the
    input of a method that reads no backbone (a factory's ``backbone`` and ``input_hw``)."""
    factory = scorer_factory(config.method)
    fixed = getattr(factory, "backbone", None)
    if fixed is not None:
        from streamad.config import ModelConfig

        if config.backbone not in (fixed, ModelConfig().backbone):
            raise ConfigError(f"expected no --backbone for --method {config.method} (it reads the {fixed} input), got {config.backbone}")
        if config.motion != "off":
            raise ConfigError(f"expected --motion off for --method {config.method}, got {config.motion!r}; hint: motion cues are for padim and soe")
        config = dataclasses.replace(config, backbone=fixed, input_hw=config.input_hw or getattr(factory, "input_hw", None))
    if getattr(factory, "extractors", 1) == 2:
        if config.motion != "off":
            raise ConfigError(f"expected --motion off for --method {config.method}, got {config.motion!r}; hint: motion cues are for padim and soe")
        if config.backbone_b is None:
            module = importlib.import_module(factory.__module__)
            return dataclasses.replace(config, backbone_b=module.default_pair(config.backbone))
        return config
    if config.backbone_b is not None:
        raise ConfigError(f"expected no second backbone for --method {config.method}, got --backbone-b {config.backbone_b}; hint: it is for pfm and pefm")
    return config


def build_scorer(config: ModelConfig, extractor: FeatureExtractor) -> Scorer:
    """A new, unfitted scorer for ``config.method`` on ``extractor``'s features."""
    return scorer_factory(config.method)(config, extractor)
