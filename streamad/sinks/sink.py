"""The sink protocol and a fan-out that closes every sink on every exit path."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Protocol, runtime_checkable

from streamad.frames import ScoreMap

logger = logging.getLogger(__name__)


@runtime_checkable
class Sink(Protocol):
    """Takes results one by one; ``close()`` flushes what is buffered (also after an error)."""

    def write(self, result: ScoreMap) -> None: ...

    def close(self) -> None: ...


class Sinks:
    """Several sinks as one: ``write`` goes to each in order; ``commit`` tells those that stage
    their files (a sink with a ``commit()`` method) that the job succeeded, so they replace
    their outputs; ``close`` closes them all, even when one fails (the first failure is
    re-raised after the others closed)."""

    def __init__(self, sinks: Iterable[Sink | None]) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def commit(self) -> None:
        for sink in self.sinks:
            commit = getattr(sink, "commit", None)
            if commit is not None:
                commit()

    def write(self, result: ScoreMap) -> None:
        for sink in self.sinks:
            sink.write(result)

    def close(self) -> None:
        failure: BaseException | None = None
        for sink in self.sinks:
            try:
                sink.close()
            except BaseException as exc:  # noqa: BLE001 - closing the others first
                failure = failure or exc
        if failure is not None:
            raise failure

    def __enter__(self) -> Sinks:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
