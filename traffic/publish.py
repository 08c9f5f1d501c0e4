"""Publishing simulated traffic to Kafka (batched producer, optional real-time pacing)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from tqdm import tqdm

from contract.paths import catalog_path
from traffic.simulator import Simulator

log = logging.getLogger(__name__)


@dataclass
class PublishReport:
    sent: int
    malformed: int
    users: int
    first_ts: int
    last_ts: int
    user_ids: frozenset[str] = frozenset()  # users with at least one valid record

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "user_ids"}


def producer(bootstrap: str):
    return KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024,
                         acks="all", compression_type=None)


def publish_catalog(sim: Simulator, bootstrap: str, topic: str = "items") -> int:
    p = producer(bootstrap)
    for item in sim.items:
        p.send(topic, key=item.item_id.encode(), value=json.dumps(item.to_json()).encode())
    p.flush()
    p.close()
    return len(sim.items)


def publish_events(
    sim: Simulator, bootstrap: str, topic: str, count: int, rate_per_s: float,
    start_ms: int | None = None, malformed_fraction: float = 0.0, realtime: bool = False,
    progress: bool = True,
) -> PublishReport:
    """Send `count` records. realtime: pace sends so event time tracks the wall clock (live demo);
    otherwise send as fast as the broker takes them."""
    p = producer(bootstrap)
    start = start_ms if start_ms is not None else int(time.time() * 1000)
    wall0 = time.time()
    sent = malformed = 0
    users: set[str] = set()
    first = last = 0
    for key, value, valid in tqdm(sim.records(start, rate_per_s, count, malformed_fraction),
                                  total=count, desc=f"publishing to {topic}", unit="ev", mininterval=2,
                                  disable=not progress):
        if realtime:
            ts = json.loads(value)["ts"] if valid else None
            if ts is not None:
                lag = (ts - start) / 1000.0 - (time.time() - wall0)
                if lag > 0:
                    time.sleep(lag)
        p.send(topic, key=key.encode(), value=value)
        sent += 1
        if valid:
            users.add(key)
            ts = json.loads(value)["ts"]
            first = first or ts
            last = ts
        else:
            malformed += 1
    p.flush()
    p.close()
    return PublishReport(sent, malformed, len(users), first, last, frozenset(users))


def write_history(sim: Simulator, path: str, count: int, rate_per_s: float, start_ms: int,
                  malformed_fraction: float = 0.0, progress: bool = True) -> PublishReport:
    """Write `count` records as JSONL, and the simulator's catalog at catalog_path(path)."""
    catalog_path(path).write_text("".join(json.dumps(i.to_json()) + "\n" for i in sim.items))
    sent = malformed = 0
    users: set[str] = set()
    first = last = 0
    with open(path, "wb") as f:
        for key, value, valid in tqdm(sim.records(start_ms, rate_per_s, count, malformed_fraction),
                                      total=count, desc=f"writing {path}", unit="ev", disable=not progress):
            f.write(value + b"\n")
            sent += 1
            if valid:
                users.add(key)
                ts = json.loads(value)["ts"]
                first = first or ts
                last = ts
            else:
                malformed += 1
    return PublishReport(sent, malformed, len(users), first, last, frozenset(users))


def publish_history(path: str | Path, bootstrap: str, topic: str, items_topic: str | None = None,
                    rate_per_s: float | None = None, progress: bool = True) -> int:
    """Replay a JSONL history file (and its catalog, to items_topic) to Kafka, keyed by user_id;
    rate_per_s paces the sends (None: as fast as the broker takes them). Returns records sent."""
    p = producer(bootstrap)
    if items_topic and catalog_path(path).exists():
        for line in catalog_path(path).read_text().splitlines():
            if line.strip():
                p.send(items_topic, key=json.loads(line)["item_id"].encode(), value=line.encode())
    sent, wall0 = 0, time.time()
    with open(path, "rb") as f:
        total = sum(1 for _ in f)
        f.seek(0)
        for line in tqdm(f, total=total, desc=f"publishing to {topic}", unit="ev", mininterval=2, disable=not progress):
            line = line.rstrip(b"\n")
            if not line:
                continue
            if rate_per_s:
                ahead = sent / rate_per_s - (time.time() - wall0)
                if ahead > 0:
                    time.sleep(ahead)
            p.send(topic, key=json.loads(line)["user_id"].encode(), value=line)
            sent += 1
    p.flush()
    p.close()
    return sent


