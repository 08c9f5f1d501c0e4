import json
import re
from typing import get_args

import pytest
from typer.testing import CliRunner

from cli.main import app
from contract import keys
from contract.editorial import load_rules
from contract.experiments import load_experiments
from contract.config import (ConfigError, FORMAT_PRESETS, FaultConfig, JobConfig, PRESETS, apply_overrides, load_config,
                             parse_config)
from contract.config_reference import config_reference
from contract.serving_config import load_serving_config
from contract.paths import PROJECT_ROOT
from contract.schema import (CHECKS, CONTROL_ACTIONS, DLQ_REASONS, RULES, Check, InvalidEvent, MAX_FUTURE_MS,
                             MAX_JSON_DEPTH, MIN_TS_MS, sanitize_category, validate, validation_sql)
from jobs.recommend import build, kafka_dlq_ddl, kafka_items_ddl, kafka_source_ddl
from jobs.faults import FaultInjector, InjectedFailure
from udfs.features import feature_names

GOOD = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1_700_000_000_000}


def test_valid_event_parses_with_defaults():
    ev = validate(json.dumps({**GOOD, "extra": {"kept": True}}))
    assert (ev.user_id, ev.type, ev.value, ev.category, ev.consent, ev.request_id) == (
        "u1", "click", 0.0, "unknown", True, "")
    assert validate(json.dumps({**GOOD, "request_id": "ab" * 16})).request_id == "ab" * 16
    assert validate(json.dumps({**GOOD, "request_id": None})).request_id == ""


@pytest.mark.parametrize(
    "record, reason",
    [
        (b"{not json", "not_json"),
        (json.dumps([1, 2]), "not_json"),
        (json.dumps({**GOOD, "user_id": ""}), "bad_user_id"),
        (json.dumps({**GOOD, "user_id": "has space"}), "bad_user_id"),
        (json.dumps({**GOOD, "user_id": "u1\n"}), "bad_user_id"),  # '$' alone would let it through
        (json.dumps({**GOOD, "item_id": "i" * 64 + "\n"}), "bad_item_id"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "event_id"}), "bad_event_id"),
        (json.dumps({**GOOD, "item_id": None}), "bad_item_id"),
        (json.dumps({**GOOD, "type": "teleport"}), "bad_type"),
        (json.dumps({**GOOD, "ts": "yesterday"}), "bad_ts"),
        (json.dumps({**GOOD, "ts": 12}), "bad_ts"),
        (json.dumps({**GOOD, "value": -5}), "bad_value"),
        (json.dumps({**GOOD, "value": "free"}), "bad_value"),
        (json.dumps({**GOOD, "request_id": 12}), "bad_request_id"),
        (json.dumps({**GOOD, "request_id": "two words"}), "bad_request_id"),
        (json.dumps({**GOOD, "request_id": ""}), "bad_request_id"),
        # not JSON, though json.loads takes them; a value must be a finite number
        (json.dumps({**GOOD, "value": float("nan")}), "not_json"),
        (json.dumps({**GOOD, "context": [float("-inf")]}), "not_json"),
        (json.dumps(GOOD)[:-1] + ', "value": 1e400}', "bad_value"),
        (json.dumps(GOOD)[:-1] + ', "value": 1' + "0" * 400 + "}", "bad_value"),  # was an OverflowError
        (json.dumps(GOOD)[:-1] + ', "context": ' + "[" * 5000 + "]" * 5000 + "}", "not_json"),  # was a RecursionError
        # UTF-8 only (json.loads guesses UTF-16/32 from zero bytes; the job refuses zero bytes)
        (json.dumps(GOOD).encode("utf-16-le"), "not_json"),
        (json.dumps({**GOOD, "category": "café"}).encode("utf-16"), "not_json"),
        (json.dumps(GOOD).encode("utf-32-be"), "not_json"),
        (json.dumps(GOOD).encode() + b"\x00", "not_json"),
    ],
)
def test_invalid_events_name_their_reason(record, reason):
    with pytest.raises(InvalidEvent) as err:
        validate(record)
    assert err.value.reason == reason


def test_utf8_with_a_bom_or_a_surrogate_is_read_as_json_loads_reads_it():
    assert validate(b"\xef\xbb\xbf" + json.dumps(GOOD).encode()).user_id == "u1"
    raw = json.dumps(GOOD).encode()[:-1] + b', "category": "x\xed\xa0\x80"}'  # surrogatepass, as json.loads
    assert validate(raw).category == json.loads(raw).get("category").encode("utf-8", "replace").decode()


