"""The exposure log of the Python front ends (the HTTP/GraphQL gateway and the Python gRPC engine):
one record per answer (contract/exposures.py) sent to Kafka from a background thread.

A call only hands its record to a queue and returns: it never waits on Kafka. At most
`buffer_records` records are held unacknowledged (queued, or inside the producer), as franz-go's
MaxBufferedRecords holds them in lookupd: while Kafka is slow or down they fill up, and then further
records are dropped and counted (`streamrank_serving_exposures_total{outcome="dropped"}`, and a
warning at most every 10 s). Records Kafka still refuses after the producer's retries are `failed`."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time

from kafka import KafkaProducer
from kafka.errors import KafkaError
from prometheus_client import Counter

from contract.serving_config import ExposuresConfig
from serving import lookup

log = logging.getLogger(__name__)

EXPOSURES = Counter("streamrank_serving_exposures_total",
                    "Exposure records by outcome: sent (Kafka acknowledged), dropped (buffer full), failed "
                    "(Kafka refused after retries)", ["outcome"])
WARN_EVERY_S = 10.0


def exposure_record(rec: lookup.Recommendations, stored_id: str, interface: str, served_at_ms: int) -> dict:
    """contract.exposures.EXPOSURE_FIELDS, in order (tests/vectors/exposure.json)."""
    record = {"request_id": rec.request_id, "user_id": stored_id, "placement": rec.placement,
              "experiments": rec.experiments,
              "items": [{"item_id": i.item_id, "position": n, "score": i.score, "category": i.category}
                        for n, i in enumerate(rec.items, 1)],
              "model_version": rec.model_version, "list_age_ms": rec.list_age_ms, "fallback": rec.fallback,
              "fallback_reason": rec.fallback_reason, "served_at_ms": served_at_ms, "interface": interface}
    return record


class ExposureLog:
    def __init__(self, cfg: ExposuresConfig) -> None:
        self.cfg = cfg
        self.queue: queue.Queue[dict | None] = queue.Queue()
        self.held = 0  # records queued or in the producer, not yet acknowledged or failed
        self._lock = threading.Lock()
        self.dropped = 0
        self._last_warning = 0.0
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._send_all, name="exposure-log", daemon=True)
        self._thread.start()

    def log(self, record: dict) -> None:
        """Queue one record; never blocks."""
        with self._lock:
            full = self.held >= self.cfg.buffer_records
            if not full:
                self.held += 1
        if not full:
            self.queue.put_nowait(record)
        else:
            self.dropped += 1
            EXPOSURES.labels("dropped").inc()
            now = time.monotonic()
            if now - self._last_warning >= WARN_EVERY_S:
                self._last_warning = now
                log.warning("exposure buffer full (%d records; Kafka %s slow or down): %d records dropped so far",
                            self.cfg.buffer_records, self.cfg.bootstrap_servers, self.dropped)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (up to timeout_s), then stop the thread."""
        self._closing.set()
        self.queue.put_nowait(None)
        self._thread.join(timeout_s)

    def _producer(self) -> KafkaProducer | None:
        """A producer once a broker answers (records wait, counted as held, until then); None once
        the log is closed before any broker answered."""
        while not self._closing.is_set():
            try:
                return KafkaProducer(bootstrap_servers=self.cfg.bootstrap_servers, acks=1,
                                     linger_ms=int(self.cfg.linger_ms), retries=5, max_block_ms=10_000,
                                     key_serializer=str.encode, value_serializer=lambda v: json.dumps(v).encode())
            except KafkaError as e:
                log.warning("exposures: Kafka %s not reachable (%s); records wait in the buffer",
                            self.cfg.bootstrap_servers, e)
                self._closing.wait(1.0)
        return None

    def _send_all(self) -> None:
        producer = self._producer()
        if producer is None:
            return
        while (record := self.queue.get()) is not None:
            try:
                future = producer.send(self.cfg.topic, key=record["user_id"], value=record)
            except Exception as e:  # noqa: BLE001  no metadata within max_block_ms, or anything else: this thread must live on
                self._failed(e)
                continue
            future.add_callback(self._sent)
            future.add_errback(self._failed)
        producer.flush(timeout=5)
        producer.close(timeout=5)

    def _release(self) -> None:
        with self._lock:
            self.held -= 1

    def _sent(self, _metadata) -> None:
        self._release()
        EXPOSURES.labels("sent").inc()

    def _failed(self, err: Exception) -> None:
        self._release()
        EXPOSURES.labels("failed").inc()
        log.warning("exposure record refused by Kafka: %s", err)
