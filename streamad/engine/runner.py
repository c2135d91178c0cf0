"""Threads, bounded queues, end-of-stream and errors: the one place where stages meet threads.

Stages are plain iterator transforms (``Iterator[In] -> Iterator[Out]``). :class:`Runner` runs
each in its own thread, connected by bounded queues:

- ``block``: a full queue makes the producer wait (files and folders: lossless backpressure);
- ``drop-oldest``: a full queue discards its oldest item, which is reported (live streams);

A worker's exception ends the pipeline and is re-raised to the consumer with its traceback.
:meth:`Runner.stop` asks the sources to stop; everything already read flows on to the end, so
sinks see a clean end-of-stream (graceful Ctrl-C). Closing the consumer aborts every worker.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from streamad.errors import ConfigError

logger = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

POLICIES = ("block", "drop-oldest")


class _End:
    pass


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


_END = _End()


class DropLog:
    """Thread-safe count of dropped items per source and reason, with a few examples each.

    A reason may carry a detail after ``": "`` (``"unreadable image: a/7.png"``): frames are
    counted under the reason, and the first details (else indices) are kept as examples.
    """

    EXAMPLES = 3

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._examples: dict[tuple[str, str], list[str]] = {}

    def __call__(self, source_id: str, index: int, reason: str) -> None:
        reason, _, detail = reason.partition(": ")
        with self._lock:
            self._counts[(source_id, reason)] += 1
            examples = self._examples.setdefault((source_id, reason), [])
            if len(examples) < self.EXAMPLES:
                examples.append(detail or f"frame {index}")
        logger.info("dropped frame %d of %s: %s%s", index, source_id, reason, f" ({detail})" if detail else "")

    def total(self, source_id: str | None = None) -> int:
        with self._lock:
            return sum(n for (sid, _), n in self._counts.items() if source_id is None or sid == source_id)

    def by_reason(self) -> dict[str, dict[str, int]]:
        """``{source_id: {reason: count}}``."""
        out: dict[str, dict[str, int]] = {}
        with self._lock:
            for (sid, reason), n in sorted(self._counts.items()):
                out.setdefault(sid, {})[reason] = n
        return out

    def lines(self) -> list[str]:
        """One line per source and reason: ``"cam: 12 frame(s) dropped: corrupt data (e.g. frame 3, ...)"``."""
        with self._lock:
            return [
                f"{sid}: {n} frame(s) dropped: {reason} (e.g. {', '.join(self._examples[(sid, reason)])}{', ...' if n > self.EXAMPLES else ''})"
                for (sid, reason), n in sorted(self._counts.items())
            ]


def _round_robin(outputs: list[Iterator[Out]]) -> Iterator[Out]:
    """One item from each output in turn (the dealt order back); when one ends, the others are
    drained, which re-raises a failure of theirs."""
    while True:
        for output in outputs:
            try:
                item = next(output)
            except StopIteration:
                for other in outputs:
                    for _ in other:
                        pass
                return
            yield item


class Channel(Generic[Out]):
    """A bounded queue with an overflow policy and an abort flag."""

    def __init__(self, maxsize: int, policy: str, abort: threading.Event, on_drop: Callable[[object], None] | None) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"expected an overflow policy in {POLICIES}, got {policy!r}")
        if maxsize < 1:
            raise ConfigError(f"expected a queue size of at least 1, got {maxsize}")
        self.queue: queue.Queue[object] = queue.Queue(maxsize)
        self.policy, self.abort, self.on_drop = policy, abort, on_drop

    def put(self, item: object, *, control: bool = False) -> bool:
        """Put an item; False when the pipeline was aborted meanwhile."""
        if self.policy == "block" or control:
            while not self.abort.is_set():
                try:
                    self.queue.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False
        while not self.abort.is_set():
            try:
                self.queue.put_nowait(item)
                return True
            except queue.Full:
                try:
                    oldest = self.queue.get_nowait()
                except queue.Empty:
                    continue
                if isinstance(oldest, _End | _Failure):  # never drop control items
                    self.queue.put(oldest)
                    return self.put(item, control=True)
                self._dropped(oldest)
        return False

    def _dropped(self, item: object) -> None:
        if self.on_drop is not None:
            self.on_drop(item)

    def __iter__(self) -> Iterator[Out]:
        while True:
            try:
                item = self.queue.get(timeout=0.05)
            except queue.Empty:
                if self.abort.is_set():
                    return
                continue
            if isinstance(item, _End):
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]


def _after(setup: Callable[[], None] | None, make: Callable[[], Iterable[Out]]) -> Callable[[], Iterable[Out]]:
    def run() -> Iterable[Out]:
        if setup is not None:
            setup()
        return make()

    return run


class Runner:
    """Runs a chain of iterator stages in threads.

    Example:
        >>> runner = Runner()
        >>> squares = runner.stage(lambda xs: (x * x for x in xs), runner.source(lambda: range(4)))
        >>> list(runner.consume(squares))
        [0, 1, 4, 9]
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stopping = threading.Event()
        self.abort = threading.Event()
        self._threads: list[threading.Thread] = []
        self._clock = clock  # seconds; :meth:`gather`'s waits read it (tests inject a fake one)

    def stop(self) -> None:
        """Ask sources to stop reading; what was read still flows to the end."""
        self.stopping.set()

    def stop_when(self, condition: Callable[[], bool], *, poll_s: float = 0.05) -> None:
        """Call :meth:`stop` once ``condition()`` turns true (polled in a thread until the end)."""

        def watch() -> None:
            while not self.abort.is_set() and not self.stopping.is_set():
                if condition():
                    self.stop()
                    return
                time.sleep(poll_s)

        thread = threading.Thread(target=watch, name="streamad-stop-when", daemon=True)
        self._threads.append(thread)
        thread.start()

    def source(
        self,
        make: Callable[[], Iterable[Out]],
        *,
        maxsize: int = 32,
        policy: str = "block",
        on_drop: Callable[[object], None] | None = None,
        name: str = "source",
    ) -> Iterator[Out]:
        """Run ``make()`` in a thread; stops early when :meth:`stop` is called."""

        def produce() -> Iterator[Out]:
            for item in make():
                if self.stopping.is_set():
                    return
                yield item

        return iter(self._spawn(produce, maxsize=maxsize, policy=policy, on_drop=on_drop, name=name))

    def stage(
        self,
        transform: Callable[[Iterator[In]], Iterable[Out]],
        upstream: Iterator[In],
        *,
        maxsize: int = 2,
        name: str = "stage",
        setup: Callable[[], None] | None = None,
    ) -> Iterator[Out]:
        """Run ``transform(upstream)`` in a thread, feeding a bounded blocking queue.

        ``setup()``, when given, runs first in that thread (per-thread settings such as torch's
        thread count).
        """
        return iter(self._spawn(_after(setup, lambda: transform(upstream)), maxsize=maxsize, policy="block", on_drop=None, name=name))

    def parallel(
        self,
        fn: Callable[[In], Out],
        upstream: Iterator[In],
        *,
        workers: int,
        maxsize: int = 2,
        name: str = "parallel",
        setup: Callable[[], None] | None = None,
    ) -> Iterator[Out]:
        """Apply ``fn`` to every item in ``workers`` threads; results come out in input order.

        Item ``j`` goes to worker ``j % workers`` and results are collected round robin, so the
        order is the input's whatever the timing. On a CPU, two single-threaded backbone passes
        at once are faster than one pass on two threads (no fork/join barrier per layer).

        Example:
            >>> runner = Runner()
            >>> out = runner.parallel(lambda x: x * 10, runner.source(lambda: range(5)), workers=2)
            >>> list(runner.consume(out))
            [0, 10, 20, 30, 40]
        """
        if workers < 1:
            raise ConfigError(f"expected at least 1 worker, got {workers}")
        if workers == 1:
            return self.stage(lambda items: map(fn, items), upstream, maxsize=maxsize, name=name, setup=setup)
        inputs: list[Channel[In]] = [Channel(maxsize, "block", self.abort, None) for _ in range(workers)]
        self._dispatch(upstream, inputs, name=name)
        outputs = [
            iter(self._spawn(_after(setup, functools.partial(map, fn, channel)), maxsize=maxsize, policy="block", on_drop=None, name=f"{name}-{i}"))
            for i, channel in enumerate(inputs)
        ]
        return _round_robin(outputs)

    def _dispatch(self, upstream: Iterator[In], inputs: list[Channel[In]], *, name: str) -> None:
        """A thread dealing item ``j`` to ``inputs[j % len(inputs)]``; end and failure go to all."""

        def dispatch() -> None:
            try:
                for j, item in enumerate(upstream):
                    if not inputs[j % len(inputs)].put(item):
                        return
            except BaseException as exc:  # handed to every worker, which re-raises it downstream
                self.stopping.set()
                for channel in inputs:
                    channel.put(_Failure(exc), control=True)
            else:
                for channel in inputs:
                    channel.put(_END, control=True)

        thread = threading.Thread(target=dispatch, name=f"streamad-{name}-dispatch", daemon=True)
        self._threads.append(thread)
        thread.start()

    def sources(
        self,
        makes: Sequence[Callable[[], Iterable[Out]]],
        *,
        maxsize: int,
        policy: str,
        on_drop: Callable[[object], None] | None = None,
        name: str = "source",
    ) -> list[Channel[Out]]:
        """Several sources, each in its own thread and queue (live cameras), for :meth:`gather`."""
        channels = []
        for i, make in enumerate(makes):

            def produce(make: Callable[[], Iterable[Out]] = make) -> Iterator[Out]:
                for item in make():
                    yield item  # read, so it flows on (a live source counts what it reads)
                    if self.stopping.is_set() or self.abort.is_set():
                        return

            channels.append(self._spawn(produce, maxsize=maxsize, policy=policy, on_drop=on_drop, name=f"{name}-{i}"))
        return channels

    def gather(self, channels: list[Channel[Out]], *, max_batch: int, max_wait_s: float, poll_s: float = 0.002) -> Iterator[list[Out]]:
        """Batches of up to ``max_batch`` items taken from all ``channels`` in turn.

        A batch is closed when full or ``max_wait_s`` after its first item, so several cameras
        share one backbone pass without a slow camera delaying the others. Ends when every
        channel ended; a channel's failure is re-raised.
        """
        if max_batch < 1:
            raise ConfigError(f"expected a batch size of at least 1, got {max_batch}")
        open_channels = list(channels)
        batch: list[Out] = []
        first = 0.0
        turn = 0
        while open_channels:
            took = False
            for _ in range(len(open_channels)):
                channel = open_channels[turn % len(open_channels)]
                turn += 1
                try:
                    item = channel.queue.get_nowait()
                except queue.Empty:
                    continue
                if isinstance(item, _End):
                    open_channels.remove(channel)
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                if not batch:
                    first = self._clock()
                batch.append(item)  # type: ignore[arg-type]
                took = True
                if len(batch) == max_batch:
                    yield batch
                    batch = []
            if batch and self._clock() - first >= max_wait_s:
                yield batch
                batch = []
            if self.abort.is_set():
                return
            if not took:
                time.sleep(poll_s)
        if batch:
            yield batch

    def _spawn(
        self,
        make: Callable[[], Iterable[Out]],
        *,
        maxsize: int,
        policy: str,
        on_drop: Callable[[object], None] | None,
        name: str,
    ) -> Channel[Out]:
        channel: Channel[Out] = Channel(maxsize, policy, self.abort, on_drop)

        def work() -> None:
            try:
                for item in make():
                    if not channel.put(item):
                        return
            except BaseException as exc:  # re-raised in the consumer, with its traceback
                self.stopping.set()
                channel.put(_Failure(exc), control=True)
            else:
                channel.put(_END, control=True)

        thread = threading.Thread(target=work, name=f"streamad-{name}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return channel

    def consume(self, items: Iterator[Out]) -> Iterator[Out]:
        """Iterate the last stage; on exit (end, error or break) every worker is stopped."""
        try:
            yield from items
        finally:
            self.stopping.set()  # sources that poll it (live cameras) stop connecting and reading
            self.abort.set()
            deadline = time.monotonic() + 5.0  # for all threads together, not 5 s each
            # A consumer dropped without closing (an error unwinding past it) is finalised by the
            # garbage collector in whatever thread runs it, possibly one of ours: never join that one.
            for thread in [t for t in self._threads if t is not threading.current_thread()]:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