def test_nesting_is_limited_to_max_json_depth_wherever_validate_is_called():
    def nested(n: int) -> str:  # the record's object is depth 1
        return json.dumps(GOOD)[:-1] + ', "context": ' + "[" * n + "]" * n + "}"

    assert validate(nested(MAX_JSON_DEPTH - 1)).user_id == "u1"
    assert validate(json.dumps({**GOOD, "context": "[" * 2 * MAX_JSON_DEPTH})).user_id == "u1"  # a string
    for n in (MAX_JSON_DEPTH, 700):  # 700: below Python's own limit, which moves with the call stack
        with pytest.raises(InvalidEvent, match="not_json"):
            validate(nested(n))


def test_future_event_rejected_against_ingest_time():
    with pytest.raises(InvalidEvent, match="bad_ts"):
        validate(json.dumps({**GOOD, "ts": 1_700_000_000_000 + 2 * 3600_000}), ingest_ts_ms=1_700_000_000_000)


def test_category_separators_are_replaced():
    assert sanitize_category("a|b;c") == "a_b_c"
    assert sanitize_category(None) == "unknown"


@pytest.mark.parametrize("field", ["event_id", "user_id", "item_id"])
def test_ids_are_json_strings(field):
    for number in (42, 4.5, 10**30, -0.0):
        with pytest.raises(InvalidEvent, match=f"bad_{field}"):
            validate(json.dumps({**GOOD, field: number}))
    assert getattr(validate(json.dumps({**GOOD, field: "42"})), field) == "42"


def test_only_a_non_empty_string_names_a_category():
    for v in (5, 1.5, True, None, {"c": 1}, ["c"], ""):
        assert validate(json.dumps({**GOOD, "category": v})).category == "unknown"
    assert validate(json.dumps({**GOOD, "category": "5"})).category == "5"


def test_category_with_a_lone_surrogate_is_utf8():
    """JSON may escape half a surrogate pair; such a category could not be stored (orjson refuses
    it) and the JVM writes '?' for it."""
    ev = validate(json.dumps({**GOOD, "category": "\ud800x\ud83d\ude00"}))
    assert ev.category == "?x\U0001f600"
    ev.category.encode("utf-8")


@pytest.mark.parametrize("path", sorted((PROJECT_ROOT / "deploy").rglob("*.toml")),
                         ids=lambda p: str(p.relative_to(PROJECT_ROOT / "deploy")))
def test_every_config_file_under_deploy_loads(path):
    if path.name.startswith("serving"):
        assert load_serving_config(path).max_k >= 1
    elif path.name.startswith("experiments"):
        assert load_experiments(path).experiments
    elif path.name.startswith("rules"):
        assert load_rules(path).rules
    else:
        assert load_config(path).scoring.top_k >= 1


def test_unknown_key_fails_naming_the_field():
    with pytest.raises(ConfigError, match=r"features\.micro_batch: unknown key"):
        parse_config({"features": {"micro_batch": 2}})


def test_negative_window_fails_naming_the_field():
    with pytest.raises(ConfigError, match=r"features\.micro_batch_s: .*greater than 0"):
        parse_config({"features": {"micro_batch_s": -1}})


def test_zero_half_life_fails_naming_the_field():
    with pytest.raises(ConfigError, match=r"features\.interest_half_life_s"):
        parse_config({"features": {"interest_half_life_s": 0}})


def test_rejected_delivery_exactly_once_writes_transactions_that_outlive_a_checkpoint():
    cfg = parse_config({"kafka": {"rejected_delivery": "exactly-once", "group_id": "g"}})
    ddl = kafka_dlq_ddl(cfg, "late_sink", "t.late")
    assert "'sink.delivery-guarantee' = 'exactly-once'" in ddl
    assert "'sink.transactional-id-prefix' = 'g-late_sink'" in ddl  # unique per job and sink
    assert "'properties.transaction.timeout.ms' = '900000'" in ddl  # the broker's default maximum
    default = kafka_dlq_ddl(parse_config({}))
    assert "'sink.delivery-guarantee' = 'at-least-once'" in default and "transactional" not in default
    with pytest.raises(ConfigError, match=r"kafka\.transaction_timeout_s must be longer than flink\.checkpoint_interval_s"):
        parse_config({"kafka": {"rejected_delivery": "exactly-once", "transaction_timeout_s": 10}})
    with pytest.raises(ConfigError, match=r"kafka\.rejected_delivery: .*'at-least-once' or 'exactly-once'"):
        parse_config({"kafka": {"rejected_delivery": "exactly_once"}})


