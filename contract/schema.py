"""Interaction event schema: the single definition the job, the simulator and training use.

An event on the `interactions` topic is a JSON object (key = user_id):

    {"event_id": str, "user_id": str, "item_id": str, "type": "view"|"click"|"add_to_cart"|"purchase",
     "ts": int (event time, epoch ms), "value": float? (price), "category": str?,
     "context": {...}?, "consent": bool?}

Unknown fields are kept. The Flink job validates with the SQL expression from `validation_sql`,
built from the same constants, so the rule lives here once.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
# A user's requests travel in the user's own event stream, as records whose type is one of these
# (no item_id): applied at their place in the user's events. erase forgets the history (features,
# items, categories, sessions, the list); opt_out erases and uses none of the user's events until
# opt_in. They are not interactions: the ledger does not count them, the `control` hash does.
CONTROL_ACTIONS: tuple[str, ...] = ("erase", "opt_out", "opt_in")
# why a record goes to the DLQ (validate and validation_sql give these; a test checks both)
DLQ_REASONS: tuple[str, ...] = ("not_json", "bad_event_id", "bad_user_id", "bad_item_id", "bad_type", "bad_ts",
                                "bad_value")
# Ids: 1-64 of these characters, and nothing else. '$' alone would let a trailing newline through in
# Python's re.match and in Java's find (Flink's REGEXP): Python uses fullmatch, Java gets '\z'
# (ID_PATTERN_JAVA); Go's RE2 (lookupd) reads '$' as the end of the text already.
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
ID_PATTERN_JAVA = ID_PATTERN.removesuffix("$") + r"\z"
_ID_RE = re.compile(ID_PATTERN)


def valid_id(v: str) -> bool:
    """An event, user or item id as every part of streamrank accepts it."""
    return _ID_RE.fullmatch(v) is not None


# Event times outside [MIN_TS_MS, ingest time + MAX_FUTURE_MS] are rejected: the defaults of
# the job config's events.min_ts_ms and events.max_future_s, which older logs lower. A ts below 0
# is never valid (validation_sql reads digits only; the config keeps min_ts_ms >= 0).
MIN_TS_MS = 946_684_800_000  # 2000-01-01
MAX_FUTURE_MS = 3_600_000


class InvalidEvent(ValueError):
    """An interaction record that cannot be used; `reason` is what the DLQ record carries."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Interaction:
    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: int
    value: float
    category: str
    consent: bool


def validate(raw: str | bytes, ingest_ts_ms: int | None = None, *, min_ts_ms: int = MIN_TS_MS,
             max_future_ms: int = MAX_FUTURE_MS) -> Interaction:
    """Parse and validate one raw record; raises InvalidEvent with the DLQ reason.

    `ts` must be at least min_ts_ms and, when the ingest time is known, at most max_future_ms
    after it (the job config's `events` section gives both). Mirrors `validation_sql` exactly
    (tests check both on the same records).
    """
    try:
        obj: Any = parse_json(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidEvent("not_json") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("not_json")
    control = obj.get("type") in CONTROL_ACTIONS
    for field in ("event_id", "user_id") if control else ("event_id", "user_id", "item_id"):
        v = obj.get(field)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or not valid_id(v):
            raise InvalidEvent(f"bad_{field}")
    if obj.get("type") not in EVENT_TYPES and not control:
        raise InvalidEvent("bad_type")
    ts = obj.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, int) or ts < min_ts_ms:
        raise InvalidEvent("bad_ts")
    if ingest_ts_ms is not None and ts > ingest_ts_ms + max_future_ms:
        raise InvalidEvent("bad_ts")
    value = obj.get("value", 0.0)
    if value is None:
        value = 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise InvalidEvent("bad_value")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float
        raise InvalidEvent("bad_value") from None
    if not math.isfinite(value):  # 1e400 reads as inf
        raise InvalidEvent("bad_value")
    category = sanitize_category(obj.get("category"))
    consent_raw = obj.get("consent", True)
    consent = not (consent_raw is False or (isinstance(consent_raw, str) and consent_raw.lower() == "false"))
    return Interaction(
        event_id=str(obj["event_id"]),
        user_id=str(obj["user_id"]),
        item_id="" if control else str(obj["item_id"]),
        type=obj["type"],
        ts=ts,
        value=value,
        category=str(category),
        consent=consent,
    )


