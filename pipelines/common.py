"""Pieces every job shares: progress hooks, Ctrl-C handling, frame streams over sources."""

from __future__ import annotations

import contextlib
import functools
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Protocol

from streamad import stages
from streamad.frames import FeatureBatch, Frame, TensorBatch
from streamad.model import AnomalyModel
from streamad.runner import DropLog, Runner
from streamad.runtime import ThreadPlan
from streamad.sources import Source


class Progress(Protocol):
    """Told about long work: ``start(label, total)``, then ``advance(n)`` per n frames done."""

    def start(self, label: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """A :class:`Progress` that shows nothing."""

    def start(self, label: str, total: int | None) -> None:
        return None

    def advance(self, n: int) -> None:
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


def embed_stage(runner: Runner, tensors: Iterator[TensorBatch], model: AnomalyModel, plan: ThreadPlan) -> Iterator[FeatureBatch]:
    """The backbone stage: ``plan.workers`` threads embed batches, results in input order."""
    return runner.parallel(functools.partial(stages.embed_batch, model=model), tensors, workers=plan.workers, name="backbone", setup=plan.worker_setup())


def frames_of(
    sources: Sequence[Source],
    *,
    every: int,
    start: dict[str, int] | None,
    drops: DropLog,
    should_stop: Callable[[], bool],
    frame_range: tuple[int, int | None] = (0, None),
    keep: Callable[[int], bool] | None = None,
) -> Iterator[Frame]:
    """The frames of every source, one source after the other.

    Each source starts at ``max(start[source], frame_range[0])`` and stops before
    ``frame_range[1]``; ``keep(index)``, when given, selects frames by index.
    """
    for source in sources:
        begin = max((start or {}).get(source.source_id, 0), frame_range[0])
        for frame in source.frames(every=every, start_index=begin, stop_index=frame_range[1], on_drop=drops, should_stop=should_stop):
            if keep is None or keep(frame.index):
                yield frame


def expected_frames(
    sources: Sequence[Source],
    *,
    every: int,
    start: dict[str, int] | None = None,
    frame_range: tuple[int, int | None] = (0, None),
    keep: Callable[[int], bool] | None = None,
) -> int:
    """How many frames the sources will yield (from container metadata for videos)."""
    total = 0
    for source in sources:
        begin = max((start or {}).get(source.source_id, 0), frame_range[0])
        end = len(source) if frame_range[1] is None else min(len(source), frame_range[1])
        indices = range(begin + (-begin) % every, end, every) if end > begin else range(0)
        total += len(indices) if keep is None else sum(1 for i in indices if keep(i))
    return total
