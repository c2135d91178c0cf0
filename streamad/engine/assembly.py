"""The engine: the one assembly of stages on a :class:`~streamad.engine.runner.Runner` that every job
runs (fit, its normalisation pass, score, eval, calibrate, watch)::

    sources -> decode -> preprocess -> backbone workers (+ prepare) -> scorer routes -> consumer
    (thread)  (thread)   (thread)      (``plan.workers`` threads)      (thread)

Files and folders block (lossless); watch adds live sources, drop-oldest queues and gathering
across cameras in front of the same preprocess, backbone and scorer stages.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from streamad.config import FrameScoreConfig
from streamad.engine import stages
from streamad.engine.runner import DropLog, Runner
from streamad.engine.runtime import thread_plan
from streamad.features.extractor import FeatureExtractor
from streamad.features.temporal import REGIONS, MotionTracker, track
from streamad.frames import FeatureBatch, Frame, ScoreMap, TensorBatch
from streamad.io.sources import Source
from streamad.maps import CausalSmoother, TemporalMean
from streamad.model import Model

Work = Callable[[TensorBatch], FeatureBatch]  # a batch's backbone (and scorer) pass: PyTorch's, or an exported graph's


@dataclass(frozen=True, slots=True)
class Reading:
    """Which frames of the sources a job reads.

    Attributes:
        every: every N-th frame (by index).
        frame_range: ``[start, stop)`` of indices in each source.
        start: per source, the first index still to read (a resumed fit).
        keep: selects frames by index (the fit's held-out rule).
    """

    every: int = 1
    frame_range: tuple[int, int | None] = (0, None)
    start: dict[str, int] | None = None
    keep: Callable[[int], bool] | None = None

    def begin(self, source: Source) -> int:
        return max((self.start or {}).get(source.source_id, 0), self.frame_range[0])

    def frames(self, sources: Sequence[Source], *, drops: DropLog, should_stop: Callable[[], bool]) -> Iterator[Frame]:
        """The frames of every source, one source after the other."""
        for source in sources:
            if should_stop():  # stopped: the next source is not started
                return
            yield from source.frames(
                every=self.every, start_index=self.begin(source), stop_index=self.frame_range[1], on_drop=drops, should_stop=should_stop, keep=self.keep
            )

    def expected(self, sources: Sequence[Source]) -> int:
        """How many frames :meth:`frames` will yield (from container metadata for videos)."""
        total = 0
        for source in sources:
            begin = self.begin(source)
            end = len(source) if self.frame_range[1] is None else min(len(source), self.frame_range[1])
            indices = range(begin + (-begin) % self.every, end, self.every) if end > begin else range(0)
            total += len(indices) if self.keep is None else sum(1 for i in indices if self.keep(i))
        return total


class Scoring:
    """A model's route for one or more sources: distances, maps, frame scores, then a causal
    moving average per source. ``prepared``: the batches already went through the scorer's
    :meth:`prepare` in the backbone workers (one model), else it is done here (shared
    extractors, as in watch); ``tracked``: and through the model's tracker (a stage of its own,
    :meth:`Engine.scores`)."""

    def __init__(self, model: Model, frame_score: FrameScoreConfig, *, prepared: bool, tracked: bool = False, layers: bool = False) -> None:
        self.model, self.frame_score, self.prepared, self.tracked, self.layers = model, model.settled(frame_score), prepared, tracked, layers
        self.mean = TemporalMean(frame_score.window) if frame_score.window > 1 else None
        self.smoother = CausalSmoother(self.frame_score.smooth_s) if self.frame_score.smooth_s else None
        self.tracker = model.tracker()
        self.last: FeatureBatch | None = None  # the last batch as scored (prepared, with motion)

    def __call__(self, batch: FeatureBatch) -> list[ScoreMap]:
        if not self.prepared:
            batch = FeatureBatch(batch.refs, self.model.prepare(batch.features), batch.originals)
        if self.tracker is not None and not self.tracked:
            batch = self.tracker(batch)
        self.last = batch
        distances = self.model.distances(batch.features)
        results = self.model.results(batch.refs, distances, frame_score=self.frame_score, originals=batch.originals, layers=self.layers)
        if self.tracker is not None and REGIONS in batch.features and batch.originals:
            results = self._with_regions(results, batch.features[REGIONS], self.tracker)
        return self._filtered(results)

    @staticmethod
    def _with_regions(results: list[ScoreMap], regions: torch.Tensor, tracker: MotionTracker) -> list[ScoreMap]:
        """Each result with its moving regions, speeds in the frame's pixels per second (the
        tracker measures them in pixels of its flow image per lag)."""
        lag_s, flow_w = tracker.lag_s, tracker.flow_hw[1]
        out = []
        for result, rows in zip(results, regions.cpu().numpy(), strict=True):
            found = rows[~np.isnan(rows[:, 0])]
            scale = (result.original.shape[1] if result.original is not None else flow_w) / flow_w / lag_s
            out.append(dataclasses.replace(result, regions=np.column_stack([found[:, 1:5], found[:, 0] * scale]).astype(np.float32)))
        return out

    def _filtered(self, results: list[ScoreMap]) -> list[ScoreMap]:
        """The results with their frame scores through the moving average and the filter."""
        return [self._smoothed(r) for r in results] if self.mean is not None or self.smoother is not None else results

    def _smoothed(self, result: ScoreMap) -> ScoreMap:
        """The frame score through the moving average (``--window``), then the filter."""
        score, ref = result.score, result.ref
        score = self.mean(ref.source_id, score) if self.mean is not None else score
        score = self.smoother(ref.source_id, ref.pts_s, score) if self.smoother is not None else score
        return dataclasses.replace(result, score=score, pooled=result.score)


class ExportedScoring(Scoring):
    """The route of batches an exported graph scored whole (:mod:`streamad.engine.exported`):
    its maps and frame scores, then the same moving average and filter as :class:`Scoring`."""

    def __call__(self, batch: FeatureBatch) -> list[ScoreMap]:
        maps, scores = batch.features["maps"].numpy(), batch.features["scores"].numpy()
        originals = batch.originals or (None,) * len(batch.refs)
        return self._filtered([ScoreMap(ref, float(scores[i]), float(maps[i].max()), maps[i], originals[i]) for i, ref in enumerate(batch.refs)])


class Engine:
    """Builds the stages of a job on one runner.

    Args:
        runner: threads, queues, stop and errors.
        device: where the backbone runs (chooses the thread plan).
        batch_size: frames per backbone pass.
        workers: concurrent backbone passes (None: 2 on a multi-core CPU, 1 on CUDA).
        live: latency first: after the gathered batch, preprocess, backbone and scorer run one
            batch at a time in the consuming thread, so an overloaded pipeline holds no queue of
            its own and drops at the (drop-oldest) sources instead.
    """

    def __init__(self, runner: Runner, device: torch.device, *, batch_size: int = 8, workers: int | None = None, live: bool = False) -> None:
        self.runner, self.batch_size = runner, batch_size
        self.live = live
        self.plan = thread_plan(device, workers=workers)
        self.drops = DropLog()

    def read(self, sources: Sequence[Source], reading: Reading, *, then: Callable[[Iterator[Frame]], Iterator[Frame]] | None = None) -> Iterator[Frame]:
        """Decode ``sources`` in a thread (blocking queue: files lose nothing); ``then`` (a stage
        such as :func:`stages.set_aside`) runs in the same thread."""
        stage = then or (lambda frames: frames)
        return self.runner.source(
            lambda: stage(reading.frames(sources, drops=self.drops, should_stop=self.runner.stopping.is_set)), maxsize=2 * self.batch_size, name="decode"
        )

    def replay(self, frames: Sequence[Frame]) -> Iterator[Frame]:
        """Frames kept in memory, in order, as a source thread (stops like any source)."""
        return self.runner.source(lambda: iter(frames), maxsize=32, name="replay")

    def features(
        self,
        frames: Iterator[Frame],
        extractor: FeatureExtractor,
        *,
        prepare: stages.Prepare | None = None,
        keep_originals: bool = False,
        whole_batches: bool = False,
        depth: int = 2,
        run: Work | None = None,
    ) -> Iterator[FeatureBatch]:
        """Preprocess in a thread, then the backbone (and ``prepare``) in the worker threads, or
        ``run`` there instead (an exported graph: :mod:`streamad.engine.exported`).

        ``whole_batches``: after a stop, a trailing partial batch is dropped (fits count whole
        batches only, so a resumed fit sees the same batches as an uninterrupted one).
        ``depth``: batches queued before and after each stage (a fit, whose consumer drains in
        bursts of updates, holds less in flight with 1 and runs as fast).
        """
        stopped = self.runner.stopping.is_set if whole_batches else None
        tensors = self.runner.stage(
            lambda fs: stages.preprocess(stages.batch_frames(fs, max_batch=self.batch_size, stopped=stopped), extractor, keep_originals=keep_originals),
            frames,
            maxsize=depth,
            name="preprocess",
            setup=self.plan.side_setup(),
        )
        work = run or functools.partial(stages.extract, extractor=extractor, prepare=prepare)
        return self.runner.parallel(work, tensors, workers=self.plan.workers, maxsize=depth, name="backbone", setup=self.plan.worker_setup())

    def gathered_features(
        self,
        batches: Iterator[list[Frame]],
        extractor_of: Callable[[Frame], FeatureExtractor],
        *,
        keep_originals: bool = False,
        run_of: Callable[[Frame], Work | None] | None = None,
    ) -> Iterator[FeatureBatch]:
        """Batches mixing sources (cameras): one backbone pass per extractor in each batch, or
        per exported graph where ``run_of`` gives a frame's (``--runtime``)."""
        def preprocess(items: Iterator[list[Frame]]) -> Iterator[tuple[Work, TensorBatch]]:
            for batch in items:
                groups: dict[tuple[object, ...], tuple[Work, FeatureExtractor, list[Frame]]] = {}
                for frame in batch:
                    extractor, run = extractor_of(frame), run_of(frame) if run_of is not None else None
                    work = run or functools.partial(stages.extract, extractor=extractor)
                    groups.setdefault((extractor.key, id(run)), (work, extractor, []))[2].append(frame)
                for work, extractor, frames in groups.values():
                    yield work, next(stages.preprocess([frames], extractor, keep_originals=keep_originals))

        if self.live:
            return (work(tensors) for work, tensors in preprocess(batches))
        tensors = self.runner.stage(preprocess, batches, name="preprocess", setup=self.plan.side_setup())
        return self.runner.parallel(lambda item: item[0](item[1]), tensors, workers=self.plan.workers, name="backbone", setup=self.plan.worker_setup())

    def scores(
        self, features: Iterator[FeatureBatch], route: Callable[[str], stages.Route], *, min_frames: int = 32, tracker: MotionTracker | None = None
    ) -> Iterator[ScoreMap]:
        """The scorer stage: each source's frames through its route (in a thread, unless live).

        ``tracker``: a model's motion tracker, run before the routes (whose :class:`Scoring`
        then says ``tracked``): in a thread of its own, the flow of one batch is computed while
        the distances of the one before are, where in the scorer's thread they added up."""
        if self.live:
            return stages.score(stages.rebatch(track(features, tracker), min_frames=min_frames), route)
        if tracker is not None:
            features = self.runner.stage(lambda fs: track(fs, tracker), features, maxsize=2, name="tracker", setup=self.plan.side_setup())
        return self.runner.stage(
            lambda fs: stages.score(stages.rebatch(fs, min_frames=min_frames), route), features, maxsize=64, name="scorer", setup=self.plan.side_setup()
        )

    def consume(self, items: Iterator[ScoreMap] | Iterator[FeatureBatch]) -> Iterator:
        """Iterate the last stage; on exit every worker is stopped."""
        return self.runner.consume(items)
