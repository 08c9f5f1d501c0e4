"""Interaction event schema: the single definition the job, the simulator and training use.

An event on the `interactions` topic is a JSON object (key = user_id):

    {"event_id": str, "user_id": str, "item_id": str, "type": "view"|"click"|"add_to_cart"|"purchase",
     "ts": int (event time, epoch ms), "value": float? (price), "category": str?,
     "context": {...}?, "consent": bool?, "request_id": str?}

Ids are JSON strings: a number where an id is expected is `bad_<field>` (ids are compared as text
everywhere, in Redis keys and lookups, and a number has no one text: 1e20, 1E+20,
100000000000000000000). A category is a non-empty JSON string: any other value (a number, a
boolean, null, an object, an array, "") reads as "unknown". Unknown fields are kept.

`RULES` is the validation, once: `validate` interprets it in Python and `validation_sql` generates
the Flink job's SQL from it, so the two cannot drift apart (tests check both on the same records).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

EVENT_TYPES: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
# A user's requests travel in the user's own event stream, as records whose type is one of these
# (no item_id): applied at their place in the user's events. erase forgets the history (features,
# items, categories, sessions, the list); opt_out erases and uses none of the user's events until
# opt_in. They are not interactions: the ledger does not count them, the `control` hash does.
CONTROL_ACTIONS: tuple[str, ...] = ("erase", "opt_out", "opt_in")
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


# The JSON types of a field's value, as parse_interaction (jobs/java) names them in its t_* columns,
# and the Python types json.loads gives for them (exactly these types: no subclasses, and bool is
# not an int here).
JSON_TYPES: dict[str, type] = {"string": str, "integer": int, "float": float, "boolean": bool,
                               "null": type(None), "object": dict, "array": list}

Check = Literal["record", "id", "one_of", "event_time", "amount"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One validation rule: a record that fails it goes to the DLQ with `reason`.

    A rule fails when `field` is missing, has a JSON type not in `json_types`, or fails `check`:
    "record": nothing more (field None: the record itself, which must be one JSON object);
    "id": valid_id; "one_of": one of `choices`; "event_time": an epoch ms at least the min ts and at
    most max_future after the ingest time; "amount": a finite number >= 0.
    `optional`: a missing field or JSON null passes. `requests_skip`: users' requests
    (CONTROL_ACTIONS) are not checked by it.
    """

    field: str | None
    reason: str
    json_types: tuple[str, ...]
    check: Check
    choices: tuple[str, ...] = ()
    optional: bool = False
    requests_skip: bool = False


# The validation, in the order the rules are checked: the first that fails gives the DLQ reason.
RULES: tuple[Rule, ...] = (
    Rule(None, "not_json", ("object",), "record"),
    Rule("event_id", "bad_event_id", ("string",), "id"),
    Rule("user_id", "bad_user_id", ("string",), "id"),
    Rule("item_id", "bad_item_id", ("string",), "id", requests_skip=True),  # a request names no item
    Rule("type", "bad_type", ("string",), "one_of", choices=EVENT_TYPES + CONTROL_ACTIONS),
    Rule("ts", "bad_ts", ("integer",), "event_time"),
    Rule("value", "bad_value", ("integer", "float"), "amount", optional=True),  # missing: 0.0
    # the answer (contract.exposures) the page showed: the engagement job credits it
    Rule("request_id", "bad_request_id", ("string",), "id", optional=True),
)
# why a record goes to the DLQ (the job counts records per reason)
DLQ_REASONS: tuple[str, ...] = tuple(r.reason for r in RULES)


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
    request_id: str = ""  # the exposure's, when the page sent it back


# What each check kind means, in Python (validate) and in SQL (validation_sql), side by side.
# Python: (rule, a value of an accepted JSON type, (min ts, latest ts or None)) -> whether it passes.
# SQL: (rule, its j_<field> column, (min ts, ingest-time column, max future ms)) -> a condition
# true when a value of an accepted JSON type fails.
PyCheck = Callable[[Rule, Any, tuple[int, int | None]], bool]
SqlCheck = Callable[[Rule, str, tuple[int, str, int]], str]


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _record_ok(rule: Rule, v: Any, bounds: tuple[int, int | None]) -> bool:
    return True  # its JSON type (object) is the whole rule


