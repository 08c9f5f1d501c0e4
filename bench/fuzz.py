"""A bounded fuzzing campaign over every surface an outsider or a producer reaches, with the tools
made for it: Hypothesis generates records, configs and requests; schemathesis generates HTTP calls
from the gateway's OpenAPI document and GraphQL queries from its schema; Go's own fuzzer
(`go test -fuzz`) drives lookupd's codec, rules and stored-value decoding. The servers are real
processes (lookupd and `streamrank gateway`, over a real Redis); the event validator is checked
Python = SQL + Java, every generated record through the job's own functions in one Flink batch job.

Per surface it reports `inputs`, `crashes` (an exception the code does not define for bad input, a
process that died, a Go fuzz failure), `server_errors` (HTTP 5xx, gRPC INTERNAL/UNKNOWN),
`hangs` (no answer within --hang-s) and `slowest_ms`; the validator also `mismatches` (records
where Python and the job disagree). The last stdout line is JSON.

    .venv/bin/python -m bench.fuzz [--seconds 60] [--surfaces validation,config,...] [--hang-s 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import httpx
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
import redis
import requests
import schemathesis
from schemathesis import GenerationMode
# Loaded here, not lazily by from_url/from_dict: pytest rewrites schemathesis's modules (it is a
# pytest plugin) with ast.parse, whose recursion counter CPython 3.11 shares between threads
# (python/cpython#106905). Parsed while the campaign's threads ran, it raised SystemError in CI.
import schemathesis.specs.graphql.schemas  # noqa: F401
import schemathesis.specs.openapi.schemas  # noqa: F401
from tqdm import tqdm

from contract import keys
from contract.config import ConfigError, JobConfig, _section_of, load_config
from contract.paths import PROJECT_ROOT
from contract.schema import (EVENT_TYPES, ID_PATTERN, JSON_FIELDS, JVM_FUNCTIONS, KAFKA_TS_MS_SQL, MAX_FUTURE_MS,
                             InvalidEvent, parse_once_sql, validate, validation_sql)
from contract.serving_config import ServingConfig, load_serving_config
from devstack.stack import free_port, port_open, start_redis, stop_pid
from jobs.runtime import job_jars
from serving import lookup
from serving.server import pb

NOW = int(time.time()) * 1000 + 987


@dataclass
class Tally:
    """One surface's outcome; `examples` keeps a few failing inputs (repr, shortened) to start from."""
    inputs: int = 0
    crashes: int = 0
    server_errors: int = 0
    hangs: int = 0
    slowest_ms: float | None = 0.0
    examples: list[str] = field(default_factory=list)

    def timed(self, ms: float) -> None:
        self.inputs += 1
        self.slowest_ms = max(self.slowest_ms or 0.0, ms)

    def failed(self, kind: str, what: object) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {repr(what)[:300]}")

    def report(self) -> dict:
        out = asdict(self)
        out["slowest_ms"] = None if self.slowest_ms is None else round(self.slowest_ms, 2)
        if not out["examples"]:
            del out["examples"]
        return out


class _TimeUp(Exception):
    """Ends a Hypothesis run when its time is spent (no failure: the tally says what happened)."""