def test_prometheus_port_is_a_port_or_a_range():
    assert parse_config({"flink": {"prometheus_port": 9249}}).flink.prometheus_port == "9249"  # TOML integer
    assert parse_config({"flink": {"prometheus_port": "9249-9258"}}).flink.prometheus_port == "9249-9258"
    assert parse_config({}).flink.prometheus_port == ""  # no reporter
    assert parse_config({"flink": {"web_port": "8081-8090"}}).flink.web_port == "8081-8090"
    with pytest.raises(ConfigError, match=r"flink\.web_port: .*a range such as"):
        parse_config({"flink": {"web_port": "8090-8081"}})
    for bad in ("http", "0", "9258-9249", "70000", "9249-"):
        with pytest.raises(ConfigError, match=r'flink\.prometheus_port: .*a range such as "9249-9259"'):
            parse_config({"flink": {"prometheus_port": bad}})


def test_stop_offsets_bound_the_source_and_exclude_bounded():
    cfg = parse_config({"kafka": {"stop_offsets": {"1": 7, "0": 42}}})
    assert "'scan.bounded.specific-offsets' = 'partition:0,offset:42;partition:1,offset:7'" in kafka_source_ddl(cfg)
    assert "'scan.bounded.mode' = 'latest-offset'" in kafka_items_ddl(cfg)  # the job can end
    with pytest.raises(ConfigError, match=r"kafka\.bounded and kafka\.stop_offsets both set"):
        parse_config({"kafka": {"stop_offsets": {"0": 1}, "bounded": True}})
    with pytest.raises(ConfigError, match=r"kafka\.stop_offsets\.0: .*greater than or equal to 0"):
        parse_config({"kafka": {"stop_offsets": {"0": -1}}})


def test_injected_failure_waits_until_armed(tmp_path):
    armed, marker = tmp_path / "armed", tmp_path / "fired"
    faults = FaultInjector(FaultConfig(fail_after_windows=3, marker_file=str(marker), armed_file=str(armed)))
    faults.before_batch(5)  # past the count, not armed: no failure
    armed.touch()
    with pytest.raises(InjectedFailure, match="after 6 windows"):
        faults.before_batch(1)
    faults.before_batch(1)  # fired once (the marker): the restarted job goes on
    assert marker.exists()


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_rec_list_round_trip():
    rec = keys.RecList([keys.ScoredItem("i1", 0.5), keys.ScoredItem("i2", 0.25)], "v0001", 123, 456)
    assert keys.RecList.decode(rec.encode()) == rec
    assert keys.rec_key("u1") == "rec:u1" and keys.feat_key("u1") == "feat:u1"


def test_config_reference_is_current():
    readme = PROJECT_ROOT / "deploy" / "config" / "README.md"
    assert readme.read_text() == config_reference(), \
        "regenerate it: .venv/bin/python -m contract.config_reference > deploy/config/README.md"
    assert "| `" + "micro_batch_s` | float > 0, <= 3600 | `2.0` |" in readme.read_text()


def test_unknown_keys_get_the_closest_field_named():
    with pytest.raises(ConfigError, match=r"flink\.paralelism: unknown key; did you mean 'parallelism'\?"):
        parse_config({"flink": {"paralelism": 2}})
    with pytest.raises(ConfigError, match=r"cache\.list_mb: unknown key; did you mean 'lists_mb'\?"):
        load_serving_config(None, {"cache.list_mb": 8})
    with pytest.raises(ConfigError, match=r"zzz: unknown key; remove it or check its spelling"):
        parse_config({"zzz": {}})


def test_config_check_command(tmp_path):
    ok = CliRunner().invoke(app, ["config", "check", str(PROJECT_ROOT / "deploy" / "config" / "local.toml")])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["flink"]["prometheus_port"] == "9249-9258"
    bad = tmp_path / "job.toml"
    bad.write_text("[features]\nmicro_batch = 2.0\n")
    out = CliRunner().invoke(app, ["config", "check", str(bad)])
    assert out.exit_code == 2 and "did you mean 'micro_batch_s'" in out.stderr
    serving = CliRunner().invoke(app, ["config", "check", "--serving", str(PROJECT_ROOT / "deploy" / "config" / "serving.toml")])
    assert serving.exit_code == 0 and json.loads(serving.stdout)["engine"] in ("go", "python")


