"""What the job rejected: the DLQ and late topics read back and summed up (`streamrank dlq`).

Each record there is the JSON the job's rejected-records sink writes (jobs.recommend.kafka_dlq_ddl):
the raw input record, the reason, and the input's src_topic/src_partition/src_offset. The
coordinates identify an input record, so records minus distinct coordinates is how many an
at-least-once sink wrote twice after a restart."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator

from kafka import KafkaConsumer, TopicPartition
from tqdm import tqdm

SAMPLE_CHARS = 200


def summarize(rows: Iterable[dict], samples: int = 3) -> dict:
    """Counts by reason, distinct input records, repeats, the offsets seen per input partition,
    and up to `samples` records per reason (the raw record cut at SAMPLE_CHARS)."""
    by_reason: Counter[str] = Counter()
    seen: set[tuple] = set()
    spans: dict[str, list[int]] = {}
    shown: dict[str, list[dict]] = {}
    records = 0
    for row in rows:
        records += 1
        reason = str(row.get("reason"))
        by_reason[reason] += 1
        where = (row.get("src_topic"), row.get("src_partition"), row.get("src_offset"))
        if where in seen:
            continue
        seen.add(where)
        span = spans.setdefault(f"{where[0]}:{where[1]}", [where[2], where[2]])
        span[0], span[1] = min(span[0], where[2]), max(span[1], where[2])
        picked = shown.setdefault(reason, [])
        if len(picked) < samples:
            raw = str(row.get("record"))
            picked.append({"src": f"{where[0]}:{where[1]}@{where[2]}",
                           "record": raw if len(raw) <= SAMPLE_CHARS else raw[:SAMPLE_CHARS] + "..."})
    return {"records": records, "input_records": len(seen), "repeated": records - len(seen),
            "by_reason": dict(by_reason.most_common()), "src_offsets": spans, "samples": shown}


def read_rejected(bootstrap: str, topic: str, idle_ms: int = 5000, progress: bool = True,
                  unread: dict[str, list[int]] | None = None, start: dict[int, int] | None = None) -> Iterator[dict]:
    """The topic's records from its start (or `start`'s offset per partition, as end_offsets gave
    them before a run) to the end it has when the read starts, as
    read_committed consumers see them (an exactly-once sink's aborted writes are skipped; an
    at-least-once sink's records are all there). A transaction still open holds such readers at
    its first offset (the last stable offset); `unread` (when given) then gets, per partition,
    [that offset, the partition's end]. Stops early after idle_ms with nothing new."""
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
                    yield json.loads(message.value)
                left = {p for p in left if consumer.position(p) < end[p]}
                if not left:
                    break
    finally:
        consumer.close()


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> end offset now, as written (open transactions included): `start` for a later
    read_rejected of only what comes after."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=10000)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {p.partition: end for p, end in consumer.end_offsets(parts).items()}
    finally:
        consumer.close()