def campaign(strategy: st.SearchStrategy, run: Callable[[object], None], seconds: float, max_inputs: int,
             desc: str) -> None:
    """Feeds generated values to run() until `seconds` pass or max_inputs are generated. run()
    tallies failures itself and never raises, so generation goes on past a failing input (no
    shrinking: a campaign counts, a test narrows down)."""
    stop_at = time.monotonic() + seconds
    bar = tqdm(total=max_inputs, desc=desc, unit="input", mininterval=2, leave=False, file=sys.stderr)

    @settings(max_examples=max_inputs, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def feed(value) -> None:
        if time.monotonic() > stop_at:
            raise _TimeUp
        run(value)
        bar.update()

    try:
        feed()
    except _TimeUp:
        pass
    finally:
        bar.close()


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


# ---- records: what producers put on the interactions topic -------------------------------------

_scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=12))
json_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)
_ids = st.from_regex(ID_PATTERN, fullmatch=True) | st.text(max_size=70) | json_values
_fields = {
    "event_id": _ids, "user_id": _ids, "item_id": _ids,
    "type": st.sampled_from([*EVENT_TYPES, "erase", "opt_out", "opt_in", "VIEW", ""]) | json_values,
    "ts": (st.integers(NOW - 10**12, NOW + 2 * MAX_FUTURE_MS) | st.integers(-2**64, 2**64)
           | st.floats(allow_nan=False) | json_values),
    "value": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**6, 10**25) | json_values,
    "category": st.text(max_size=12) | json_values,
    "consent": st.booleans() | st.sampled_from(["false", "FALSE", "False", "no", "true"]) | json_values,
}
_odd_numbers = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0.0", "1E2", "1" + "0" * 30,
                                "9223372036854775808", "-9223372036854775809", "1.5e-320"])


@st.composite
def records(draw) -> bytes:
    """A record as producers send it: mostly near the schema (each field any JSON, or absent),
    then maybe a number json.dumps cannot write, a cut, a flipped byte, or another encoding."""
    doc = draw(st.fixed_dictionaries({}, optional=_fields))
    if draw(st.booleans()):
        doc.setdefault("event_id", "e1"), doc.setdefault("user_id", "u1"), doc.setdefault("item_id", "i1")
        doc.setdefault("type", "view"), doc.setdefault("ts", NOW - 1000)
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    how = draw(st.sampled_from(["as-is"] * 4 + ["odd-number", "cut", "flip", "utf-16", "raw-bytes"]))
    if how == "odd-number" and text.endswith("}") and len(text) > 2:
        key = draw(st.sampled_from(JSON_FIELDS))
        text = text[:-1] + f', "{key}": {draw(_odd_numbers)}}}'
    data = text.encode("utf-8", "surrogatepass")
    if how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "flip" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    elif how == "utf-16":
        data = text.encode("utf-16", "surrogatepass")
    elif how == "raw-bytes":
        data = draw(st.binary(max_size=80))
    return data


def python_reason(raw: bytes, tally: Tally | None = None) -> str | None:
    """The DLQ reason contract.schema.validate gives (None: valid); anything but InvalidEvent is a crash."""
    try:
        validate(raw, NOW)
        return None
    except InvalidEvent as e:
        return e.reason
    except Exception as e:  # noqa: BLE001 (counting what escapes is the point)
        if tally is not None:
            tally.failed("crashes", (raw, e))
        return "<crash>"


def job_reasons(records_: list[bytes]) -> list[str | None]:
    """The job's reason for each record: the JVM parse_interaction function and the SQL CASE
    generated from the rule table, in one Flink batch job (the record timestamp is NOW). PyFlink is
    imported here: the other surfaces do not need a JVM."""
    from pyflink.table import DataTypes, EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    t_env.get_config().set("pipeline.jars", ";".join(p.as_uri() for p in job_jars()))
    for ddl in JVM_FUNCTIONS:
        t_env.execute_sql(ddl)
    row = DataTypes.ROW([DataTypes.FIELD("n", DataTypes.BIGINT()), DataTypes.FIELD("payload", DataTypes.BYTES()),
                         DataTypes.FIELD("ingest_ms", DataTypes.BIGINT())])
    t_env.create_temporary_view("raw_records", t_env.from_elements(
        [(i, bytearray(r), NOW) for i, r in enumerate(records_)], row))
    t_env.create_temporary_view("records", t_env.sql_query(
        f"SELECT n, payload, {KAFKA_TS_MS_SQL} AS kafka_ts_ms "
        "FROM (SELECT n, payload, TO_TIMESTAMP_LTZ(ingest_ms, 3) AS kafka_ts FROM raw_records)"))
    query = f"SELECT n, {validation_sql('kafka_ts_ms')} FROM ({parse_once_sql('records', ('n', 'kafka_ts_ms'))})"
    out: list[str | None] = [None] * len(records_)
    with t_env.execute_sql(query).collect() as rows:
        for r in rows:
            out[r[0]] = r[1]
    return out


