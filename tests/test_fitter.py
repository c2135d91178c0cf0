"""The one Fitter, against a plain loop that applies its rules frame by frame: which frames are
fitted, which held out and kept, what the tracker sees, where each source stands, and when a
checkpoint is due, whatever the batches' sizes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from streamad.engine.fitter import Fitter, checkpoints
from streamad.frames import FeatureBatch, FrameRef
from streamad.holdout import HoldOut
from streamad.stores.fit_progress import FitProgress


class RecordingModel:
    """Stands in for a model: records every update's rows and, with a tracker, every frame the
    tracker saw (the tracker adds a feature, as motion does)."""

    def __init__(self, *, temporal: bool) -> None:
        self.updates: list[list[float]] = []
        self.tracked: list[tuple[str, int]] = []
        self.temporal = temporal

    def tracker(self):  # noqa: ANN201 - the duck of Model.tracker
        if not self.temporal:
            return None

        def track(batch: FeatureBatch) -> FeatureBatch:
            self.tracked += [(r.source_id, r.index) for r in batch.refs]
            return FeatureBatch(batch.refs, {**batch.features, "motion": batch.features["x"] + 0.5}, batch.originals)

        return track

    def update(self, features: dict[str, torch.Tensor]) -> None:
        self.updates.append(features["x"].tolist())


def frames(source: str, count: int, start: int = 0) -> list[tuple[str, int]]:
    return [(source, i) for i in range(start, start + count)]


def batches(items: list[tuple[str, int]], size: int) -> Iterator[FeatureBatch]:
    for at in range(0, len(items), size):
        part = items[at : at + size]
        refs = tuple(FrameRef(sid, i, i / 10) for sid, i in part)
        yield FeatureBatch(refs, {"x": torch.tensor([float(i) for _, i in part])})


def reference(items: list[tuple[str, int]], holdout: HoldOut, primed: dict[str, int]) -> tuple[list[float], list[int], dict[str, int]]:
    """Frame by frame: fitted values, held-out indices, next index per source."""
    fitted, held, next_index = [], [], {}
    for sid, i in items:
        if i < primed.get(sid, 0):
            continue
        if holdout.fitted(i):
            fitted.append(float(i))
            next_index[sid] = i + 1
        else:
            held.append(i)
    return fitted, held, next_index


@pytest.mark.parametrize("size", [1, 4, 7, 64])
@pytest.mark.parametrize("temporal", [False, True])
def test_fits_holds_out_and_records_as_the_rules_say(size: int, temporal: bool) -> None:
    items = frames("a", 45) + frames("b", 23)
    holdout, primed = HoldOut(every_nth=5, stride=1), {"a": 6}
    model = RecordingModel(temporal=temporal)
    position = FitProgress()
    fitter = Fitter(model, position, holdout=holdout, primed=primed, keep_held_out=3)  # type: ignore[arg-type]
    for batch in batches(items, size):
        fitter.add(batch)
    fitted, held, next_index = reference(items, holdout, primed)
    assert [v for update in model.updates for v in update] == fitted
    assert position.next_index == next_index and position.frames_seen == fitter.added == len(fitted)
    assert [ref.index for ref, _ in fitter.held_out] == held[:3]
    assert all(f["x"].shape == (1,) for _, f in fitter.held_out)
    if temporal:  # every frame read primes the tracker, fitted or not, and kept features carry it
        assert model.tracked == items
        assert all("motion" in f for _, f in fitter.held_out)


@pytest.mark.parametrize("size", [1, 3, 10])
def test_checkpoints_are_due_every_n_fitted_frames(size: int) -> None:
    items = frames("a", 50)
    holdout = HoldOut(every_nth=10, stride=1)
    fitter = Fitter(RecordingModel(temporal=False), FitProgress(), holdout=holdout, checkpoint_every=8)  # type: ignore[arg-type]
    due = [position.frames_seen for position in checkpoints(fitter, batches(items, size))]
    # a plain count: a checkpoint when at least 8 fitted frames came since the last one, at batch ends
    expected, since, seen = [], 0, 0
    for batch in batches(items, size):
        n = sum(1 for ref in batch.refs if holdout.fitted(ref.index))
        seen, since = seen + n, since + n
        if n and since >= 8:
            expected.append(seen)
            since = 0
    assert due == expected and len(due) >= 5


def test_no_checkpoint_without_a_sink_and_adapt_fits_everything() -> None:
    fitter = Fitter(RecordingModel(temporal=False), FitProgress(), holdout=HoldOut())  # type: ignore[arg-type]
    assert list(checkpoints(fitter, batches(frames("a", 40), 4))) == []  # a Ray shard never checkpoints
    model = RecordingModel(temporal=True)
    position = FitProgress(next_index={"cam": 3}, frames_seen=3)
    adapter = Fitter(model, position, holdout=HoldOut(), checkpoint_every=5)  # type: ignore[arg-type]
    due = [adapter.adapt(batch) for batch in batches(frames("cam", 10, start=3), 5)]
    assert due == [True, True] and model.updates == [[3.0, 4.0, 5.0, 6.0, 7.0], [8.0, 9.0, 10.0, 11.0, 12.0]]
    assert model.tracked == []  # adapted frames come tracked from the scoring route
    assert position.next_index == {"cam": 13} and position.frames_seen == 13
