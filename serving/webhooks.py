"""Webhook delivery (`streamrank webhooks deliver`): reads the job's events from [webhooks] topic
and POSTs each to every registered endpoint that wants its type, signed (contract.webhooks.sign),
with the event id as Idempotency-Key.

- Retries: connection errors, timeouts, 408, 429 and 5xx, with exponential backoff and jitter
  (tenacity), at most max_attempts; any other 4xx is the receiver's final word.
- A delivery that does not succeed goes to [webhooks] dlq_topic with why; `streamrank webhooks
  replay` resends what is there.
- An event's offset is committed once every endpoint has it or its dead letter: a worker that stops
  mid-way delivers the event again on restart (at least once), and a receiver that keeps the
  Idempotency-Keys it handled processes it once.
- Events are delivered in their topic's order; one endpoint's retries hold back the events behind
  them (the order a CMS sees matches the job's).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import httpx
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import Counter
from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from contract.config import WebhooksConfig
from contract.webhooks import (EVENT_HEADER, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, Endpoint, WebhookEvent,
                               read_endpoints, sign)

log = logging.getLogger(__name__)

DELIVERIES = Counter("streamrank_webhook_deliveries_total", "Webhook deliveries by outcome (delivered, dead_lettered)",
                     ["outcome"])
ATTEMPTS = Counter("streamrank_webhook_attempts_total", "HTTP attempts of webhook deliveries, by result", ["result"])
ENDPOINTS_REFRESH_S = 2.0


class Retryable(Exception):
    """An attempt worth repeating: the receiver may answer next time."""


class Refused(Exception):
    """The receiver's final word (a 4xx other than 408 and 429): no retry."""


@dataclass
class Outcome:
    delivered: bool
    attempts: int
    error: str = ""


def dead_letter(endpoint: Endpoint, event: WebhookEvent, outcome: Outcome, at_ms: int) -> dict:
    return {"endpoint_id": endpoint.endpoint_id, "event": json.loads(event.encode()), "attempts": outcome.attempts,
            "error": outcome.error, "failed_at_ms": at_ms}


class Deliverer:
    def __init__(self, cfg: WebhooksConfig, http: httpx.Client | None = None, sleep=time.sleep) -> None:
        self.cfg = cfg
        self.http = http or httpx.Client(timeout=cfg.timeout_s, headers={"User-Agent": "streamrank-webhooks/1"})
        self.sleep = sleep

    def attempt(self, endpoint: Endpoint, event: WebhookEvent) -> None:
        body = event.encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(endpoint.secret, int(time.time()), body),
                   IDEMPOTENCY_HEADER: event.event_id, EVENT_HEADER: event.type}
        try:
            resp = self.http.post(endpoint.url, content=body, headers=headers)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as err:  # no later attempt can do better
            ATTEMPTS.labels("invalid_url").inc()
            raise Refused(f"{type(err).__name__}: {err}") from None
        except httpx.HTTPError as err:
            ATTEMPTS.labels("unreachable").inc()
            raise Retryable(f"{type(err).__name__}: {err}") from None
        if resp.is_success:
            ATTEMPTS.labels("ok").inc()
            return
        ATTEMPTS.labels(str(resp.status_code)).inc()
        if resp.status_code in (408, 429) or resp.status_code >= 500:
            raise Retryable(f"HTTP {resp.status_code}")
        raise Refused(f"HTTP {resp.status_code}: {resp.text[:200]}")

    def deliver(self, endpoint: Endpoint, event: WebhookEvent) -> Outcome:
        """Attempts until the receiver takes it, refuses it, or max_attempts are spent."""
        c = self.cfg
        retrying = Retrying(stop=stop_after_attempt(c.max_attempts), sleep=self.sleep,
                            wait=wait_exponential_jitter(multiplier=c.backoff_base_s, max=c.backoff_max_s,
                                                         jitter=c.backoff_base_s),
                            retry=retry_if_exception(lambda e: isinstance(e, Retryable)), reraise=False)
        try:
            retrying(self.attempt, endpoint, event)
        except RetryError as err:
            n = retrying.statistics.get("attempt_number", c.max_attempts)
            return Outcome(False, n, f"{err.last_attempt.exception()} after {n} attempts")
        except Refused as err:
            return Outcome(False, retrying.statistics.get("attempt_number", 1), str(err))
        return Outcome(True, retrying.statistics.get("attempt_number", 1))


