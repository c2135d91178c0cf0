"""Ray, behind three calls (the only module that imports it).

- :func:`connect`: join a cluster (``auto``, an address) or start a local one for the job;
- :func:`map_reduce`: one task per shard, each returning a small summary and a large result;
  a group of shards' results (a round) is reduced by a fixed binary tree of tasks (shard 0 with
  1, 2 with 3, ...), so the reduction is the same whatever order the shards finish in, runs
  beside the shards, and never passes through the driver but for each group's root;
- :func:`actor_map`: items spread over actors that each build their state once (a model).

A worker that dies is retried by Ray (``max_retries`` / ``max_restarts``); a shard that keeps
failing is one :class:`~streamad.errors.ClusterError` naming it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from streamad.errors import ClusterError, ConfigError

logger = logging.getLogger(__name__)

EXTRA = "pip install 'streamad[ray]'"
RETRIES = 3  # attempts after the first, when a worker dies (Ray's default for tasks)
POLL_S = 0.2  # how often a wait looks whether the job was asked to stop

T = TypeVar("T")
S = TypeVar("S")
R = TypeVar("R")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"expected Ray for --ray, got none installed; hint: {EXTRA}") from None
    return ray


@contextlib.contextmanager
def connect(address: str | None) -> Iterator[None]:
    """Ray for the job: the cluster at ``address`` (``auto``: the one this node joined with
    ``ray start``), or a new local one with every core of this machine when None. A process
    already connected (a test, a notebook) stays connected as it was."""
    ray = _ray()
    if ray.is_initialized():
        yield
        return
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(
            f"expected a Ray cluster at {address or 'a new local instance'}, got {type(exc).__name__}: {exc}; "
            "hint: `ray start --head` first, or leave the address out"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


def slots(*, cpus: float = 1, gpus: float = 0) -> int:
    """How many tasks needing ``cpus`` and ``gpus`` each the cluster runs at once."""
    resources = _ray().cluster_resources()
    fits = [int(resources.get("CPU", 1) // cpus)] + ([int(resources.get("GPU", 0) // gpus)] if gpus else [])
    if min(fits) < 1:
        raise ClusterError(f"expected a cluster with {cpus} CPU and {gpus} GPU for a task, got {resources.get('CPU', 0)} CPU and {resources.get('GPU', 0)} GPU")
    return min(fits)


def _call(work: Callable[..., Any], *args: Any) -> Any:
    return work(*args)


def _failure(exc: BaseException, what: str) -> ClusterError:
    cause = getattr(exc, "cause", None)
    if cause is None:  # no exception of the work's own: its worker died, every attempt
        return ClusterError(
            f"expected {what} to finish, got its worker dead on each of {RETRIES + 1} attempts ({type(exc).__name__}); "
            "hint: out of memory? see the workers' logs under /tmp/ray/session_latest/logs"
        )
    text = (str(cause).strip().splitlines() or [""])[0]
    return ClusterError(f"expected {what} to finish, got {type(cause).__name__}: {text}")


def _tree(merge: Any, reduce: Callable[[R, R], R], results: list[Any]) -> Any:
    """The root of a fixed binary tree of ``reduce`` tasks over ``results`` (0 with 1, 2 with 3,
    ...); the merges wait in Ray for their two inputs, not here."""
    while len(results) > 1:
        paired = [merge.remote(reduce, a, b) for a, b in zip(results[0::2], results[1::2], strict=False)]
        results = paired + results[len(paired) * 2 :]
    return results[0]


def map_reduce(
    work: Callable[[T], tuple[S, R]],
    items: Sequence[T],
    reduce: Callable[[R, R], R],
    *,
    group: int | None = None,
    on_done: Callable[[T], None] | None = None,
    gpus: float = 0,
    stopped: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[list[tuple[T, S]], R]]:
    """``work`` on every item as a Ray task, all submitted at once, each returning a small summary
    and a large result. The items are taken in groups of ``group`` (None: one group); each
    group's results are reduced by a fixed tree of tasks beside the work. Yields, group after
    group in order, the group's (item, summary) pairs and its reduced result, so the caller can
    commit each group while the next ones run. ``on_done(item)``: a task finished (any order).

    A failure is raised when its group comes (earlier groups are yielded first), as one
    :class:`~streamad.errors.ClusterError` naming the item. Once ``stopped()`` (polled while
    waiting), the groups end. Tasks still running then are not cancelled: Ray 2.60's driver can
    abort on a forced cancel racing a task's completion (seen here); they end with the job (a
    local cluster's shutdown, the driver's exit), their results unused.
    """
    if not items:
        raise ConfigError("expected at least one shard to run, got none")
    ray = _ray()
    shard = ray.remote(_call).options(num_returns=2, max_retries=RETRIES, num_cpus=1, num_gpus=gpus)
    merge = ray.remote(_call).options(max_retries=RETRIES, num_cpus=1)
    size = group or len(items)
    groups: collections.deque[tuple[list[tuple[T, Any]], Any]] = collections.deque()
    for start in range(0, len(items), size):  # only the trees hold the shards' results: each is freed once merged
        submitted = [(item, *shard.remote(work, item)) for item in items[start : start + size]]
        groups.append(([(item, summary) for item, summary, _ in submitted], _tree(merge, reduce, [result for _, _, result in submitted])))
    del submitted
    pending = {summary: item for part, _ in groups for item, summary in part}
    failed: dict[Any, ClusterError] = {}
    while groups:
        part, root = groups.popleft()
        if not _wait_for(ray, [summary for _, summary in part], pending, failed, on_done=on_done, stopped=stopped):
            return
        for _, summary in part:
            if summary in failed:
                raise failed[summary]
        try:
            summaries, result = [(item, ray.get(summary)) for item, summary in part], ray.get(root)
        except ray.exceptions.RayError as exc:
            raise _failure(exc, "the merge of the shards' results") from None
        del part, root  # the round's objects can go from the object store once the caller is done
        yield summaries, result
        del summaries, result


def _wait_for(
    ray: Any, refs: list[Any], pending: dict[Any, T], failed: dict[Any, ClusterError], *, on_done: Callable[[T], None] | None, stopped: Callable[[], bool]
) -> bool:
    """Wait until ``refs`` are done, taking any task that finishes meanwhile off ``pending``
    (into ``failed`` when it failed, else told to ``on_done``); False once ``stopped()``."""
    while any(ref in pending for ref in refs):
        if stopped():
            return False
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        if not ready:
            continue
        item = pending.pop(ready[0])
        try:
            ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            failed[ready[0]] = _failure(exc, str(item))
            continue
        if on_done is not None:
            on_done(item)
    return True


class _Holder(Generic[S]):
    """An actor's state, built once, and the calls made on it."""

    def __init__(self, build: Callable[[], S]) -> None:
        self.state = build()

    def run(self, work: Callable[[S, T], R], item: T) -> R:
        return work(self.state, item)


