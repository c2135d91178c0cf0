from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from streamad.errors import ConfigError
from streamad.runner import DropLog, Runner


class Boom(RuntimeError):
    pass


class TestRunner:
    def test_chain_keeps_order(self) -> None:
        runner = Runner()
        out = runner.stage(lambda xs: (x + 1 for x in xs), runner.source(lambda: range(100), maxsize=3), maxsize=2)
        assert list(runner.consume(out)) == list(range(1, 101))

    def test_worker_exception_reraised_with_traceback(self) -> None:
        def explode(xs: Iterator[int]) -> Iterator[int]:
            for x in xs:
                if x == 5:
                    raise Boom("stage failed at 5")
                yield x

        runner = Runner()
        out = runner.stage(explode, runner.source(lambda: range(10)))
        got = []
        with pytest.raises(Boom, match="failed at 5") as info:
            for x in runner.consume(out):
                got.append(x)
        assert got == [0, 1, 2, 3, 4]
        assert any(entry.name == "explode" for entry in info.traceback)

    def test_source_exception_reraised(self) -> None:
        def bad() -> Iterator[int]:
            yield 1
            raise Boom("decoder")

        runner = Runner()
        with pytest.raises(Boom, match="decoder"):
            list(runner.consume(runner.stage(lambda xs: xs, runner.source(bad))))

    def test_stop_drains_what_was_read(self) -> None:
        runner = Runner()
        produced = []

        def endless() -> Iterator[int]:
            i = 0
            while True:
                produced.append(i)
                yield i
                i += 1

        got = []
        for x in runner.consume(runner.stage(lambda xs: xs, runner.source(endless, maxsize=4))):
            got.append(x)
            if x == 10:
                runner.stop()
        assert got == list(range(len(got))) and len(got) >= 11  # in order, nothing lost before the end

    def test_block_policy_is_lossless_under_slow_consumer(self) -> None:
        runner = Runner()
        got = []
        for x in runner.consume(runner.source(lambda: range(50), maxsize=2, policy="block")):
            time.sleep(0.001)
            got.append(x)
        assert got == list(range(50))

    def test_drop_oldest_reports_drops(self) -> None:
        drops: list[object] = []
        runner = Runner()
        release = threading.Event()
        out = runner.source(lambda: range(20), maxsize=3, policy="drop-oldest", on_drop=drops.append)
        release.wait(0.3)  # producer runs ahead while the consumer sleeps
        got = list(runner.consume(out))
        assert len(got) + len(drops) == 20
        assert got[-1] == 19 and len(drops) >= 1  # newest kept, oldest dropped
        assert sorted(got + drops) == list(range(20))  # type: ignore[type-var]

    def test_early_exit_stops_workers(self) -> None:
        runner = Runner()
        for x in runner.consume(runner.source(lambda: iter(int, 1), maxsize=2)):  # endless
            if x == 0:
                break
        assert runner.abort.is_set()

    def test_bad_policy(self) -> None:
        with pytest.raises(ConfigError, match="drop-oldest"):
            Runner().source(lambda: range(3), policy="drop-all")


def test_drop_log_counts() -> None:
    log = DropLog()
    log("cam", 3, "corrupt frame")
    log("cam", 4, "corrupt frame")
    log("b", 0, "queue full")
    assert log.total() == 3 and log.total("cam") == 2
    assert log.by_reason() == {"b": {"queue full": 1}, "cam": {"corrupt frame": 2}}
