"""The rejected-record counter on a real Redis: replays of records already counted (a restart
from a checkpoint re-reads the records after the checkpointed offsets) are not counted again."""

from contract import keys
from jobs.store import RejectedCounter


def test_replayed_rejected_records_are_counted_once(redis_db):
    _, r = redis_db
    counter = RejectedCounter(r)
    first = [("t", 0, 3, "dlq"), ("t", 0, 7, "late"), ("t", 1, 2, "dlq"), ("t", 0, 9, "dlq")]
    assert counter.count(first) == 4
    # after a failure the job restarts from offsets (0: 5, 1: 0): 7, 9 and 2 come again, then new ones
    replay = [("t", 0, 7, "late"), ("t", 1, 2, "dlq"), ("t", 0, 9, "dlq"), ("t", 0, 12, "late"), ("t", 1, 4, "dlq")]
    assert counter.count(replay) == 2
    assert {k.decode(): int(v) for k, v in r.hgetall(keys.LEDGER).items()} == {"dlq": 4, "late": 2}
    assert {k.decode(): int(v) for k, v in r.hgetall(keys.REJECTED_OFFSETS).items()} == {"t:0": 12, "t:1": 4}
    assert counter.count([]) == 0