def test_a_users_request_needs_no_item_and_keeps_none():
    base = {k: v for k, v in GOOD.items() if k != "item_id"}
    for kind in CONTROL_ACTIONS:
        ev = validate(json.dumps({**base, "type": kind, "item_id": "a|b"}))
        assert (ev.type, ev.item_id, ev.user_id) == (kind, "", "u1")
    with pytest.raises(InvalidEvent, match="bad_item_id"):
        validate(json.dumps({**base, "type": "ERASE"}))  # not a request: an event, without an item
    with pytest.raises(InvalidEvent, match="bad_user_id"):
        validate(json.dumps({**base, "type": "erase", "user_id": "a b"}))


def test_the_rule_table_gives_every_dlq_reason_and_both_validators_follow_it():
    assert tuple(r.reason for r in RULES) == DLQ_REASONS and len(set(DLQ_REASONS)) == len(DLQ_REASONS)
    assert set(CHECKS) == set(get_args(Check))  # every check kind has its Python and its SQL
    # the SQL: one WHEN per rule, in the table's order (the first that holds gives the reason)
    assert re.findall(r"THEN '(\w+)'", validation_sql()) == list(DLQ_REASONS)
    # Python: a record breaking every field rule gives the first rule's reason; mending the fields
    # one by one walks the table in its order
    with pytest.raises(InvalidEvent, match="not_json"):
        validate("[]")
    record = {"event_id": 1, "user_id": 1, "item_id": 1, "type": 1, "ts": "1", "value": "1", "request_id": 1}
    assert [r.field for r in RULES[1:]] == list(record)
    for rule in RULES[1:]:
        with pytest.raises(InvalidEvent) as err:
            validate(json.dumps(record))
        assert err.value.reason == rule.reason
        record[rule.field] = {**GOOD, "value": 2.5, "request_id": "r1"}[rule.field]
    assert validate(json.dumps(record)).value == 2.5


def test_group_offsets_start_a_new_group_at_the_earliest_offset():
    """Kafka's default for a group with no committed offsets is to fail; the cluster test's
    application-mode run read nothing without this."""
    assert "'properties.auto.offset.reset' = 'earliest'" in kafka_source_ddl(
        parse_config({"kafka": {"startup_mode": "group-offsets"}}))
    assert "auto.offset.reset" not in kafka_source_ddl(parse_config({}))


ML100K_FIRST_TS = 874_724_710_000  # MovieLens 100K's earliest rating (1997-09-20), in ms


def test_an_event_before_2000_is_bad_ts_unless_events_min_ts_ms_is_lowered():
    old = json.dumps({**GOOD, "ts": ML100K_FIRST_TS})
    with pytest.raises(InvalidEvent, match="bad_ts"):
        validate(old)
    events = parse_config({"events": {"min_ts_ms": ML100K_FIRST_TS, "max_future_s": 7200}}).events
    assert validate(old, min_ts_ms=events.min_ts_ms).ts == ML100K_FIRST_TS
    with pytest.raises(InvalidEvent, match="bad_ts"):
        validate(json.dumps({**GOOD, "ts": ML100K_FIRST_TS - 1}), min_ts_ms=events.min_ts_ms)
    two_hours_ahead = json.dumps({**GOOD, "ts": GOOD["ts"] + 7_200_000})
    assert validate(two_hours_ahead, GOOD["ts"], max_future_ms=events.max_future_ms).ts == GOOD["ts"] + 7_200_000
    defaults = parse_config({}).events  # the schema's constants stay the defaults' one source
    assert (defaults.min_ts_ms, defaults.max_future_ms) == (MIN_TS_MS, MAX_FUTURE_MS)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # build imports pyflink (no JVM is started)
