"""How long work is shown (a :class:`Progress` protocol) and stopped (Ctrl-C / SIGTERM drains the pipeline)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Protocol

from streamad.engine.runner import Runner


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


