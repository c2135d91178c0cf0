"""Continuing a fit: the stored model, after checking that what the user gave agrees with what
the store records (how its frames were read, its model's settings); left out, the store's own."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from streamad.config import AUTO, ModelConfig
from streamad.errors import ConfigError, StoreError
from streamad.model import Model
from streamad.scorers.registry import resolve
from streamad.stores.array_store import ArrayStore
from streamad.stores.model_store import config_from_attrs, load


def resumed_model(store: ArrayStore, config: ModelConfig | None, reading: dict[str, int | None], *, where: str, device: str) -> Model:
    """The stored model to continue, after checking the options agree with it: ``reading`` (how
    the fit reads and trains: ``every``, ``holdout_every``, ``epochs``, None where left out) and
    the model's settings in ``config`` (None: all the store's)."""
    attrs = store.attrs()
    stored = config_from_attrs(attrs, weights=config.weights if config else None, where=where)
    if attrs.get("frames_seen"):  # which frames were fitted and which held out must not change
        for option, given in reading.items():
            recorded = attrs.get(option, 1 if option == "every" else None)  # stores before holdout_every was recorded: unknown
            if recorded is not None and given is not None and recorded != given:
                flag = "--" + option.replace("_", "-")
                raise ConfigError(f"expected {flag} {recorded}, as {where} was fitted with, got {given}; hint: pass {flag} {recorded}")
    if config is not None:
        auto = {name: getattr(stored, name) for name in ("method", "motion") if getattr(config, name) == AUTO}  # the store's own
        config = replace(config, **auto)
        left_out: dict[str, Any] = {"input_hw": config.input_hw or stored.input_hw, "motion_lag_s": config.motion_lag_s or stored.motion_lag_s}
        left_out |= {"bank_size": config.bank_size or stored.bank_size, "patch_stride": config.patch_stride or stored.patch_stride}  # the store's
        config = resolve(replace(config, **left_out))
        check_same(config, stored, where, set(attrs.get("scorer") or {}))
    return load(store, where=where, device=device, weights=stored.weights, fitted=False)


ALWAYS_RECORDED = ("method", "backbone", "input_hw", "sigma", "motion", "backbone_b", "weights_b")


def check_same(config: ModelConfig, stored: ModelConfig, where: str, recorded: set[str]) -> None:
    """The given settings against the store's, for those it records (the model's own and its
    scorer's: ``-k`` means nothing to a memory bank, which does not record it)."""
    for name in (f.name for f in fields(ModelConfig) if f.name in ALWAYS_RECORDED or f.name in recorded):
        if getattr(config, name) != getattr(stored, name):
            raise StoreError(
                f"expected a store fitted with {name}={getattr(config, name)!r}, got {name}={getattr(stored, name)!r} in {where}; "
                "hint: leave the option out to continue with the store's, or fit a new store"
            )