def test_the_jobs_sql_takes_the_configs_event_time_bounds():
    assert f"< {MIN_TS_MS}\n" in validation_sql() and f"+ {MAX_FUTURE_MS} THEN 'bad_ts'" in validation_sql()
    sql = validation_sql(min_ts_ms=ML100K_FIRST_TS, max_future_ms=7_200_000)
    assert f"< {ML100K_FIRST_TS}\n" in sql and "kafka_ts_ms + 7200000 THEN 'bad_ts'" in sql
    cfg = parse_config({"events": {"min_ts_ms": ML100K_FIRST_TS, "max_future_s": 7200}})
    # the source's event time falls back to the same earliest time
    assert f"BETWEEN {ML100K_FIRST_TS} AND epoch_ms(kafka_ts) + 7200000 THEN" in kafka_source_ddl(cfg)

    class Recorder:  # stands in for the TableEnvironment and its StatementSet
        def __init__(self):
            self.statements = []

        def execute_sql(self, sql):
            self.statements.append(sql)

        def create_statement_set(self):
            return self

        def add_insert_sql(self, sql):
            self.statements.append(sql)

    t_env = Recorder()
    build(t_env, cfg, sources=False, sinks=False, python=False)
    checked = next(s for s in t_env.statements if "VIEW checked" in s)
    assert f"< {ML100K_FIRST_TS}\n" in checked and "kafka_ts_ms + 7200000 THEN 'bad_ts'" in checked


def test_negative_min_ts_ms_fails_naming_the_field():
    with pytest.raises(ConfigError, match=r"events\.min_ts_ms: .*greater than or equal to 0"):
        parse_config({"events": {"min_ts_ms": -1}})
    with pytest.raises(ConfigError, match=r"events\.max_future_s: .*greater than or equal to 0"):
        parse_config({"events": {"max_future_s": -1}})


def test_presets_load_override_the_file_and_name_the_choices(tmp_path):
    f = tmp_path / "job.toml"
    f.write_text("[features]\ninterest_half_life_s = 60.0\nmicro_batch_s = 4.0\n[redis]\nport = 7000\n")
    retail = load_config(f, None, "retail-purchases")
    assert retail.features.interest_half_life_s == 2_592_000.0  # the preset's key over the file's
    assert retail.features.micro_batch_s == 4.0 and retail.redis.port == 7000  # the rest of the file stays
    assert load_config(f, {"features.interest_half_life_s": 5.0}, "retail-purchases").features.interest_half_life_s == 5.0
    # the two regimes give the model different inputs: a model follows the preset it was trained with
    assert "ui_weight_365d" in feature_names(retail.features)
    assert feature_names(retail.features) != feature_names(load_config(f, None, "web-sessions").features)
    assert set(FORMAT_PRESETS.values()) <= set(PRESETS)
    with pytest.raises(ConfigError, match="web-sessions, retail-purchases"):
        load_config(f, None, "groceries")


def test_both_config_files_take_overrides_by_one_rule():
    """A dotted path walks into sections, and a mapping takes the rest as one key (Flink's own
    option names have dots); a wrong name is refused by its full path, in either file."""
    job = load_config(None, {"redis.port": 7000, "flink.extra.state.backend.type": "rocksdb",
                             "flink.extra.parallelism.default": 4, "flink.extra.pipeline.object-reuse": True})
    assert job.redis.port == 7000 and job.flink.extra == {"state.backend.type": "rocksdb", "parallelism.default": "4",
                                                          "pipeline.object-reuse": "true"}  # Flink's options are text
    with pytest.raises(ConfigError, match="redis"):  # a section that is not a table: refused, not a traceback
        parse_config(apply_overrides({"redis": 5}, {"redis.port": 1}, JobConfig))
    serving = load_serving_config(None, {"port": 1, "breaker.failures": 3, "gateway.port": 9, "redis.port": 7000})
    assert (serving.port, serving.breaker.failures, serving.gateway.port, serving.redis.port) == (1, 3, 9, 7000)
    for load, path in ((load_config, "redis.prot"), (load_serving_config, "breaker.fails"), (load_config, "nosuch.x")):
        with pytest.raises(ConfigError, match=re.escape(path)):
            load(None, {path: 1})


@pytest.mark.parametrize("serving", [False, True])
def test_config_check_of_a_binary_file_or_a_folder_says_so(tmp_path, serving):
    """a binary file gave a UnicodeDecodeError traceback (rc 1)."""
    binary = tmp_path / "job.toml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    flag = ["--serving"] if serving else []
    for path, says in ((binary, "is not UTF-8 text"), (tmp_path, "is a directory")):
        out = CliRunner().invoke(app, ["config", "check", *flag, str(path)])
        assert out.exit_code == 2 and says in out.stderr, out.output
        assert out.exception is None or isinstance(out.exception, SystemExit)  # a refusal, not a crash


