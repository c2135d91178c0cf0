"""``--events-mqtt mqtt://[user:pass@]host[:port]/prefix`` (paho-mqtt, its only importer):
event messages on ``<prefix>/<camera>/events`` (QoS 1), each camera's state on
``<prefix>/<camera>/state`` (retained), and ``<prefix>/availability``: ``online`` (retained)
once connected, ``offline`` when the watch ends and, as the broker's last will, when the
process dies. paho's network thread connects and reconnects on its own; publishing never
blocks (QoS 1 messages wait in paho's bounded queue while the broker is away)."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from streamad.errors import ConfigError
from streamad.io.urls import redact
from streamad.publish.events import EVENTS, Message

logger = logging.getLogger(__name__)

PORT = 1883
QUEUED = 1000  # QoS 1 messages paho keeps while the broker is away


def parse_url(url: str) -> tuple[str, int, str | None, str | None, str]:
    """(host, port, user, password, topic prefix) of an mqtt:// URL, else a one-line error."""
    try:
        parts = urlsplit(url)
        port = parts.port or PORT
        prefix = parts.path.strip("/")
    except ValueError:
        parts, port, prefix = None, 0, ""
    if parts is None or parts.scheme != "mqtt" or not parts.hostname or not prefix or any(c in prefix for c in "#+"):
        raise ConfigError(f"expected --events-mqtt mqtt://[user:pass@]host[:port]/topic-prefix, got {redact(url)!r}")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, user, password, prefix


class MqttPublisher:
    """Publishes to one broker; see the module's docstring for the topics."""

    def __init__(self, url: str, *, keepalive_s: int = 30) -> None:
        host, port, user, password, self.prefix = parse_url(url)
        self.name = f"mqtt {redact(url)}"
        self.availability = f"{self.prefix}/availability"
        self._counts = {"sent": 0, "failed": 0, "dropped": 0, "undelivered": 0}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"streamad-{uuid.uuid4().hex[:12]}")
        if user is not None:
            self._client.username_pw_set(user, password)
        self._client.will_set(self.availability, "offline", qos=1, retain=True)
        self._client.max_queued_messages_set(QUEUED)
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.connect_async(host, port, keepalive=keepalive_s)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            logger.warning("%s: connection refused (%s)", self.name, reason)
            return
        self._connected.set()
        client.publish(self.availability, "online", qos=1, retain=True)
        logger.info("%s: connected", self.name)

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _properties: Any) -> None:
        if self._connected.is_set():
            logger.warning("%s: disconnected (%s); reconnecting", self.name, reason)
        self._connected.clear()

    def _on_publish(self, *_: Any) -> None:
        with self._lock:
            self._counts["sent"] += 1

    def publish(self, message: Message) -> None:
        topic = f"{self.prefix}/{message.camera}/{message.kind}"
        events = message.kind == EVENTS
        if not events and not self._connected.is_set():  # a state is worth sending only now
            with self._lock:
                self._counts["dropped"] += 1
            return
        info = self._client.publish(topic, json.dumps(message.body), qos=1 if events else 0, retain=not events)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):  # NO_CONN: queued for the reconnect
            with self._lock:
                self._counts["dropped" if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE else "failed"] += 1

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def close(self, timeout_s: float = 3.0) -> None:
        """Say ``offline``, deliver what is queued (up to ``timeout_s``), disconnect."""
        if self._connected.is_set():
            self._client.publish(self.availability, "offline", qos=1, retain=True).wait_for_publish(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
