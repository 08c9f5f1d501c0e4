"""The job's validation (the JVM parse_interaction function + the SQL CASE generated from
contract/schema.py's RULES) gives the same reason as the Python validator, record by record, on
awkward inputs: every JSON type in every field a rule or the event line reads (numbers are not
ids), numbers in odd forms, nesting, broken documents.
The source's event-time function (event_time_ms) reads `ts` as Python does, and the ingest time
comes from a Kafka-style TIMESTAMP_LTZ(3) through the job's own expression, to the millisecond."""

from __future__ import annotations

import json
import time

from pyflink.table import DataTypes, EnvironmentSettings, TableEnvironment

from contract.schema import (DLQ_REASONS, EVENT_LINE_SQL, InvalidEvent, JSON_FIELDS, JVM_FUNCTIONS,
                             KAFKA_TS_MS_SQL, MAX_FUTURE_MS, MIN_TS_MS, PARSE_COLUMNS, parse_json,
                             parse_once_sql, validate, validation_sql)
from bench import fuzz
from contract.keys import pseudonym
from contract.paths import PROJECT_ROOT
from jobs.runtime import job_jars
from udfs.features import Event, parse_events

NOW = int(time.time()) * 1000 + 987  # a millisecond part, so a rule that drops it is caught
GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "view", "ts": NOW - 1000}
# the config's events section lowered and widened, as for MovieLens 100K (1997-98)
LOWERED = {"min_ts_ms": 874_724_710_000, "max_future_ms": 2 * MAX_FUTURE_MS}
# one value of each JSON type
EACH_TYPE = ["x", 7, 2.5, True, None, {"a": 1}, ["a"]]