def test_redis_login_takes_the_password_from_the_environment_only(tmp_path, monkeypatch):
    cfg = load_config(None, {"redis.username": "job", "redis.password_env": "SR_UNIT_PASSWORD"})
    with pytest.raises(ConfigError, match="export SR_UNIT_PASSWORD=<the Redis password>"):
        cfg.redis.client_kwargs()
    monkeypatch.setenv("SR_UNIT_PASSWORD", "s3cret")
    assert cfg.redis.client_kwargs() == {"host": "127.0.0.1", "port": 16379, "username": "job", "password": "s3cret"}
    assert "s3cret" not in cfg.model_dump_json()  # the config (dumped into the job graph, the spec) holds the name only
    with pytest.raises(ConfigError, match="redis.password_env"):
        load_config(None, {"redis.password_env": "not a variable name"})
    with pytest.raises(ConfigError, match="username = 'job' needs password_env"):
        load_config(None, {"redis.username": "job"})


def test_redis_tls_files_are_checked_before_start(tmp_path):
    (tmp_path / "ca.pem").write_text("PEM")
    with pytest.raises(ConfigError, match="ca_file = .* is not a readable file"):
        load_config(None, {"redis.tls": {"ca_file": str(tmp_path / "missing.pem")}})
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        load_serving_config(None, {"redis.tls": {"ca_file": str(tmp_path / "ca.pem"), "cert_file": str(tmp_path / "ca.pem")}})
    kwargs = load_config(None, {"redis.tls": {"ca_file": str(tmp_path / "ca.pem")}}).redis.client_kwargs()
    assert kwargs["ssl"] is True and kwargs["ssl_ca_certs"] == str(tmp_path / "ca.pem") and kwargs["ssl_check_hostname"]


def test_histogram_quantile_reads_cumulative_buckets_as_prometheus_does():
    from devstack.metrics import histogram_quantile
    buckets = {0.1: 50.0, 0.2: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.6)
    assert histogram_quantile(0.5, {float("inf"): 0.0}) is None


@pytest.mark.parametrize("endpoint, fix", [("collector:4318", "http://127.0.0.1:4318"),
                                           ("http://collector:4318/v1/traces", "'http://collector:4318'")])
def test_a_tracing_endpoint_that_is_not_a_base_url_is_refused_with_the_fix(endpoint, fix):
    with pytest.raises(ConfigError, match=re.escape(fix)):
        load_serving_config(None, {"tracing.otlp_endpoint": endpoint})
    assert load_serving_config(None, {"tracing.otlp_endpoint": "http://collector:4318/"}).tracing.otlp_endpoint == \
        "http://collector:4318"


def test_eviction_policies_are_judged_for_what_they_can_take():
    from jobs.store import eviction_problem

    assert eviction_problem(0, "allkeys-lru", 0) is None  # no maxmemory: nothing is evicted
    assert eviction_problem(1 << 30, "volatile-ttl", 604800) is None
    assert "volatile-ttl" in eviction_problem(1 << 30, "allkeys-lru", 604800)
    assert "redis.rec_ttl_s" in eviction_problem(1 << 30, "volatile-lru", 0)
    assert "restarts from its checkpoint" in eviction_problem(1 << 30, "noeviction", 604800)


def test_the_stored_layout_names_a_cluster_shard_count():
    from jobs.store import stored_layout
    from udfs.features import layout_changes

    one = stored_layout(load_config(None))
    assert "redis.cluster.shards" not in one  # one Redis: as before, so stored layouts stay valid
    eight = stored_layout(load_config(None, {"redis.cluster": {"shards": 8}}))
    sixteen = stored_layout(load_config(None, {"redis.cluster": {"shards": 16}}))
    assert list(layout_changes(eight, sixteen)) == ["redis.cluster.shards"]
    assert list(layout_changes(one, eight)) == ["redis.cluster.shards"]


def test_a_cluster_config_is_refused_where_it_cannot_be_read():
    from contract.serving_config import load_serving_config

    with pytest.raises(ConfigError, match='needs engine = "go"'):
        load_serving_config(None, {"engine": "python", "redis.cluster": {"shards": 4}})
    assert load_serving_config(None, {"redis.cluster": {"shards": 4, "nodes": ["127.0.0.1:7001"]}}).redis.cluster.shards == 4


def test_the_engagement_job_refuses_a_redis_cluster():
    from jobs.engagement import engagement_config

    with pytest.raises(ConfigError, match="does not run on a Redis Cluster yet"):
        engagement_config(load_config(None, {"redis.cluster": {"shards": 4}}))
    assert engagement_config(load_config(None)).kafka.group_id.endswith("-engagement")
