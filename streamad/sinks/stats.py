"""Live stats per stream: counts (received = scored + learned + dropped), rates and latency
percentiles, printed and appended as JSON lines every ``every_s`` seconds."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from streamad.frames import ScoreMap


@dataclass(slots=True)
class StreamStats:
    """Counts and latencies of one stream (cumulative, plus a window for rates). Counters are
    updated from several threads: use :meth:`count`."""

    received: int = 0
    scored: int = 0
    learned: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    state: str = ""
    gave_up: bool = False
    reconnects: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=2000))
    window: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, what: str, n: int = 1, *, reason: str = "") -> None:
        """Add ``n`` to ``received``, ``scored``, ``learned`` or (with a reason) ``dropped``."""
        with self.lock:
            if what == "dropped":
                self.dropped[reason] += n
            else:
                setattr(self, what, getattr(self, what) + n)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def balanced(self) -> bool:
        return self.received == self.scored + self.learned + self.dropped_total

    def percentile(self, q: float) -> float | None:
        return float(np.percentile(np.asarray(self.latencies), q)) if self.latencies else None

    def line(self, name: str) -> str:
        """The summary line: the balance, drops by reason, reconnects, p95 latency."""
        drops = ", ".join(f"{k}: {v}" for k, v in sorted(self.dropped.items())) or "none"
        learned = f" + learned {self.learned}" if self.learned else ""
        check = "ok" if self.balanced() else "MISMATCH"
        p95 = self.percentile(95)
        latency = f", p95 latency {1000 * p95:.0f} ms" if p95 is not None else ""
        return (
            f"{name}: received {self.received} = scored {self.scored}{learned} + dropped {self.dropped_total} ({check}; drops: {drops}); "
            f"reconnects {self.reconnects}{latency}"
        )

    def record(self, name: str, now: float) -> dict[str, Any]:
        """The periodic record (rates since the last one)."""
        last = self.window or {"t": now, "received": 0, "scored": 0}
        dt = max(1e-6, now - last["t"])
        p50, p95 = self.percentile(50), self.percentile(95)
        record = {
            "camera": name,
            "state": self.state,
            "input_fps": round((self.received - last["received"]) / dt, 2),
            "scored_fps": round((self.scored - last["scored"]) / dt, 2),
            "received": self.received,
            "scored": self.scored,
            "learned": self.learned,
            "dropped": self.dropped_total,
            "p50_ms": None if p50 is None else round(1000 * p50, 1),
            "p95_ms": None if p95 is None else round(1000 * p95, 1),
        }
        self.window = {"t": now, "received": self.received, "scored": self.scored}
        return record


class StatsSink:
    """Counts scored frames and their latency (now - decode time), and reports every ``every_s``.

    Args:
        streams: the stats of each stream, shared with the sources that count what they read.
        show: prints a line.
        json_path: also append each record as a JSON line.
        clock: monotonic clock (injectable; frames' decode times use the same clock).
    """

    def __init__(
        self,
        streams: dict[str, StreamStats],
        *,
        every_s: float,
        show: Callable[[str], None],
        json_path: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.streams, self.every_s, self.show, self.clock = streams, every_s, show, clock
        self._json: TextIO | None = open(json_path, "a") if json_path else None
        now = clock()
        self._next = now + every_s
        for s in streams.values():
            s.window = {"t": now, "received": 0, "scored": 0}

    def write(self, result: ScoreMap) -> None:
        stats = self.streams[result.ref.source_id]
        now = self.clock()
        stats.count("scored")
        stats.latencies.append(now - result.ref.t_decoded_s)
        self.tick(now)

    def tick(self, now: float) -> None:
        if now >= self._next:
            self.emit(now)
            self._next = now + self.every_s

    def emit(self, now: float) -> None:
        for name, s in self.streams.items():
            record = s.record(name, now)
            p50 = "-" if record["p50_ms"] is None else f"{record['p50_ms']:.0f}"
            p95 = "-" if record["p95_ms"] is None else f"{record['p95_ms']:.0f}"
            self.show(
                f"[{name}] {record['state']}: in {record['input_fps']:.1f} fps, scored {record['scored_fps']:.1f} fps, "
                f"received {record['received']} = scored {record['scored']} + learned {record['learned']} + dropped {record['dropped']}, "
                f"latency p50 {p50} ms p95 {p95} ms"
            )
            if self._json is not None:
                self._json.write(json.dumps({"t": time.time(), **record}) + "\n")
                self._json.flush()

    def close(self) -> None:
        self.emit(self.clock())
        if self._json is not None:
            self._json.close()