def _not_json_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# The deepest nesting of arrays and objects a record may have (the top object is depth 1);
# jobs/java's parser (StreamReadConstraints.maxNestingDepth) has the same limit.
MAX_JSON_DEPTH = 512


def parse_json(raw: str | bytes) -> Any:
    """A record's JSON as the job's parser (jobs/java) reads it: json.loads, except that
    - NaN, Infinity and -Infinity, which json.loads takes but are not JSON (RFC 8259), are refused;
    - bytes must be UTF-8, as RFC 8259 requires between systems (a BOM is skipped and surrogates
      let through, as json.loads does). json.loads would also guess UTF-16 and UTF-32 from zero
      bytes; the job refuses any zero byte, which UTF-8 JSON never holds.
    - arrays and objects nest at most MAX_JSON_DEPTH deep. Python's own limit (its recursion limit,
      less the caller's stack) moves with the call site; the job's parser has a fixed one.
    Raises ValueError (RecursionError when nested beyond Python's recursion limit)."""
    if isinstance(raw, (bytes, bytearray)):
        raw = raw.decode("utf-8-sig", "surrogatepass")
    doc = json.loads(raw, parse_constant=_not_json_constant)
    # only a record with that many brackets can be that deep: a count at C speed first
    if raw.count("[") + raw.count("{") > MAX_JSON_DEPTH and _depth_over(doc, MAX_JSON_DEPTH):
        raise ValueError(f"JSON nested more than {MAX_JSON_DEPTH} deep")
    return doc


def _depth_over(doc: Any, limit: int) -> bool:
    stack = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def sanitize_category(category: object) -> str:
    """Categories travel inside Flink's per-window event lists, where '|' and ';' separate fields.
    Only strings and numbers name a category; anything else is 'unknown'."""
    if isinstance(category, bool) or not isinstance(category, (str, int, float)) or category == "":
        return "unknown"
    text = str(category)
    if not text.isascii():
        # a lone surrogate (JSON "\ud800") has no UTF-8 form: '?' for it, as the JVM encodes it
        text = text.encode("utf-8", "replace").decode("utf-8")
    return re.sub(r"[|;]", "_", text)


# a user's request (CONTROL_ACTIONS), over parse_once_sql's columns
CONTROL_SQL = f"COALESCE(t_type = 'string' AND j_type IN ({', '.join(repr(a) for a in CONTROL_ACTIONS)}), FALSE)"
# over parse_once_sql's columns; the same rule as sanitize_category (REPLACE, not a regex: this
# runs for every event)
CATEGORY_SQL = ("CASE WHEN t_category IN ('string', 'integer', 'float') AND j_category <> '' "
                "THEN REPLACE(REPLACE(j_category, '|', '_'), ';', '_') ELSE 'unknown' END")
# consent is withdrawn only by false or "false" (any case); the same rule as validate
CONSENT_SQL = ("CASE WHEN (t_consent = 'boolean' AND j_consent = 'false') OR "
               "(t_consent = 'string' AND LOWER(j_consent) = 'false') THEN '0' ELSE '1' END")
# A valid event as the line udfs.features.parse_events reads (Event.encode's fields), over
# parse_once_sql's columns. ts and value are the record's own number texts (validation has checked
# them; parse_events reads them with int() and float()), not numbers formatted back to text.
EVENT_LINE_SQL = (f"CONCAT_WS('|', j_event_id, j_type, CASE WHEN {CONTROL_SQL} THEN '' ELSE j_item_id END, "
                  f"{CATEGORY_SQL}, j_ts, COALESCE(j_value, '0'), {CONSENT_SQL})")

# The JSON fields the job reads, in the order of ParseInteraction's result row (jobs/java;
# tests/flink/test_validation_parity.py checks the two agree).
JSON_FIELDS = ("event_id", "user_id", "item_id", "type", "ts", "value", "category", "consent")
PARSE_COLUMNS = ("j_is_object", *(f"j_{f}" for f in JSON_FIELDS), *(f"t_{f}" for f in JSON_FIELDS))

PARSE_FUNCTION = ("CREATE TEMPORARY FUNCTION IF NOT EXISTS parse_interaction AS "
                  "'io.streamrank.udf.ParseInteraction' LANGUAGE JAVA")
