import json

from contract.config import load_config
from models.offline import OfflineReplay, read_history, user_deltas, window_end
from contract.schema import validate

T0 = 1_700_000_000_000


def line(n, ts, user="u1", etype="view", **kw):
    return json.dumps({"event_id": f"e{n}", "user_id": user, "item_id": "i1", "type": etype, "ts": ts, **kw})


def test_late_records_follow_the_watermark_in_file_order(tmp_path):
    cfg = load_config(None, {"features.out_of_orderness_s": 5.0})
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join([
        line(1, T0), line(2, T0 + 20_000),
        line(3, T0 + 16_000),   # 4 s behind the newest: on time
        line(4, T0 + 15_000),   # exactly at the watermark (newest - 5 s): late
        "not json",
        line(5, T0 + 1_000),    # far behind: late
    ]) + "\n")
    hist = read_history(path, cfg)
    assert [e.event_id for e in hist.events] == ["e1", "e3", "e2"]
    assert hist.late == [4, 6] and hist.rejected == [(5, "not_json")]


def test_window_deltas_group_users_per_micro_batch():
    evs = [validate(line(1, T0 + 10)), validate(line(2, T0 + 20, user="u2")), validate(line(3, T0 + 30))]
    deltas = user_deltas(evs, window_end(T0 + 10, 2000))
    assert [(d.user_id, d.events.count(";") + 1) for d in deltas] == [("u1", 2), ("u2", 1)]
    assert window_end(T0 + 10, 2000) == T0 + 2000


def test_replay_stops_at_the_cut_off(tmp_path):
    cfg = load_config(None)
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(line(n, T0 + n * 1000) for n in range(10)) + "\n")
    replay = OfflineReplay(cfg)
    steps = list(replay.run(read_history(path, cfg).events, until_ms=T0 + 4000))
    assert [s.window_end for s in steps] == [T0 + 2000, T0 + 4000]
    assert replay.ledger.used == 4


def test_read_history_keeps_events_before_2000_with_events_min_ts_ms_lowered(tmp_path):
    first = 874_724_710_000  # MovieLens 100K's earliest rating (1997-09-20)
    path = tmp_path / "h.jsonl"
    path.write_text(f"{line(1, first)}\n{line(2, first + 1000)}\n{line(3, first - 1)}\n")
    assert read_history(path, load_config(None)).rejected == [(1, "bad_ts"), (2, "bad_ts"), (3, "bad_ts")]
    hist = read_history(path, load_config(None, {"events.min_ts_ms": first}))
    assert [e.event_id for e in hist.events] == ["e1", "e2"] and hist.rejected == [(3, "bad_ts")]
