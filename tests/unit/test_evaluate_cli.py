"""`streamrank evaluate` on a log with no usable events: exit 2 with the file that lists the rejected
rows and the most common reasons, not a traceback from the time split."""

from __future__ import annotations

from typer.testing import CliRunner

from cli.main import app

ALL_BAD_ONLINE_RETAIL = """InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country
536370,22728,ALARM CLOCK BAKELIKE PINK,24,yesterday,3.75,12583,France
536370,22729,ALARM CLOCK BAKELIKE RED,24,tomorrow,3.75,12583,France
536370,22727,ALARM CLOCK BAKELIKE RED,24,12/1/2010 8:45,3.75
536371,22086,PAPER CHAIN KIT 50'S CHRISTMAS,0,12/1/2010 9:00,2.55,13748,United Kingdom
"""
ALL_BAD_JSONL = "\n".join([
    "not json",
    '{"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "view", "ts": 5}',
    '{"event_id": "e2", "user_id": "u1", "item_id": "i1", "type": "view", "ts": 6}',
    '{"event_id": "e3", "user_id": "u1", "item_id": "i1", "type": "teleport", "ts": 1700000000000}',
]) + "\n"


def test_all_rejected_import_exits_2_naming_the_rejected_file_and_reasons(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMRANK_RUN_DIR", str(tmp_path / "run"))
    log = tmp_path / "online_retail.csv"
    log.write_text(ALL_BAD_ONLINE_RETAIL)
    result = CliRunner().invoke(app, ["evaluate", "--events", str(log), "--format", "online-retail",
                                      "--out", str(tmp_path / "report")])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    rejected_file = tmp_path / "run" / "evaluate" / "history.jsonl.rejected.csv"
    assert f"{rejected_file}" in result.stderr and rejected_file.exists()
    assert "0 of 4 rows became events" in result.stderr
    assert ("bad_number_or_date 2, column_count 1, non_positive_quantity_or_negative_price 1"
            in result.stderr)


def test_all_invalid_native_history_exits_2_with_the_reasons(tmp_path):
    history = tmp_path / "history.jsonl"
    history.write_text(ALL_BAD_JSONL)
    result = CliRunner().invoke(app, ["evaluate", "--events", str(history), "--out", str(tmp_path / "report")])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert str(history) in result.stderr
    assert "bad_ts 2" in result.stderr and "not_json 1" in result.stderr and "bad_type 1" in result.stderr