def actor_map(
    build: Callable[[], S],
    work: Callable[[S, T], R],
    items: Sequence[T],
    *,
    on_done: Callable[[T, R], None],
    actors: int | None = None,
    gpus: float = 0,
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """``work(state, item)`` for every item, on up to ``actors`` actors (None: as many as the
    cluster runs at once) that each ran ``build()`` once; results go to ``on_done`` as they come.
    A dead actor is restarted and its item retried; once ``stopped()``, the items not done are
    left."""
    ray = _ray()
    count = max(1, min(len(items), actors or slots(gpus=gpus)))
    holder = ray.remote(_Holder).options(num_cpus=1, num_gpus=gpus, max_restarts=RETRIES, max_task_retries=RETRIES)
    pool = [holder.remote(build) for _ in range(count)]
    waiting = list(items)
    running: dict[Any, tuple[Any, T]] = {}
    try:
        for actor in pool:
            if waiting:
                item = waiting.pop(0)
                running[actor.run.remote(work, item)] = (actor, item)
        while running:
            if stopped():  # the actors are killed below, their items left unscored
                return
            done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
            if not done:
                continue
            actor, item = running.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as exc:
                raise _failure(exc, str(item)) from None
            if waiting:
                following = waiting.pop(0)
                running[actor.run.remote(work, following)] = (actor, following)
            on_done(item, result)
    finally:
        for actor in pool:
            ray.kill(actor)


__all__ = ["EXTRA", "RETRIES", "actor_map", "connect", "map_reduce", "slots"]