def send_requests(bootstrap: str, topic: str, action: str, users: list[str], ts_ms: int | None = None) -> list[str]:
    """Users' requests (contract.schema.CONTROL_ACTIONS) into their event streams: one record per
    user on the interactions topic, keyed by the user, at ts_ms (default now). Returns the event ids."""
    ts = ts_ms if ts_ms is not None else int(time.time() * 1000)
    p = producer(bootstrap)
    ids = []
    for u in users:
        record = {"event_id": f"{action}-{uuid.uuid4().hex[:16]}", "user_id": u, "type": action, "ts": ts}
        p.send(topic, key=u.encode(), value=json.dumps(record).encode())
        ids.append(record["event_id"])
    p.flush()
    p.close()
    return ids


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> end offset now, as written (open transactions included): `start` for a later
    read_to_end of only what comes after."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=10000)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {p.partition: end for p, end in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()


def read_to_end(bootstrap: str, topic: str, idle_ms: int = 5000, progress: bool = False,
                unread: dict[str, list[int]] | None = None, start: dict[int, int] | None = None) -> Iterator[bytes]:
    """The topic's records from its start (or `start`'s offset per partition, as end_offsets gave
    them before a run) to the end it has when the read starts (a live topic keeps growing: what
    comes later is for the next read), as read_committed consumers see them (an exactly-once
    sink's aborted writes are skipped; other records are all there). A transaction still open
    holds such readers at its first offset (the last stable offset); `unread` (when given) then
    gets, per partition, [that offset, the partition's end]. A broker silent for idle_ms ends the
    read early, with a warning. LookupError when the topic does not exist."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=idle_ms,
                             isolation_level="read_committed", request_timeout_ms=10000)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not parts:
            raise LookupError(f"topic {topic!r} does not exist on {bootstrap}")
        consumer.assign(parts)
        begin, end = consumer.beginning_offsets(parts), consumer.end_offsets(parts)  # read_committed: stable
        for p in parts:
            begin[p] = max(begin[p], (start or {}).get(p.partition, 0))
            consumer.seek(p, begin[p])
        if unread is not None:
            written = end_offsets(bootstrap, topic)
            unread.update({str(p.partition): [end[p], written[p.partition]] for p in parts
                           if written[p.partition] > end[p]})
        left = {p for p in parts if end[p] > begin[p]}
        with tqdm(total=sum(end[p] - begin[p] for p in parts), desc=f"reading {topic}", unit="rec",
                  mininterval=1, disable=not progress) as bar:
            for message in consumer:
                tp = TopicPartition(message.topic, message.partition)
                if tp in left and message.offset < end[tp]:
                    bar.update(1)
                    yield message.value
                left = {p for p in left if consumer.position(p) < end[p]}
                if not left:
                    break
        if left:
            log.warning("%s: no records for %d ms before its end offsets; %d partition(s) not read to the end",
                        topic, idle_ms, len(left))
    finally:
        consumer.close()


def read_json_topic(bootstrap: str, topic: str, idle_ms: int = 10_000) -> list[dict]:
    """Every JSON object on a topic, as read_to_end reads it (none when the topic does not exist).
    Records that are not JSON objects are skipped (the job's DLQ accounts for those on the
    interactions topic)."""
    out: list[dict] = []
    try:
        for raw in read_to_end(bootstrap, topic, idle_ms):
            try:
                value = json.loads(raw)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
    except LookupError:
        pass
    return out


