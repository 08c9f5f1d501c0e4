"""What the job rejected: the DLQ and late topics read back and summed up (`streamrank dlq`).

Each record there is the JSON the job's rejected-records sink writes (jobs.recommend.kafka_dlq_ddl):
the raw input record, the reason, and the input's src_topic/src_partition/src_offset. The
coordinates identify an input record, so records minus distinct coordinates is how many an
at-least-once sink wrote twice after a restart."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator

from traffic.publish import read_to_end

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
    """The rejected records (JSON), as traffic.publish.read_to_end reads the topic."""
    return (json.loads(raw) for raw in read_to_end(bootstrap, topic, idle_ms, progress, unread, start))