def fuzz_validation(seconds: float, max_inputs: int, with_job: bool = True) -> dict:
    """Generated records through Python's validator (timed one by one), then all of them through
    the job's JVM function and SQL; `mismatches` counts records whose reasons differ."""
    tally, seen = Tally(), []

    def run(raw: bytes) -> None:
        t0 = time.perf_counter()
        reason = python_reason(raw, tally)
        tally.timed(_ms_since(t0))
        seen.append((raw, reason))

    campaign(records(), run, seconds, max_inputs, "validation")
    report = tally.report()
    if with_job and seen:
        t0 = time.perf_counter()
        try:
            sql = job_reasons([raw for raw, _ in seen])
        except Exception as e:  # noqa: BLE001
            tally.failed("crashes", ("the Flink batch job failed", e))
            sql = [r for _, r in seen]
        wrong = [(raw, py, j) for (raw, py), j in zip(seen, sql) if py != j]
        report = tally.report()
        report.update(mismatches=len(wrong), job_ms=round(_ms_since(t0)))
        if wrong:
            report["mismatch_examples"] = [repr(w)[:300] for w in wrong[:5]]
    return report


# ---- config files: what data engineers write ----------------------------------------------------

def _toml_scalar(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_scalar(x) for x in v) + "]"
    return json.dumps(v)


def _names(model) -> list[str]:
    """Dotted field names of a config model, sections walked (for generating near-valid files)."""
    out = []
    for name, f in model.model_fields.items():
        section = _section_of(f.annotation)
        out += [f"{name}.{sub}" for sub in _names(section)] if section is not None else [name]
    return out


_JOB_NAMES, _SERVING_NAMES = _names(JobConfig), _names(ServingConfig)
_config_values = (st.integers(-2**40, 2**40) | st.floats() | st.booleans() | st.text(max_size=20)
                  | st.lists(st.floats(allow_nan=False) | st.integers(-5, 5), max_size=3))


@st.composite
def config_files(draw) -> tuple[str, bytes]:
    """('job' or 'serving', the file's bytes): known fields with any values, unknown fields, broken TOML."""
    which = draw(st.sampled_from(["job", "serving"]))
    names = _JOB_NAMES if which == "job" else _SERVING_NAMES
    chosen = draw(st.dictionaries(st.sampled_from(names) | st.text("abcdefg._", min_size=1, max_size=12),
                                  _config_values, max_size=4))
    sections: dict[str, list[str]] = {}
    for dotted, value in chosen.items():
        section, _, key = dotted.rpartition(".")
        sections.setdefault(section, []).append(f"{json.dumps(key)} = {_toml_scalar(value)}")
    text = "\n".join(sections.pop("", [])) + "\n" + "\n".join(
        f"[{s}]\n" + "\n".join(lines) for s, lines in sections.items() if s and ".." not in s and not s.startswith("."))
    data = text.encode()
    how = draw(st.sampled_from(["as-is"] * 3 + ["cut", "binary"]))
    if how == "cut":
        data = data[: draw(st.integers(0, len(data)))]
    elif how == "binary":
        data = draw(st.binary(max_size=60))
    return which, data


def fuzz_config(seconds: float, max_inputs: int) -> dict:
    """Generated config files through load_config / load_serving_config: a ConfigError (exit 2
    with the field and the fix) is the answer; any other exception is a crash."""
    tally = Tally()
    folder = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
    path = folder / "config.toml"

    def run(value: tuple[str, bytes]) -> None:
        which, data = value
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            (load_config if which == "job" else load_serving_config)(path)
        except ConfigError:
            pass
        except Exception as e:  # noqa: BLE001
            tally.failed("crashes", (which, data, e))
        tally.timed(_ms_since(t0))

    campaign(config_files(), run, seconds, max_inputs, "config")
    return tally.report()