def _record_sql(rule: Rule, j: str, bounds: tuple[int, str, int]) -> str:
    return "NOT j_is_object"  # parse_interaction read the record as one JSON object, or not


def _id_ok(rule: Rule, v: Any, bounds: tuple[int, int | None]) -> bool:
    return valid_id(v)


def _id_sql(rule: Rule, j: str, bounds: tuple[int, str, int]) -> str:
    return f"NOT REGEXP({j}, {_sql_text(ID_PATTERN_JAVA)})"


def _one_of_ok(rule: Rule, v: Any, bounds: tuple[int, int | None]) -> bool:
    return v in rule.choices


def _one_of_sql(rule: Rule, j: str, bounds: tuple[int, str, int]) -> str:
    return f"{j} NOT IN ({', '.join(map(_sql_text, rule.choices))})"


def _event_time_ok(rule: Rule, v: Any, bounds: tuple[int, int | None]) -> bool:
    lowest, latest = bounds
    return v >= lowest and (latest is None or v <= latest)


def _event_time_sql(rule: Rule, j: str, bounds: tuple[int, str, int]) -> str:
    lowest, ingest, max_future_ms = bounds
    ts = f"TRY_CAST({j} AS BIGINT)"
    # digits only: no sign (a ts is never negative), and at most 15, so the cast cannot overflow
    return f"NOT REGEXP({j}, '^[0-9]{{1,15}}$') OR {ts} < {lowest}\n       OR {ts} > {ingest} + {max_future_ms}"


def _amount_ok(rule: Rule, v: Any, bounds: tuple[int, int | None]) -> bool:
    try:
        return v >= 0 and math.isfinite(float(v))  # 1e400 reads as inf
    except OverflowError:  # an integer beyond any float
        return False


def _amount_sql(rule: Rule, j: str, bounds: tuple[int, str, int]) -> str:
    # finite: a float or an integer beyond the largest double reads as +-Infinity
    value = f"TRY_CAST({j} AS DOUBLE)"
    return f"{value} IS NULL OR {value} < 0 OR {value} > {sys.float_info.max!r}"


CHECKS: dict[Check, tuple[PyCheck, SqlCheck]] = {
    "record": (_record_ok, _record_sql),
    "id": (_id_ok, _id_sql),
    "one_of": (_one_of_ok, _one_of_sql),
    "event_time": (_event_time_ok, _event_time_sql),
    "amount": (_amount_ok, _amount_sql),
}
_MISSING = object()  # a field the record does not have (JSON null is None)
_Step = tuple[str | None, frozenset[type], bool, PyCheck, Rule]


def _steps(requests: bool) -> tuple[_Step, ...]:
    """RULES as validate runs them, per record kind (resolved once: validate runs per event in
    offline replay)."""
    if RULES[0].check != "record":
        raise ValueError("RULES must begin with the record rule: the others read the record's fields")
    return tuple((r.field, frozenset(JSON_TYPES[t] for t in r.json_types), r.optional, CHECKS[r.check][0], r)
                 for r in RULES if not (requests and r.requests_skip))


_EVENT_STEPS, _REQUEST_STEPS = _steps(False), _steps(True)
_NOT_PARSED = object()


