"""``streamad merge``: combine partial fits of the same model exactly (Chan's pairwise merge)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.common import Progress, no_progress
from pipelines.fit import calibrate
from streamad import stages
from streamad.errors import ConfigError, StoreError
from streamad.model_store import (
    FitState,
    base_attrs,
    check_compatible,
    load_model,
    open_store,
    read_state,
    write_checkpoint,
    write_factors,
)
from streamad.sources import resolve_sources


@dataclass(frozen=True, slots=True)
class MergeSummary:
    output: str
    inputs: int
    frames_seen: int
    calibrated_on: int


def merge(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    overwrite: bool = False,
    calibrate_on: Sequence[str] = (),
    device: str = "cpu",
    batch_size: int = 8,
    progress: Progress = no_progress,
) -> MergeSummary:
    """Merge the statistics of ``inputs`` into a new store ``output``.

    The factors are rebuilt from the merged statistics. Calibration (per-position distance
    statistics) depends on those factors, so it is measured again on ``calibrate_on`` sources
    when given; otherwise the merged store scores only with ``--raw`` frame scores.
    """
    if len(inputs) < 2:
        raise ConfigError(f"expected at least two stores to merge, got {len(inputs)}")
    out = Path(output)
    if (out / "zarr.json").exists() and not overwrite:
        raise StoreError(f"expected a new output path, got an existing store {out}; hint: pass --overwrite")
    first = open_store(inputs[0], mode="r")
    model, _ = load_model(first, where=str(inputs[0]), device=device, need_factors=False)
    state = read_state(first)
    for path in inputs[1:]:
        store = open_store(path, mode="r")
        attrs = store.attrs()
        check_compatible(attrs, model.config, model.weights_sha256, str(path))
        other, _ = load_model(store, where=str(path), device=device, need_factors=False)
        model.gaussian.merge(other.gaussian)
        part = read_state(store)
        for sid, n in part.next_index.items():
            key = sid if sid not in state.next_index else f"{sid}@{Path(path).name}"
            state.next_index[key] = n
        state.frames_seen += part.frames_seen
    target = open_store(out, mode="w")
    target.set_attrs(base_attrs(model) | {"merged_from": [str(Path(p)) for p in inputs]})
    write_checkpoint(target, model, FitState(state.next_index, state.frames_seen))
    model.finalise()
    calibration = None
    if calibrate_on:
        calibration = calibrate(model, resolve_sources(calibrate_on), every=1, frame_config=stages.FrameScoreConfig(), batch_size=batch_size, progress=progress)
    write_factors(target, model, calibration)
    return MergeSummary(str(out), len(inputs), state.frames_seen, calibration.frames if calibration else 0)


__all__ = ["merge"]