# ---- the lookup rules, in process ---------------------------------------------------------------

_texts = st.text(max_size=70) | st.from_regex(ID_PATTERN, fullmatch=True)
_items = st.lists(st.builds(keys.ScoredItem, st.text(max_size=8), st.floats(allow_nan=False, allow_infinity=False),
                            st.sampled_from(["", "c1", "c2"])), max_size=30)


def fuzz_lookup_core(seconds: float, max_inputs: int) -> dict:
    """serving.lookup's rules and answer on generated requests over generated stored lists:
    InvalidRequest is the answer to a bad request; otherwise the answer keeps k and the filters."""
    tally = Tally()
    requests = st.tuples(_texts, st.integers(-5, 2000), st.lists(st.sampled_from(["c1", "c2", "x"]), max_size=3),
                         st.lists(_texts, max_size=5), st.text(max_size=80), _items, st.booleans())

    def run(value) -> None:
        user, k, include, exclude_items, placement, items, found = value
        t0 = time.perf_counter()
        try:
            req = lookup.check_request(user, k, 10, 100, lookup.filters_of(include, (), exclude_items), placement)
            raw = keys.RecList(items, "v1", NOW - 5, NOW).encode().encode() if found else None
            out = lookup.answer(req, raw, items, NOW)
            if len(out.items) > req.k or any(not req.filters.keep(i) for i in out.items):
                tally.failed("crashes", ("an answer broke k or the filters", value))
        except lookup.InvalidRequest:
            pass
        except Exception as e:  # noqa: BLE001
            tally.failed("crashes", (value, e))
        tally.timed(_ms_since(t0))

    campaign(requests, run, seconds, max_inputs, "lookup core")
    return tally.report()


# ---- lookupd with Go's fuzzer -------------------------------------------------------------------

GO_TARGETS = ("FuzzRequestCodec", "FuzzLookupRulesAndAnswer", "FuzzStoredProfile")


def fuzz_lookupd_go(seconds: float) -> dict:
    """Each Go fuzz target for seconds / 3; inputs are the fuzzer's execs. A failing input is
    written by Go under serving/lookupd/testdata/fuzz/ (keep it: `go test` replays it from then on)."""
    tally = Tally(slowest_ms=None)
    for target in GO_TARGETS:
        run = subprocess.run(["go", "test", "-run", "^$", "-fuzz", f"^{target}$", "-fuzztime",
                              f"{max(1, int(seconds / len(GO_TARGETS)))}s", "."],
                             cwd=PROJECT_ROOT / "serving" / "lookupd", capture_output=True, text=True)
        execs = [int(m) for m in re.findall(r"execs: (\d+)", run.stdout)]
        tally.inputs += execs[-1] if execs else 0
        if run.returncode != 0:
            kind = "hangs" if "hang" in run.stdout or "timed out" in run.stdout else "crashes"
            tally.failed(kind, (target, run.stdout[-1500:] + run.stderr[-500:]))
    return tally.report()


# ---- the real services: lookupd over gRPC, the gateway over HTTP ---------------------------------

