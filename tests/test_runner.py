from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import pytest

from streamad.engine.runner import DropLog, Runner
from streamad.errors import ConfigError


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


class TestParallel:
    def test_order_kept_whatever_the_timing(self) -> None:
        rng = random.Random(0)
        delays = [rng.uniform(0, 0.004) for _ in range(60)]

        def slow(x: int) -> int:
            time.sleep(delays[x])
            return x * 2

        runner = Runner()
        out = runner.parallel(slow, runner.source(lambda: range(60)), workers=3)
        assert list(runner.consume(out)) == [x * 2 for x in range(60)]

    def test_each_worker_runs_setup_in_its_own_thread(self) -> None:
        seen: set[str] = set()
        runner = Runner()
        out = runner.parallel(lambda x: x, runner.source(lambda: range(10)), workers=2, setup=lambda: seen.add(threading.current_thread().name))
        assert list(runner.consume(out)) == list(range(10))
        assert len(seen) == 2

    @pytest.mark.parametrize("fail_at", [0, 1, 7])
    def test_worker_exception_reraised(self, fail_at: int) -> None:
        def fn(x: int) -> int:
            if x == fail_at:
                raise Boom(f"worker failed at {x}")
            return x

        runner = Runner()
        got = []
        with pytest.raises(Boom, match=f"failed at {fail_at}"):
            for x in runner.consume(runner.parallel(fn, runner.source(lambda: range(20)), workers=2)):
                got.append(x)
        assert got == list(range(fail_at))

    def test_upstream_exception_reraised(self) -> None:
        def bad() -> Iterator[int]:
            yield from range(5)
            raise Boom("source failed")

        runner = Runner()
        with pytest.raises(Boom, match="source failed"):
            list(runner.consume(runner.parallel(lambda x: x, runner.source(bad), workers=2)))

    @pytest.mark.parametrize("count", [0, 1, 5, 6])
    def test_any_length(self, count: int) -> None:
        runner = Runner()
        assert list(runner.consume(runner.parallel(lambda x: -x, runner.source(lambda: range(count)), workers=3))) == [-x for x in range(count)]

    def test_zero_workers_refused(self) -> None:
        with pytest.raises(ConfigError, match="at least 1 worker"):
            Runner().parallel(lambda x: x, iter([]), workers=0)


def test_gather_batches_across_sources() -> None:
    runner = Runner()
    channels = runner.sources([lambda: (("a", i) for i in range(7)), lambda: (("b", i) for i in range(5))], maxsize=4, policy="block")
    batches = list(runner.consume(runner.stage(lambda _: runner.gather(channels, max_batch=3, max_wait_s=0.01), iter(()))))
    items = [item for batch in batches for item in batch]
    assert sorted(items) == sorted([("a", i) for i in range(7)] + [("b", i) for i in range(5)])
    assert all(1 <= len(b) <= 3 for b in batches) and any(len({src for src, _ in b}) == 2 for b in batches)
    for source in "ab":
        assert [i for src, i in items if src == source] == sorted(i for src, i in items if src == source)  # per-source order kept


def test_gather_reraises_a_source_failure() -> None:
    def bad() -> Iterator[int]:
        yield 1
        raise Boom("camera reader failed")

    runner = Runner()
    channels = runner.sources([bad], maxsize=2, policy="drop-oldest")
    with pytest.raises(Boom, match="camera reader failed"):
        list(runner.consume(runner.stage(lambda _: runner.gather(channels, max_batch=2, max_wait_s=0.01), iter(()))))


def test_gather_closes_a_partial_batch_after_max_wait_on_its_clock() -> None:
    """A batch that does not fill is closed ``max_wait_s`` after its first item, by the injected
    clock: the same batches however fast or loaded the machine is."""
    import threading

    looks = [0.0]
    delivered, release = threading.Event(), threading.Event()

    def clock() -> float:  # a second passes with every look, once both first items are queued
        looks[0] += 1.0 if delivered.is_set() else 0.0
        return looks[0]

    def camera() -> Iterator[int]:
        yield from (1, 2)
        delivered.set()  # asked for a third item: the second is in the queue
        release.wait(30)  # then silence, until the test lets it end
        yield 3

    runner = Runner(clock=clock)
    channels = runner.sources([camera], maxsize=4, policy="block")
    batches = runner.gather(channels, max_batch=10, max_wait_s=5.0)
    first = next(batches)
    release.set()
    rest = list(batches)
    assert first == [1, 2] and rest == [[3]]
    runner.abort.set()
