"""`streamrank import` output replayed to the real broker: every imported event arrives once,
keyed by user, and the catalog reaches the items topic."""

from __future__ import annotations

import json

from tests.helpers import prefixed_topics, read_topic
from tests.unit.test_importers import OR_ROWS, RR_EVENTS
from traffic.importers import import_file
from traffic.publish import publish_history


def test_imported_events_reach_kafka_once(kafka_broker, tmp_path):
    topics = prefixed_topics(kafka_broker, "imp.")
    sent = 0
    for name, fmt, text in (("or.csv", "online-retail", OR_ROWS), ("rr.csv", "retailrocket", RR_EVENTS)):
        src = tmp_path / name
        src.write_text(text)
        out = tmp_path / f"{fmt}.jsonl"
        report = import_file(src, fmt, out)
        assert publish_history(out, kafka_broker, topics["interactions"], topics["items"], progress=False) == report.events
        sent += report.events
    got = [json.loads(v) for v in read_topic(kafka_broker, topics["interactions"])]
    assert len(got) == sent == len({e["event_id"] for e in got}) == 8
    items = [json.loads(v) for v in read_topic(kafka_broker, topics["items"])]
    assert {"85123A", "355908"} <= {i["item_id"] for i in items}