# event_time_ms(payload): the top-level "ts" if it is a JSON integer (BIGINT), else NULL
EVENT_TIME_FUNCTION = ("CREATE TEMPORARY FUNCTION IF NOT EXISTS event_time_ms AS "
                       "'io.streamrank.udf.EventTimeMs' LANGUAGE JAVA")
# epoch_ms(TIMESTAMP_LTZ(3)): epoch milliseconds, exactly (Flink SQL has no built-in for it)
EPOCH_MS_FUNCTION = ("CREATE TEMPORARY FUNCTION IF NOT EXISTS epoch_ms AS "
                     "'io.streamrank.udf.EpochMillis' LANGUAGE JAVA")
# the JVM functions (jobs/java) the job's SQL calls, registered before it is planned
JVM_FUNCTIONS = (PARSE_FUNCTION, EVENT_TIME_FUNCTION, EPOCH_MS_FUNCTION)
# The Kafka record's timestamp in epoch ms: the ingest time of the "ts in the future" rule, as
# `validate(raw, ingest_ts_ms)` takes it in Python
KAFKA_TS_MS_SQL = "epoch_ms(kafka_ts)"


def parse_once_sql(source: str, keep: Sequence[str], raw: str = "payload") -> str:
    """The columns `keep` of `source` (a table or a parenthesized query) plus PARSE_COLUMNS: for
    each field the job reads, its text as `j_<field>` and its JSON type as `t_<field>`, and
    `j_is_object`; parsed once per record by the JVM function in jobs/java (registered with
    JVM_FUNCTIONS).

    Why a function: JFR showed the source thread 99% busy parsing JSON, because Flink's planner
    inlines deterministic projections into every consumer (DLQ, late, ledger, both windows): the
    plan held 146 JSON_VALUE calls. The function is declared non-deterministic, so it is computed
    in its own projection instead. Why the types: the rules below must see what Python's
    `validate` sees (a boolean id or a string ts is invalid), which JSON_VALUE's text loses.

    Why `keep` and not `*`: the parsed row `j` itself must not travel on. In a view read by several
    consumers the planner forwarded it, and copied the nested row for every record (JFR: 14% of the
    source thread)."""
    fields = ", ".join(f"j.{c} AS {c}" for c in PARSE_COLUMNS)
    return f"SELECT {', '.join(keep)}, {fields} FROM (SELECT *, parse_interaction({raw}) AS j FROM {source})"


def validation_sql(kafka_ts_ms: str = "kafka_ts_ms", *, min_ts_ms: int = MIN_TS_MS,
                   max_future_ms: int = MAX_FUTURE_MS) -> str:
    """The same rules as `validate` (with the same min_ts_ms and max_future_ms), as a Flink SQL
    CASE giving the reason or NULL (valid), over the columns of parse_once_sql."""
    types = ", ".join(f"'{t}'" for t in EVENT_TYPES + CONTROL_ACTIONS)
    flink_re = ID_PATTERN_JAVA

    id_checks = "\n".join(
        f"  WHEN {'NOT ' + CONTROL_SQL + ' AND ' if f == 'item_id' else ''}(t_{f} IS NULL OR "
        f"t_{f} NOT IN ('string', 'integer', 'float') OR NOT REGEXP(j_{f}, '{flink_re}')) THEN 'bad_{f}'"
        for f in ("event_id", "user_id", "item_id")
    )
    ts = "TRY_CAST(j_ts AS BIGINT)"
    # a finite number: a float or an integer beyond the largest double reads as +-Infinity
    value = "TRY_CAST(j_value AS DOUBLE)"
    return f"""CASE
  WHEN NOT j_is_object THEN 'not_json'
{id_checks}
  WHEN t_type IS NULL OR t_type <> 'string' OR j_type NOT IN ({types}) THEN 'bad_type'
  WHEN t_ts IS NULL OR t_ts <> 'integer' OR NOT REGEXP(j_ts, '^[0-9]{{1,15}}$') OR {ts} < {min_ts_ms}
       OR {ts} > {kafka_ts_ms} + {max_future_ms} THEN 'bad_ts'
  WHEN t_value IS NOT NULL AND t_value <> 'null'
       AND (t_value NOT IN ('integer', 'float') OR {value} IS NULL OR {value} < 0 OR {value} > {sys.float_info.max!r})
       THEN 'bad_value'
  ELSE CAST(NULL AS STRING)
END"""
