"""``streamad merge``: combine partial fits of the same model exactly (mergeable scorers only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamad.engine.assembly import Reading
from streamad.engine.normalising import normalise_on
from streamad.engine.progress import Progress, no_progress
from streamad.engine.runtime import pick_device
from streamad.errors import ConfigError, StoreError
from streamad.io.outputs import check_outputs
from streamad.io.sources import resolve_sources
from streamad.model import Model
from streamad.stores.fit_progress import FitProgress, read_progress
from streamad.stores.model_store import check_compatible, commit, create, load, open_store


@dataclass(frozen=True, slots=True)
class MergeSummary:
    output: str
    inputs: int
    frames_seen: int
    calibrated_on: int

    def lines(self) -> list[str]:
        note = f"normalised on {self.calibrated_on} frames" if self.calibrated_on else "not normalised: score it with --raw, or pass --calibrate-on SOURCE"
        return [f"merged {self.inputs} stores into {self.output}: {self.frames_seen} frames; {note}"]


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
    """Merge the partial fits in ``inputs`` into a new store ``output``.

    The scorer is finalised again from the merged state. The normalisation depends on it, so it
    is measured again on ``calibrate_on`` sources when given; otherwise the merged store scores
    only with ``--raw`` frame scores.
    """
    if len(inputs) < 2:
        raise ConfigError(f"expected at least two stores to merge, got {len(inputs)}")
    out = Path(output)
    if (out / "zarr.json").exists() and not overwrite:
        raise StoreError(f"expected a new output path, got an existing store {out}; hint: pass --overwrite")
    check_outputs({"the merged store": out}, inputs)
    _check_distinct(inputs)
    model, state, parts = _merged(inputs, str(pick_device(device)))
    target = open_store(out, mode="w")
    try:
        create(target, model, merged_from=[str(Path(p)) for p in inputs], parts=parts)
        commit(target, model, state)
        model.finalise()
        normalisation = None
        if calibrate_on:
            normalisation = normalise_on(model, resolve_sources(calibrate_on), Reading(), batch_size=batch_size, progress=progress)
        commit(target, model, state, normalisation=normalisation)
    finally:
        target.close()
    return MergeSummary(str(out), len(inputs), state.frames_seen, normalisation.frames if normalisation else 0)


def _parts(attrs: dict[str, Any], path: str | Path) -> list[str]:
    """The fits a store's statistics came from: its own id, or its inputs' ids once merged."""
    return list(attrs.get("parts") or [attrs.get("fit_id") or str(Path(path).resolve())])


def _merged(inputs: Sequence[str | Path], device: str) -> tuple[Model, FitProgress, list[str]]:
    """The inputs' states merged into the first's model, their progress, and the fit ids merged."""
    with open_store(inputs[0], mode="r") as first:
        model = load(first, where=str(inputs[0]), device=device, fitted=False)
        if not model.mergeable:
            method = model.config.method
            raise ConfigError(f"expected stores of a mergeable method, got {method!r} in {inputs[0]}, which cannot merge; hint: fit one store on all sources")
        state, parts = read_progress(first), set(_parts(first.attrs(), inputs[0]))
    origin = dict.fromkeys(state.next_index, inputs[0])  # the input each merged source entry came from
    for path in inputs[1:]:
        with open_store(path, mode="r") as store:
            check_compatible(store.attrs(), model, str(path), hint="merge only stores fitted with the same settings")
            model.merge(load(store, where=str(path), device=device, extractor=model.extractor, fitted=False))
            part = read_progress(store)
            parts |= set(_parts(store.attrs(), path))
        _check_disjoint(state, part, origin, path)
        for sid, n in part.next_index.items():
            name = sid if sid not in state.next_index else f"{sid}@{Path(path).name}"  # another source of that name, or other frames of it
            state.next_index[name], origin[name] = n, path
            if sid in part.start:
                state.start[name] = part.start[sid]
            if sid in part.identity:
                state.identity[name] = part.identity[sid]
        state.frames_seen += part.frames_seen
    return model, state, sorted(parts)


def _check_disjoint(merged: FitProgress, part: FitProgress, origin: dict[str, str | Path], path: str | Path) -> None:
    """Refuse a part that fitted frames of a source that an earlier input fitted too (the
    statistics would count them twice, and which frames they were cannot be taken out again)."""
    for sid in part.next_index:
        theirs = part.range_of(sid)
        if theirs is None:
            continue
        source, first, end = theirs
        for name in merged.next_index:
            ours = merged.range_of(name)
            if ours is not None and ours[0] == source and max(first, ours[1]) < min(end, ours[2]):
                raise ConfigError(
                    f"expected disjoint frames of each source to merge, got frames {max(first, ours[1])}-{min(end, ours[2]) - 1} of {sid} "
                    f"fitted in both {origin[name]} and {path}; hint: they would count twice: fit each part on its own frames (--start/--stop)"
                )


def _check_distinct(inputs: Sequence[str | Path]) -> None:
    """Refuse a store given twice, under any spelling, a copy of one, or a merge holding one."""
    seen: dict[str, str | Path] = {}
    for path in inputs:
        resolved = str(Path(path).resolve())
        for part in {resolved, *_parts(open_store(path, mode="r").attrs(), path)}:
            if part in seen:
                raise ConfigError(
                    f"expected distinct fits to merge, got {path} and {seen[part]}, which hold the same fit; "
                    "hint: its frames would count twice: give each fit once"
                )
            seen[part] = path