def validate(raw: str | bytes, ingest_ts_ms: int | None = None, *, min_ts_ms: int = MIN_TS_MS,
             max_future_ms: int = MAX_FUTURE_MS) -> Interaction:
    """Parse one raw record and check it against RULES; raises InvalidEvent with the DLQ reason.

    `ts` must be at least min_ts_ms and, when the ingest time is known, at most max_future_ms
    after it (the job config's `events` section gives both), as in `validation_sql`.
    """
    try:
        doc: Any = parse_json(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        doc = _NOT_PARSED
    kind = doc.get("type") if type(doc) is dict else None
    request = type(kind) is str and kind in CONTROL_ACTIONS
    bounds = (min_ts_ms, None if ingest_ts_ms is None else ingest_ts_ms + max_future_ms)
    for field, types, optional, ok, rule in _REQUEST_STEPS if request else _EVENT_STEPS:
        v = doc if field is None else doc.get(field, _MISSING)
        if optional and (v is _MISSING or v is None):
            continue
        if type(v) not in types or not ok(rule, v, bounds):
            raise InvalidEvent(rule.reason)
    value = doc.get("value")
    consent = doc.get("consent", True)
    return Interaction(
        event_id=doc["event_id"],
        user_id=doc["user_id"],
        item_id="" if request else doc["item_id"],
        type=kind,
        ts=doc["ts"],
        value=0.0 if value is None else float(value),
        category=sanitize_category(doc.get("category")),
        # withdrawn only by false or "false" (any case); CONSENT_SQL is the same rule
        consent=not (consent is False or (type(consent) is str and consent.lower() == "false")),
        request_id=doc.get("request_id") or "",
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
    """The category an event names: a non-empty string, with '|' and ';' replaced by '_' (they
    separate fields in Flink's per-window event lists); anything else is 'unknown'."""
    if not isinstance(category, str) or category == "":
        return "unknown"
    text = category
    if not text.isascii():
        # a lone surrogate (JSON "\ud800") has no UTF-8 form: '?' for it, as the JVM encodes it
        text = text.encode("utf-8", "replace").decode("utf-8")
    return re.sub(r"[|;]", "_", text)


# a user's request (CONTROL_ACTIONS), over parse_once_sql's columns
CONTROL_SQL = f"COALESCE(t_type = 'string' AND j_type IN ({', '.join(repr(a) for a in CONTROL_ACTIONS)}), FALSE)"
# over parse_once_sql's columns; the same rule as sanitize_category (REPLACE, not a regex: this
# runs for every event)
CATEGORY_SQL = ("CASE WHEN t_category = 'string' AND j_category <> '' "
                "THEN REPLACE(REPLACE(j_category, '|', '_'), ';', '_') ELSE 'unknown' END")
# consent is withdrawn only by false or "false" (any case), as validate reads it
CONSENT_SQL = ("CASE WHEN (t_consent = 'boolean' AND j_consent = 'false') OR "
               "(t_consent = 'string' AND LOWER(j_consent) = 'false') THEN '0' ELSE '1' END")
# A valid event as the line udfs.features.parse_events reads (Event.encode's fields), over
# parse_once_sql's columns. ts and value are the record's own number texts (validation has checked
# them; parse_events reads them with int() and float()), not numbers formatted back to text.
EVENT_TAIL_SQL = (f"CONCAT_WS('|', j_type, CASE WHEN {CONTROL_SQL} THEN '' ELSE j_item_id END, "
                  f"{CATEGORY_SQL}, j_ts, COALESCE(j_value, '0'), {CONSENT_SQL})")
EVENT_LINE_SQL = f"CONCAT_WS('|', j_event_id, {EVENT_TAIL_SQL})"
# An interaction quarantined in-stream ([quarantine]: a rate beyond human, an odd price) travels to the
# fold with its type marked, "q:view": counted in the ledger as quarantined and remembered against
# duplicates, but never folded into features or item statistics.
QUARANTINED = "q:"

# The JSON fields the job reads, in the order of ParseInteraction's result row (jobs/java;
# tests/flink/test_validation_parity.py checks the two agree).
JSON_FIELDS = ("event_id", "user_id", "item_id", "type", "ts", "value", "category", "consent", "request_id")
PARSE_COLUMNS = ("j_is_object", *(f"j_{f}" for f in JSON_FIELDS), *(f"t_{f}" for f in JSON_FIELDS))

PARSE_FUNCTION = ("CREATE TEMPORARY FUNCTION IF NOT EXISTS parse_interaction AS "
                  "'io.streamrank.udf.ParseInteraction' LANGUAGE JAVA")
# event_time_ms(payload): the top-level "ts" if it is a JSON integer (BIGINT), else NULL
EVENT_TIME_FUNCTION = ("CREATE TEMPORARY FUNCTION IF NOT EXISTS event_time_ms AS "
                       "'io.streamrank.udf.EventTimeMs' LANGUAGE JAVA")
# epoch_ms(TIMESTAMP_LTZ(3)): epoch milliseconds, exactly (Flink SQL has no built-in for it)
EPOCH_MS_FUNCTION = ("CREATE TEMPORARY FUNCTION IF NOT EXISTS epoch_ms AS "
                     "'io.streamrank.udf.EpochMillis' LANGUAGE JAVA")
# pseudonym(user_id, key_env) and redact_user(record, key_env): privacy.pseudonymize's id and
# rejected-record text, the key from the environment variable key_env names (contract.keys.pseudonym)
PSEUDONYM_FUNCTIONS = ("CREATE TEMPORARY FUNCTION IF NOT EXISTS pseudonym AS 'io.streamrank.udf.Pseudonym' LANGUAGE JAVA",
                       "CREATE TEMPORARY FUNCTION IF NOT EXISTS redact_user AS 'io.streamrank.udf.RedactUser' LANGUAGE JAVA")
# the JVM functions (jobs/java) the job's SQL calls, registered before it is planned
JVM_FUNCTIONS = (PARSE_FUNCTION, EVENT_TIME_FUNCTION, EPOCH_MS_FUNCTION, *PSEUDONYM_FUNCTIONS)
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
    `validate` sees (a number where an id is expected, or a string ts, is invalid), which
    JSON_VALUE's text loses.

    Why `keep` and not `*`: the parsed row `j` itself must not travel on. In a view read by several
    consumers the planner forwarded it, and copied the nested row for every record (JFR: 14% of the
    source thread)."""
    fields = ", ".join(f"j.{c} AS {c}" for c in PARSE_COLUMNS)
    return f"SELECT {', '.join(keep)}, {fields} FROM (SELECT *, parse_interaction({raw}) AS j FROM {source})"


def _sql_when(rule: Rule, bounds: tuple[int, str, int]) -> str:
    """The rule as a WHEN: its condition is what makes validate raise for it."""
    check = CHECKS[rule.check][1](rule, f"j_{rule.field}" if rule.field else "j_is_object", bounds)
    if rule.field is None:
        fails = check
    else:
        t = f"t_{rule.field}"  # NULL: the record has no such field
        types = ", ".join(map(_sql_text, rule.json_types))
        wrong = f"{t} <> {types} OR {check}" if len(rule.json_types) == 1 else f"{t} NOT IN ({types}) OR {check}"
        fails = f"{t} IS NOT NULL AND {t} <> 'null' AND ({wrong})" if rule.optional else f"{t} IS NULL OR {wrong}"
    if rule.requests_skip:
        fails = f"NOT {CONTROL_SQL} AND ({fails})"
    return f"  WHEN {fails} THEN {_sql_text(rule.reason)}"


def validation_sql(kafka_ts_ms: str = "kafka_ts_ms", *, min_ts_ms: int = MIN_TS_MS,
                   max_future_ms: int = MAX_FUTURE_MS) -> str:
    """RULES (with the same min_ts_ms and max_future_ms as `validate` takes) as a Flink SQL CASE
    giving the reason or NULL (valid), over the columns of parse_once_sql; `kafka_ts_ms` is the
    ingest time's column."""
    whens = "\n".join(_sql_when(rule, (min_ts_ms, kafka_ts_ms, max_future_ms)) for rule in RULES)
    return f"CASE\n{whens}\n  ELSE CAST(NULL AS STRING)\nEND"
