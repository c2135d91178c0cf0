"""``--events-webhook URL``: an HTTP POST (JSON) per event change, from a thread of its own with
a bounded queue (the oldest message dropped, counted, when it is full), each message retried
with exponential backoff until it is delivered or the watch ends."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from streamad.errors import ConfigError
from streamad.io.urls import redact
from streamad.publish.events import EVENTS, Message

logger = logging.getLogger(__name__)


def check_url(url: str, option: str = "--events-webhook") -> str:
    """``url`` when it is http(s)://host[:port]/..., else a one-line error."""
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port is None or parts.port > 0)
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(f"expected {option} http(s)://host[:port]/path, got {redact(url)!r}")
    return url


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its ``user:pass@`` and the Basic authorization header they make."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    token = base64.b64encode(f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()).decode()
    return urlunsplit(parts._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}


class WebhookPublisher:
    """POSTs event messages to ``url`` (state messages are MQTT's).

    Args:
        url: http(s)://...; its credentials are redacted wherever it is shown.
        queue_size: messages waiting at most; a full queue drops its oldest.
        timeout_s: one POST's timeout.
        backoff_s, max_backoff_s: the wait before a retry, doubling up to the maximum.
        drain_s: how long :meth:`close` waits for the queue to empty.
    """

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 256,
        timeout_s: float = 5.0,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        drain_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url, self.headers = _split_credentials(check_url(url))
        self.name = f"webhook {redact(url)}"
        self.timeout_s, self.backoff_s, self.max_backoff_s, self.drain_s, self.clock = timeout_s, backoff_s, max_backoff_s, drain_s, clock
        self._queue: deque[Message] = deque(maxlen=queue_size)
        self._ready = threading.Condition()
        self._stopping = threading.Event()
        self._counts = {"sent": 0, "failed": 0, "dropped": 0, "undelivered": 0}
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    def publish(self, message: Message) -> None:
        if message.kind != EVENTS:
            return
        with self._ready:
            if len(self._queue) == self._queue.maxlen:
                self._counts["dropped"] += 1  # the deque lets its oldest go
            self._queue.append(message)
            self._ready.notify()

    def counts(self) -> dict[str, int]:
        with self._ready:
            return dict(self._counts)

    def _next(self) -> Message | None:
        with self._ready:
            while not self._queue and not self._stopping.is_set():
                self._ready.wait()
            return self._queue[0] if self._queue else None

    def _run(self) -> None:
        delay = self.backoff_s
        while (message := self._next()) is not None:
            if self._post(message):
                with self._ready:
                    if self._queue and self._queue[0] is message:
                        self._queue.popleft()
                    self._counts["sent"] += 1
                delay = self.backoff_s
            else:
                with self._ready:
                    self._counts["failed"] += 1
                if self._stopping.wait(delay):  # closing: the rest is counted undelivered
                    return
                delay = min(2 * delay, self.max_backoff_s)

    def _post(self, message: Message) -> bool:
        data = json.dumps(message.body).encode()
        request = urllib.request.Request(self.url, data=data, headers={"Content-Type": "application/json", **self.headers}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                ok = 200 <= response.status < 300
                reason = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            ok, reason = False, str(getattr(exc, "reason", exc))
        if ok != (not self._failing):  # logged once per change of state
            self._failing = not ok
            if ok:
                logger.warning("%s: delivering again", self.name)
            else:
                logger.warning("%s: failing (%s); retrying with backoff, events queued (at most %d)", self.name, reason, self._queue.maxlen)
        return ok

    def close(self) -> None:
        """Wait up to ``drain_s`` for the queue to empty, then stop; what is left is counted
        undelivered."""
        deadline = self.clock() + self.drain_s
        while self.clock() < deadline and self._thread.is_alive():
            with self._ready:
                if not self._queue:
                    break
            time.sleep(0.05)
        self._stopping.set()
        with self._ready:
            self._ready.notify_all()
        self._thread.join(timeout=self.timeout_s + 1)
        with self._ready:
            self._counts["undelivered"] += len(self._queue)
            self._queue.clear()
        counts = self.counts()
        if counts["dropped"] or counts["undelivered"]:
            logger.warning("%s: %d event message(s) dropped (queue full), %d undelivered at the end", self.name, counts["dropped"], counts["undelivered"])