def variants() -> list[bytes]:
    out = [json.dumps(GOOD)]
    # every JSON type, or none, in every field the job reads: the JVM's t_* types and the rule
    # table's accepted types agree with Python's
    for field in JSON_FIELDS:
        out += [json.dumps({**GOOD, field: v}) for v in EACH_TYPE]
        out.append(json.dumps({k: v for k, v in GOOD.items() if k != field}))
    for field, values in {
        "event_id": [42, 4.5, -0.0, 1e20, "", "a b", "x" * 65, "é", "42"],
        "user_id": [False, [], 10**30, "ok:.-_", "u1\n", "u1\n\n", "\nu1", "u" * 64, "u" * 64 + "\n"],
        "item_id": [3, 1e-5, "3"],
        "type": [1, "VIEW", "purchase", None],
        "ts": [str(NOW), float(NOW), True, -1, 12, NOW + 10**9, 1e20, "now", None, NOW * 1000,
               NOW + MAX_FUTURE_MS, NOW + MAX_FUTURE_MS + 1, MIN_TS_MS, MIN_TS_MS - 1,
               LOWERED["min_ts_ms"], LOWERED["min_ts_ms"] - 1, NOW + LOWERED["max_future_ms"],
               NOW + LOWERED["max_future_ms"] + 1],
        "value": [0, 12.5, "3", -0.5, True, None, {"v": 1}, 1e308],
        "category": [5, 1e20, False, {"c": 1}, "a|b", ""],
        "consent": [False, "false", "FALSE", 0, None, "no"],
        "request_id": ["ab" * 16, "", "r 1", "r1\n", 7, None, ["r1"]],
    }.items():
        for v in values:
            out.append(json.dumps({**GOOD, field: v}))
    # users' requests: no item_id needed (one given is not checked, nor kept), the rest as for events
    request = {k: v for k, v in GOOD.items() if k != "item_id"}
    out += [json.dumps({**request, "type": t}) for t in ("erase", "opt_out", "opt_in", "ERASE", "opt-out")]
    out += [json.dumps({**request, "type": "erase", **extra}) for extra in (
        {"item_id": "a|b"}, {"item_id": None}, {"user_id": "a b"}, {"event_id": None}, {"ts": "now"},
        {"value": -1}, {"consent": False}, {"category": "c|1"})]
    out += [json.dumps({**GOOD, "item_id": None, "type": t}) for t in (["erase"], {"erase": 1}, None)]
    out += ["", "null", "[]", "7", '"text"', "{not json", '{"event_id": "e1"} trailing',
            json.dumps({k: v for k, v in GOOD.items() if k != "ts"}), '{"event_id":"e1","event_id":"e 2"}',
            f'{{"ts": 1, "ts": {NOW}}}', f'{{"ts": {NOW}, "nested": {{"ts": 5}}}}', '{"ts": 9223372036854775808}',
            f'{{"ts": {NOW}}} trailing']
    # numbers as json.dumps cannot write them, and as Python reads them (CPython's 4,300-digit
    # limit on integers, no NaN or Infinity); as an id or a category a number is refused or
    # 'unknown', however it is written
    for field, texts in {
        "value": ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400, "1e308", "-0.0", "1E2"],
        "category": ["1E2", "1e400", "1" + "0" * 30, "-0", "NaN"],
        "event_id": ["1E-4", "1e400", "1" + "0" * 4299, "1" + "0" * 4300, "-" + "1" * 4300, "-" + "1" * 4301],
        "context": ["[1" + "0" * 4400 + "]", '{"n": 1' + "0" * 2000 + "}", '{"n": [1.' + "5" * 5000 + "]}",
                    "[" * 3000 + "]" * 3000, "[Infinity]",
                    # nesting around MAX_JSON_DEPTH (the record's object is depth 1), and brackets in a string
                    "[" * 511 + "]" * 511, "[" * 512 + "]" * 512, '{"a": ' * 511 + "1" + "}" * 511,
                    '{"a": ' * 512 + "1" + "}" * 512, "[" * 700 + "]" * 700, json.dumps("[" * 600)],
    }.items():
        for text in texts:
            out.append(json.dumps(GOOD)[:-1] + f', "{field}": {text}}}')
    # bytes as a producer may send them: UTF-8 or not (parse_json decodes bytes as UTF-8 with
    # surrogates let through, and skips a BOM)
    good = json.dumps(GOOD).encode()
    raw = [good[:-1] + b', "category": "' + text + b'"}' for text in (
        b"caf\xc3\xa9", b"caf\xe9", b"\xed\xa0\x80x", b"\xc0\xaf", b"\xe0\x80\x80", b"\xf4\x90\x80\x80",
        b"\xf0\x9f\x98\x80", b"\xe2\x82", b"\xff")]
    raw += [good[:-1] + b', "context": {"\xfe": 1}}', good[:-1] + b', "context": "ok\x80"}', b"\xef\xbb\xbf" + good,
            good + b"\xc3"]
    # other encodings json.loads would guess from zero bytes (not JSON between systems, RFC 8259)
    raw += [json.dumps(GOOD).encode(enc) for enc in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le")]
    raw += [json.dumps({**GOOD, "category": "café"}).encode("utf-16-le"), good + b"\x00", b"\x00" + good]
    return [r.encode() for r in out] + raw


def python_ts(raw: bytes) -> int | None:
    """`ts` as event_time_ms must read it: a JSON integer that fits a BIGINT (last key wins), else None."""
    try:
        doc = parse_json(raw)
    except (ValueError, RecursionError):
        return None
    ts = doc.get("ts") if isinstance(doc, dict) else None
    return ts if type(ts) is int and -2**63 <= ts < 2**63 else None


def python_reason(raw: bytes, **bounds: int) -> str | None:
    try:
        validate(raw, NOW, **bounds)
        return None
    except InvalidEvent as e:
        return e.reason


def row_of(**fields):
    return DataTypes.ROW([DataTypes.FIELD(name, t) for name, t in fields.items()])


def records_type():
    return row_of(n=DataTypes.BIGINT(), payload=DataTypes.BYTES())


def batch_env():
    """A batch TableEnvironment with the job's JVM functions registered."""
    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    t_env.get_config().set("pipeline.jars", ";".join(p.as_uri() for p in job_jars()))
    for ddl in JVM_FUNCTIONS:
        t_env.execute_sql(ddl)
    return t_env


def test_sql_validation_equals_python_validation():
    t_env = batch_env()
    records = variants()
    t_env.create_temporary_view("raw_records", t_env.from_elements(
        [(i, bytearray(r), NOW) for i, r in enumerate(records)],
        row_of(n=DataTypes.BIGINT(), payload=DataTypes.BYTES(), ingest_ms=DataTypes.BIGINT())))
    # as the Kafka source gives it: the record timestamp as a TIMESTAMP_LTZ(3)
    t_env.create_temporary_view("records", t_env.sql_query(
        f"SELECT n, payload, {KAFKA_TS_MS_SQL} AS kafka_ts_ms "
        "FROM (SELECT n, payload, TO_TIMESTAMP_LTZ(ingest_ms, 3) AS kafka_ts FROM raw_records)"))
    # the Java function's row and the contract name the same columns, in the same order
    row_type = t_env.sql_query("SELECT parse_interaction(CAST('{}' AS BYTES)) AS j").get_schema().get_field_data_types()[0]
    assert tuple(row_type.field_names()) == PARSE_COLUMNS
    reasons = f"{validation_sql('kafka_ts_ms')}, {validation_sql('kafka_ts_ms', **LOWERED)}"
    with t_env.execute_sql(f"SELECT n, {reasons} FROM ({parse_once_sql('records', ('n', 'kafka_ts_ms'))})").collect() as rows:
        got = [(row[0], row[1], row[2]) for row in rows]
    sql, lowered = {n: r for n, r, _ in got}, {n: r for n, _, r in got}
    mismatches = {records[n]: (sql[n], python_reason(records[n])) for n in sql if sql[n] != python_reason(records[n])}
    assert len(sql) == len(records) and mismatches == {}
    # with the bounds lowered (events.min_ts_ms, events.max_future_s) the two still agree
    mismatches = {records[n]: (lowered[n], python_reason(records[n], **LOWERED)) for n in lowered
                  if lowered[n] != python_reason(records[n], **LOWERED)}
    assert mismatches == {} and sum(sql[n] == "bad_ts" and lowered[n] is None for n in sql) == 4
    # every reason is one the contract lists (the job's per-reason metrics count these), and the
    # variants reach each of them
    assert set(sql.values()) - {None} == set(DLQ_REASONS)
    with t_env.execute_sql("SELECT n, event_time_ms(payload) FROM records").collect() as rows:
        ts = {row[0]: row[1] for row in rows}
    assert {records[n]: ts[n] for n in ts if ts[n] != python_ts(records[n])} == {}
    assert sum(v is not None for v in ts.values()) > len(records) // 2  # most variants keep a valid ts


def test_sql_event_line_reads_back_as_python_validation_reads_the_record():
    """For every valid variant, the line the job hands Python (EVENT_LINE_SQL), read by
    parse_events, is the event Python's validator makes of the same record: category rule,
    consent rule, ts and value texts."""
    t_env = batch_env()
    extra = [json.dumps({**GOOD, "category": c}) for c in ("a;b|c", "plain", 7, "Ünïcode", "\ud800x", "a\udc00",
                                                             "\ud83d\ude00ok", 1e20, 1e-5)]
    extra += [json.dumps({**GOOD, "value": v}) for v in (0.1, 3, 1e-7, 123456789.125, None)]
    extra += [json.dumps({**GOOD, "consent": c}) for c in (True, "False", "fAlSe", "true", 1)]
    extra = [e.encode() for e in extra] + [json.dumps(GOOD, ensure_ascii=False)[:-1].encode() + b', "category": "\xc3\x9cml\xc3\xa4ut"}']
    valid = [r for r in variants() + extra if python_reason(r) is None]
    t_env.create_temporary_view("records", t_env.from_elements([(i, bytearray(r)) for i, r in enumerate(valid)], records_type()))
    with t_env.execute_sql(f"SELECT n, {EVENT_LINE_SQL} FROM ({parse_once_sql('records', ('n',))})").collect() as rows:
        lines = {row[0]: row[1] for row in rows}
    assert len(lines) == len(valid) > 30
    wrong = {}
    for n, raw in enumerate(valid):
        i = validate(raw, NOW)
        want = Event(i.event_id, i.type, i.item_id, i.category, i.ts, i.value, i.consent)
        got = parse_events(lines[n])
        if got != [want]:
            wrong[raw] = (lines[n], want)
    assert wrong == {}


def test_generated_records_get_the_same_reason_from_python_and_the_job():
    """Hypothesis-generated records (bench.fuzz's strategy: every field any JSON or absent, odd
    numbers, cuts, flipped bytes, UTF-16, raw bytes), beyond the hand-picked variants above."""
    report = fuzz.fuzz_validation(seconds=120, max_inputs=1500)
    assert report["inputs"] >= 500 and report["crashes"] == 0, report
    assert report["mismatches"] == 0, report.get("mismatch_examples")


def test_the_jvm_pseudonym_and_redaction_follow_contract_keys():
    """io.streamrank.udf.Pseudonym gives the shared vectors' pseudonyms (its key from the
    environment variable the SQL names), and RedactUser leaves no raw user id in a rejected record:
    a string, one cut short, a number, several, 100 KB ones; a record without a user_id value
    (which may hold the id anywhere) is withheld, its coordinates still in the DLQ entry."""
    vectors = json.loads((PROJECT_ROOT / "tests" / "vectors" / "pseudonym.json").read_text())
    key = vectors["key"].encode()
    t_env = batch_env()
    cases = vectors["cases"]
    t_env.create_temporary_view("ids", t_env.from_elements(
        [(n, c["user_id"]) for n, c in enumerate(cases)], row_of(n=DataTypes.BIGINT(), user_id=DataTypes.STRING())))
    with t_env.execute_sql("SELECT n, pseudonym(user_id, 'SR_TEST_PSEUDONYM_KEY') FROM ids").collect() as rows:
        assert {r[0]: r[1] for r in rows} == {n: c["pseudonym"] for n, c in enumerate(cases)}
    records = {
        '{"event_id": "e1", "user_id": "alice-77", "ts": 5}': ["alice-77"],
        '{"event_id": "e1", "user_id" :"bob.3': ["bob.3"],
        '{"user_id": 12345678, "item_id": "i1"}': ["12345678"],
        '{"user_id": "carol", "context": {"user_id": "carol"}}': ["carol", "carol"],
        '{"event_id": "e1", "item_id": "i1"}': [],
        'not json at all': [],
        '{"user_id": null, "item_id": "i1"}': [],
        # record-sized ids, plain and all escapes: the scan must not recurse per character
        '{"user_id": "' + "x" * 100_000 + '"}': ["x" * 100_000],
        '{"user_id": "' + '\\\"' * 40_000 + '", "ts": 1}': ['\\\"' * 40_000],
    }
    t_env.create_temporary_view("rejected", t_env.from_elements(
        [(n, r) for n, r in enumerate(records)], row_of(n=DataTypes.BIGINT(), record=DataTypes.STRING())))
    with t_env.execute_sql("SELECT n, redact_user(record, 'SR_TEST_PSEUDONYM_KEY') FROM rejected").collect() as rows:
        redacted = {r[0]: r[1] for r in rows}
    for n, (record, ids) in enumerate(records.items()):
        got = redacted[n]
        if not ids:
            assert got.startswith("(withheld under privacy.pseudonymize") and "src_offset" in got
        for raw in ids:
            assert raw not in got and f'"{pseudonym(raw, key)}"' in got, (record, got)
        assert not ids or got.count('"user_id"') == record.count('"user_id"')
