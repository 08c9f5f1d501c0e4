"""devstack.rejected.summarize: what `streamrank dlq` reports of the rejected-records topics."""

from __future__ import annotations

from devstack.rejected import SAMPLE_CHARS, summarize


def row(offset: int, reason: str, record: str = "{}", partition: int = 0) -> dict:
    return {"record": record, "reason": reason, "src_topic": "in", "src_partition": partition, "src_offset": offset}


def test_counts_by_reason_repeats_and_offsets():
    rows = [row(5, "not_json", "x" * 500), row(9, "bad_ts"), row(5, "not_json", "x" * 500), row(2, "not_json"),
            row(7, "bad_ts", partition=1), row(12, "not_json")]
    report = summarize(rows, samples=2)
    assert report["records"] == 6 and report["input_records"] == 5 and report["repeated"] == 1
    assert report["by_reason"] == {"not_json": 4, "bad_ts": 2}  # the repeat counts as a record
    assert list(report["by_reason"]) == ["not_json", "bad_ts"]  # most first
    assert report["src_offsets"] == {"in:0": [2, 12], "in:1": [7, 7]}
    not_json = report["samples"]["not_json"]
    assert [s["src"] for s in not_json] == ["in:0@5", "in:0@2"]  # distinct records, in order read
    assert not_json[0]["record"] == "x" * SAMPLE_CHARS + "..." and not_json[1]["record"] == "{}"
    assert [s["src"] for s in report["samples"]["bad_ts"]] == ["in:0@9", "in:1@7"]


def test_empty_topic_and_no_samples():
    assert summarize([]) == {"records": 0, "input_records": 0, "repeated": 0, "by_reason": {}, "src_offsets": {},
                             "samples": {}}
    assert summarize([row(1, "late")], samples=0)["samples"] == {"late": []}