@contextmanager
def services(work: Path, hang_s: float) -> Iterator[dict]:
    """Redis with one user's list and profile, lookupd (`streamrank serve`) and `streamrank
    gateway` as their own processes, introspection on for schemathesis."""
    redis_svc = start_redis(work, free_port(), durable=False)
    procs: list[subprocess.Popen] = []
    try:
        r = redis.Redis(port=redis_svc.port)
        r.set(keys.rec_key("u1"), keys.RecList([keys.ScoredItem(f"i{n}", 1 - n / 10, "c1") for n in range(10)],
                                               "v1", NOW, NOW).encode())
        r.set(keys.profile_key("u1"), keys.Profile({"views_1h": 3.0}, ["c1"], NOW, NOW + 1).encode())
        r.zadd(keys.TRENDING, {f"t{n}": 10 - n for n in range(10)})
        grpc_port, http_port = free_port(), free_port()
        config = work / "serving.toml"
        config.write_text(f'engine = "go"\nport = {grpc_port}\nlog_format = "text"\n[redis]\nport = {redis_svc.port}\n'
                          f"[gateway]\nport = {http_port}\n[gateway.graphql]\nintrospection = true\n")
        for command in ("serve", "gateway"):
            with open(work / f"{command}.log", "wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "cli", command, "--config", str(config)],
                                              cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + 60
        while not (port_open(grpc_port) and port_open(http_port)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"the services did not start; see {work}/serve.log and gateway.log")
            time.sleep(0.1)
        yield {"grpc": f"127.0.0.1:{grpc_port}", "http": f"http://127.0.0.1:{http_port}", "procs": procs}
    finally:
        for p in procs:
            stop_pid(p.pid)
        stop_pid(redis_svc.pid)


def _alive(procs: list[subprocess.Popen], tally: Tally) -> bool:
    dead = [p.args for p in procs if p.poll() is not None]
    if dead:
        tally.failed("crashes", ("a service process died", dead))
    return not dead


def fuzz_grpc(target: str, procs: list[subprocess.Popen], seconds: float, max_inputs: int, hang_s: float) -> dict:
    """Generated requests to lookupd's three methods over the wire, as protobuf messages and as raw
    bytes; INTERNAL or UNKNOWN is a server error, no answer within hang_s a hang."""
    tally = Tally()
    channel = grpc.insecure_channel(target)
    methods = {m: channel.unary_unary(f"/streamrank.v1.Recommendations/{m}")
               for m in ("GetRecommendations", "BatchGetRecommendations", "GetUserFeatures")}
    one = st.builds(lambda u, k, p, inc, exc, items: pb.GetRecommendationsRequest(
        user_id=u, k=k, placement=p, filters=pb.Filters(include_categories=inc, exclude_categories=exc, exclude_items=items)),
        _texts, st.integers(0, 2**32 - 1), st.text(max_size=80), st.lists(st.text(max_size=10), max_size=120),
        st.lists(st.text(max_size=10), max_size=3), st.lists(st.text(max_size=10), max_size=1100))
    calls = st.one_of(
        st.tuples(st.just("GetRecommendations"), one.map(lambda m: m.SerializeToString())),
        st.tuples(st.just("BatchGetRecommendations"), st.lists(one, max_size=110).map(
            lambda ms: pb.BatchGetRecommendationsRequest(requests=ms).SerializeToString())),
        st.tuples(st.just("GetUserFeatures"), _texts.map(lambda u: pb.GetUserFeaturesRequest(user_id=u).SerializeToString())),
        st.tuples(st.sampled_from(sorted(methods)), st.binary(max_size=200)))

    def run(value) -> None:
        method, body = value
        t0 = time.perf_counter()
        try:
            methods[method](body, timeout=hang_s)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                tally.failed("server_errors", (method, body[:200], e.details()))
            elif e.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                tally.failed("hangs" if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED else "crashes",
                             (method, body[:200], e.details()))
        tally.timed(_ms_since(t0))

    campaign(calls, run, seconds, max_inputs, "gRPC")
    _alive(procs, tally)
    channel.close()
    return tally.report()


def fuzz_gateway(base: str, procs: list[subprocess.Popen], seconds: float, max_inputs: int, hang_s: float) -> dict:
    """schemathesis: every operation of the gateway's OpenAPI document, with schema-conforming and
    schema-breaking data, and generated GraphQL queries (the query limits answer the largest)."""
    tally = Tally()
    strategies = []
    for result in schemathesis.openapi.from_url(f"{base}/openapi.json").get_all_operations():
        op = result.ok()
        strategies += [op.as_strategy(generation_mode=mode).map(lambda case: (case, base))
                       for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)]
    introspection = httpx.post(f"{base}/graphql", json={"query": _INTROSPECTION}, timeout=30).json()["data"]
    for result in schemathesis.graphql.from_dict(introspection).get_all_operations():
        strategies.append(result.ok().as_strategy().map(lambda case: (case, f"{base}/graphql")))

    def run(value) -> None:
        case, url = value
        t0 = time.perf_counter()
        try:
            response = case.call(base_url=url, timeout=hang_s)
            if response.status_code >= 500:
                tally.failed("server_errors", (case.method, case.path, response.status_code, response.text[:200]))
        except requests.Timeout:
            tally.failed("hangs", (case.method, case.path))
        except requests.ConnectionError as e:
            tally.failed("crashes", (case.method, case.path, e))
        tally.timed(_ms_since(t0))

    campaign(st.one_of(strategies), run, seconds, max_inputs, "gateway")
    _alive(procs, tally)
    return tally.report()


