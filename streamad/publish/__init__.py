"""What ``watch`` (and ``score``) tell the world beyond its own files: events and state to
webhooks and MQTT (:mod:`.events`, :mod:`.webhook`, :mod:`.mqtt`), numbers to Prometheus
(:mod:`.metrics`)."""