class Worker:
    """The delivery loop over the events topic (or, replaying, over the dead-letter topic)."""

    def __init__(self, cfg: WebhooksConfig, bootstrap: str, redis_client, deliverer: Deliverer | None = None) -> None:
        self.cfg, self.bootstrap, self.redis = cfg, bootstrap, redis_client
        self.deliverer = deliverer or Deliverer(cfg)
        self.stop = threading.Event()
        self.endpoints: list[Endpoint] = []
        self._endpoints_at = -1e9
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", retries=10)
        self.counts = {"events": 0, "delivered": 0, "dead_lettered": 0}

    def current_endpoints(self) -> list[Endpoint]:
        if time.monotonic() - self._endpoints_at >= ENDPOINTS_REFRESH_S:
            self.endpoints, self._endpoints_at = read_endpoints(self.redis), time.monotonic()
        return self.endpoints

    def _dead_letter(self, endpoint: Endpoint, event: WebhookEvent, outcome: Outcome) -> None:
        record = dead_letter(endpoint, event, outcome, int(time.time() * 1000))
        self.producer.send(self.cfg.dlq_topic, key=event.user_id.encode("utf-8", "surrogatepass"),
                           value=json.dumps(record).encode()).get(timeout=30)
        self.counts["dead_lettered"] += 1
        DELIVERIES.labels("dead_lettered").inc()
        log.warning("webhook %s (%s) to %s dead-lettered: %s", event.event_id, event.type, endpoint.endpoint_id,
                    outcome.error)

    def _send(self, endpoint: Endpoint, event: WebhookEvent) -> bool:
        outcome = self.deliverer.deliver(endpoint, event)
        if outcome.delivered:
            self.counts["delivered"] += 1
            DELIVERIES.labels("delivered").inc()
        else:
            self._dead_letter(endpoint, event, outcome)
        return outcome.delivered

    def _consume(self, topic: str, group: str, idle_s: float | None, handle, upto_end: bool = False) -> None:
        """Hand each record to handle and commit it. upto_end stops at the end offsets of the
        partitions as first assigned: records written after that (a replay's own new dead
        letters) are left for the next run."""
        # one record a poll: a handle can take minutes of retries, and each is committed on its own
        consumer = KafkaConsumer(topic, bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False,
                                 auto_offset_reset="earliest", consumer_timeout_ms=500, max_poll_records=1,
                                 max_poll_interval_ms=30 * 60_000)
        ends: dict = {}  # partition -> its end offset when first assigned
        done: dict = {}  # partition -> the next offset to handle (the consumer's position runs ahead: it fetches)

        def at_end() -> bool:
            if not upto_end or not consumer.assignment():
                return False
            if new := [tp for tp in consumer.assignment() if tp not in ends]:
                ends.update(consumer.end_offsets(new))
            for tp in ends:
                if tp not in done:
                    committed = consumer.committed(tp)
                    done[tp] = committed if committed is not None else consumer.beginning_offsets([tp])[tp]
            return all(done[tp] >= end for tp, end in ends.items())

        idle_since = time.monotonic()
        try:
            while not self.stop.is_set() and not at_end():
                got = False
                for message in consumer:
                    got = True
                    tp = TopicPartition(message.topic, message.partition)
                    if upto_end and (at_end() or message.offset >= ends[tp]):
                        # written after the start: not handled nor committed, so the next run reads
                        # it; this partition is done, the others go on to their own ends
                        consumer.pause(tp)
                        done[tp] = max(done.get(tp, 0), ends[tp])
                        if at_end():
                            return
                        continue
                    handle(message.value)
                    consumer.commit()
                    done[tp] = message.offset + 1
                    if self.stop.is_set() or at_end():
                        break
                # idle only counts with partitions assigned: a group whose last member was killed
                # assigns none until that member's session times out
                if got or not consumer.assignment():
                    idle_since = time.monotonic()
                elif idle_s is not None and time.monotonic() - idle_since >= idle_s:
                    break
        finally:
            consumer.close()
            self.producer.flush(timeout=10)

    def run(self, idle_s: float | None = None) -> dict:
        """Deliver events until stopped (or idle for idle_s); returns the counts."""
        def handle(raw: bytes) -> None:
            try:
                event = WebhookEvent.decode(raw)
            except (ValueError, KeyError, TypeError) as err:  # not an event: kept, never retried forever
                self.producer.send(self.cfg.dlq_topic, value=json.dumps(
                    {"endpoint_id": "", "record": raw.decode("utf-8", "replace"), "attempts": 0,
                     "error": f"not a webhook event: {err!r}", "failed_at_ms": int(time.time() * 1000)}).encode()
                ).get(timeout=30)
                self.counts["dead_lettered"] += 1
                log.error("record on %s is not a webhook event (%r); dead-lettered", self.cfg.topic, err)
                return
            self.counts["events"] += 1
            for endpoint in self.current_endpoints():
                if endpoint.wants(event.type):
                    self._send(endpoint, event)
        self._consume(self.cfg.topic, self.cfg.group_id, idle_s, handle)
        return self.counts

    def replay(self, idle_s: float = 3.0) -> dict:
        """Resend the dead letters not replayed before (their own consumer group), to the endpoint
        as registered now; one that fails again is dead-lettered again, and replayed by the next
        run, not this one (a run stops at the letters there when it started); one whose endpoint
        was removed is skipped (and counted)."""
        replayed = {"replayed": 0, "delivered": 0, "failed": 0, "skipped": 0}

        def handle(raw: bytes) -> None:
            letter = json.loads(raw)
            endpoint = next((e for e in self.current_endpoints() if e.endpoint_id == letter["endpoint_id"]), None)
            if endpoint is None or "event" not in letter:  # removed endpoint, or a record that was no event
                replayed["skipped"] += 1
                return
            replayed["replayed"] += 1
            ok = self._send(endpoint, WebhookEvent.decode(json.dumps(letter["event"])))
            replayed["delivered" if ok else "failed"] += 1
        self._consume(self.cfg.dlq_topic, f"{self.cfg.group_id}-replay", idle_s, handle, upto_end=True)
        return replayed
