"""Pieces every job shares: progress hooks, Ctrl-C handling, the normalisation pass."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Protocol

import torch

from streamad import stages
from streamad.calibration import Normalisation, measure_normalisation
from streamad.config import FrameScoreConfig
from streamad.engine import Engine, Reading
from streamad.frames import Frame, FrameRef
from streamad.model import Model
from streamad.runner import Runner
from streamad.sources import Source


class Progress(Protocol):
    """Told about long work: ``start(label, total)``, then ``advance(n)`` per n frames done
    (and ``note(text)`` for a status beside the bar)."""

    def start(self, label: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...

    def note(self, text: str) -> None:
        """A short status shown beside the bar (a training loss)."""
        ...

    def finish(self) -> None: ...


class NoProgress:
    """A :class:`Progress` that shows nothing."""

    def start(self, label: str, total: int | None) -> None:
        return None

    def advance(self, n: int) -> None:
        return None

    def note(self, text: str) -> None:
        return None

    def finish(self) -> None:
        return None


no_progress = NoProgress()


@contextlib.contextmanager
def graceful_interrupt(runner: Runner) -> Iterator[list[bool]]:
    """On the first SIGINT/SIGTERM stop the sources and let the pipeline drain; a second SIGINT
    raises KeyboardInterrupt as usual. Yields a one-item list that turns true once interrupted."""
    interrupted = [False]
    if threading.current_thread() is not threading.main_thread():
        yield interrupted
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(signum: int, frame: FrameType | None) -> None:
        if interrupted[0] and signum == signal.SIGINT:
            raise KeyboardInterrupt
        interrupted[0] = True
        runner.stop()

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield interrupted
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def normalise_on(
    model: Model,
    sources: Sequence[Source],
    reading: Reading,
    *,
    batch_size: int,
    workers: int | None = None,
    progress: Progress = no_progress,
    measured: Callable[[int], bool] | None = None,
    frames: Sequence[Frame] | None = None,
) -> Normalisation:
    """Distances on normal frames through the engine: per-position mean/std, then the default
    frame scores they give (:func:`streamad.calibration.measure_normalisation`).

    ``measured``: of the frames read, those measured (the others only give the motion cue the
    frame one lag before a measured one). ``frames``: the frames ``reading`` selects, already
    read (a fit sets them aside as it decodes), so the sources are not decoded again."""
    runner = Runner()
    engine = Engine(runner, model.device, batch_size=batch_size, workers=workers)
    kept: list[tuple[tuple[FrameRef, ...], torch.Tensor]] = []
    tracker = model.tracker()
    progress.start("normalising", reading.expected(sources) if frames is None else len(frames))
    read = engine.read(sources, reading) if frames is None else engine.replay(frames)
    features = engine.features(read, model.extractor, prepare=model.prepare, keep_originals=model.needs_images)
    for batch in engine.consume(features):
        progress.advance(len(batch.refs))
        batch = tracker(batch) if tracker is not None else batch
        rows = [i for i, ref in enumerate(batch.refs) if measured is None or measured(ref.index)]
        if rows:
            batch = stages.select(batch, rows)
            kept.append((batch.refs, model.distances(batch.features).cpu()))  # (B, C, P) float32: 25 KB a frame and cue at 64x96
    progress.finish()
    config = FrameScoreConfig()

    def frame_scores(refs: Sequence[FrameRef], distances: torch.Tensor, normalisation: Normalisation) -> list[float]:
        return [r.score for r in model.results(refs, distances.to(model.device), frame_score=config, normalisation=normalisation)]

    return measure_normalisation(kept, frame_scores)
