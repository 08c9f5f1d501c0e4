"""`streamrank dlq`'s reader against a real broker and real Kafka transactions, as an exactly-once
sink leaves them: aborted records are skipped, and records in a transaction still open are
reported as unread, not silently left out."""

from __future__ import annotations

import json

from kafka import KafkaProducer

from devstack.rejected import read_rejected, summarize
from tests.helpers import prefixed_topics


def rejected(offset: int, reason: str) -> bytes:
    return json.dumps({"record": f"r{offset}", "reason": reason, "src_topic": "in", "src_partition": 0,
                       "src_offset": offset}).encode()


def test_aborted_records_are_skipped_and_an_open_transaction_is_reported(kafka_broker):
    topic = prefixed_topics(kafka_broker, "rejected.", partitions=1)["dlq"]
    plain = KafkaProducer(bootstrap_servers=kafka_broker, acks="all")
    for n in range(3):
        plain.send(topic, rejected(n, "not_json")).get(timeout=30)  # each acknowledged: offsets 0-2
    plain.close()
    tx = KafkaProducer(bootstrap_servers=kafka_broker, transactional_id="test-rejected")
    tx.init_transactions()
    tx.begin_transaction()
    tx.send(topic, rejected(3, "bad_ts")).get(timeout=30)
    tx.abort_transaction()  # as after a failure: written, never seen by read_committed readers
    tx.begin_transaction()
    tx.send(topic, rejected(4, "bad_ts")).get(timeout=30)
    tx.send(topic, rejected(5, "bad_ts")).get(timeout=30)  # written, not committed: the job's
    # transaction until its next checkpoint

    unread: dict[str, list[int]] = {}
    open_report = summarize(read_rejected(kafka_broker, topic, idle_ms=3000, progress=False, unread=unread))
    assert open_report["by_reason"] == {"not_json": 3}
    # offsets 0-2 plain, 3 the aborted record, 4 its abort marker, 5-6 the open transaction's
    assert unread == {"0": [5, 7]}

    tx.commit_transaction()
    tx.close()
    unread.clear()
    report = summarize(read_rejected(kafka_broker, topic, idle_ms=3000, progress=False, unread=unread))
    assert report["by_reason"] == {"not_json": 3, "bad_ts": 2} and report["repeated"] == 0 and unread == {}
    assert report["src_offsets"] == {"in:0": [0, 5]} and report["samples"]["bad_ts"][0]["src"] == "in:0@4"
