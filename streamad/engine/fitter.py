"""The one Fitter: everything a fit decides per frame, in one place.

Every job that teaches a model frames goes through a :class:`Fitter`: ``streamad fit`` (and
each Ray shard of one), watch's learning from a stream and its adapting on frames judged normal.
Per batch of prepared features it

- runs the model's temporal tracker (motion cues) over every frame read, so a frame read only
  as the motion reference of the next (held out, or before a resumed fit's start) primes it;
- decides which frames are fitted and which held out (one rule: :class:`~streamad.calibration.HoldOut`);
- calls the model's ``update`` on the fitted frames;
- keeps the held-out frames' prepared features that a job normalises on (up to a limit);
- records how far each source got (:class:`~streamad.stores.model_store.Progress`) and shows it;
- says when a checkpoint is due. A job with a store persists it (:func:`checkpoints` yields the
  events); a Ray shard, whose work is redone whole, simply does not ask.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from streamad.engine import stages
from streamad.engine.progress import Progress, no_progress
from streamad.features.extractor import Features
from streamad.frames import FeatureBatch, FrameRef
from streamad.holdout import HoldOut
from streamad.model import Model
from streamad.stores.fit_progress import FitProgress


class Fitter:
    """Fits a model on batches of prepared features, in frame order per source.

    Args:
        model: the model being fitted.
        position: how far each source got (updated in place; a resumed fit passes the store's).
        holdout: which frames are kept out of the fit.
        primed: per source, the first index to fit; earlier frames only prime the tracker (a
            resumed fit with motion reads the last counted frame again).
        checkpoint_every: fitted frames between checkpoints (None: never due).
        keep_held_out: how many held-out frames' features to keep (:attr:`held_out`).
        bar: shown the fitted frames.
    """

    def __init__(
        self,
        model: Model,
        position: FitProgress,
        *,
        holdout: HoldOut,
        primed: Mapping[str, int] | None = None,
        checkpoint_every: int | None = None,
        keep_held_out: int = 0,
        bar: Progress = no_progress,
    ) -> None:
        self.model, self.position, self.holdout = model, position, holdout
        self.primed = dict(primed or {})
        self.checkpoint_every, self.keep_held_out, self.bar = checkpoint_every, keep_held_out, bar
        self.tracker = model.tracker()
        self.added = 0  # frames fitted by this fitter
        self.held_out: list[tuple[FrameRef, Features]] = []
        self._since_checkpoint = 0

    def add(self, batch: FeatureBatch) -> bool:
        """Fit a batch read from the sources (prepared features): tracked, then its fitted
        frames into the model; returns whether a checkpoint is due."""
        if self.tracker is not None:
            batch = self.tracker(batch)
        fresh = [i for i, ref in enumerate(batch.refs) if ref.index >= self.primed.get(ref.source_id, 0)]
        fitted = [i for i in fresh if self.holdout.fitted(batch.refs[i].index)]
        self._keep(batch, [i for i in fresh if not self.holdout.fitted(batch.refs[i].index)])
        if not fitted:
            return False
        return self.adapt(stages.select(batch, fitted))

    def adapt(self, batch: FeatureBatch) -> bool:
        """Fit every frame of a batch as it is (already prepared and tracked: frames a scoring
        route judged normal); returns whether a checkpoint is due."""
        self.model.update(batch.features)
        for ref in batch.refs:
            self.position.next_index[ref.source_id] = ref.index + 1
        self.position.frames_seen += len(batch.refs)
        self.added += len(batch.refs)
        self.bar.advance(len(batch.refs))
        self._since_checkpoint += len(batch.refs)
        if self.checkpoint_every is None or self._since_checkpoint < self.checkpoint_every:
            return False
        self._since_checkpoint = 0
        return True

    def _keep(self, batch: FeatureBatch, rows: Sequence[int]) -> None:
        for i in rows[: max(0, self.keep_held_out - len(self.held_out))]:
            self.held_out.append((batch.refs[i], {k: v[i : i + 1].clone() for k, v in batch.features.items()}))


def checkpoints(fitter: Fitter, batches: Iterable[FeatureBatch]) -> Iterator[FitProgress]:
    """Fit ``batches``; yields the fit's position whenever a checkpoint is due (the caller
    persists the model then)."""
    for batch in batches:
        if fitter.add(batch):
            yield fitter.position