_INTROSPECTION = """query { __schema { queryType { name } mutationType { name } subscriptionType { name }
  types { ...T } directives { name locations args { ...V } } } }
fragment T on __Type { kind name fields(includeDeprecated: true) { name args { ...V } type { ...R } isDeprecated }
  inputFields { ...V } interfaces { ...R } enumValues(includeDeprecated: true) { name isDeprecated } possibleTypes { ...R } }
fragment V on __InputValue { name type { ...R } defaultValue }
fragment R on __Type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } }"""


SURFACES = ("validation", "config", "lookup_core", "lookupd_go", "grpc", "gateway")


def run_campaign(surfaces: tuple[str, ...], seconds: float, max_inputs: int, hang_s: float,
                 with_job: bool = True) -> dict:
    """Every surface asked for, `seconds` each (at most max_inputs generated inputs each)."""
    out: dict = {}
    for name in surfaces:
        if name == "validation":
            out[name] = fuzz_validation(seconds, max_inputs, with_job)
        elif name == "config":
            out[name] = fuzz_config(seconds, max_inputs)
        elif name == "lookup_core":
            out[name] = fuzz_lookup_core(seconds, max_inputs)
        elif name == "lookupd_go":
            out[name] = fuzz_lookupd_go(seconds)
    served = [s for s in surfaces if s in ("grpc", "gateway")]
    if served:
        with tempfile.TemporaryDirectory(prefix="fuzz-services-") as work, services(Path(work), hang_s) as svc:
            for name in served:
                out[name] = (fuzz_grpc(svc["grpc"], svc["procs"], seconds, max_inputs, hang_s) if name == "grpc"
                             else fuzz_gateway(svc["http"], svc["procs"], seconds, max_inputs, hang_s))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="time per surface (default 60)")
    p.add_argument("--max-inputs", type=int, default=10_000_000, help="most generated inputs per surface")
    p.add_argument("--surfaces", default=",".join(SURFACES), help=f"comma-separated, of {', '.join(SURFACES)}")
    p.add_argument("--hang-s", type=float, default=5.0, help="an input not answered in this long is a hang (default 5)")
    args = p.parse_args()
    surfaces = tuple(s.strip() for s in args.surfaces.split(",") if s.strip())
    unknown = set(surfaces) - set(SURFACES)
    if unknown:
        p.error(f"unknown surfaces {sorted(unknown)}; choose from {', '.join(SURFACES)}")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    t0 = time.monotonic()
    report = run_campaign(surfaces, args.seconds, args.max_inputs, args.hang_s)
    total = {k: sum(r.get(k) or 0 for r in report.values()) for k in ("inputs", "crashes", "server_errors", "hangs")}
    total["mismatches"] = sum(r.get("mismatches", 0) for r in report.values())
    print(json.dumps({"surfaces": report, "total": total, "seconds": round(time.monotonic() - t0)}))


if __name__ == "__main__":
    main()
