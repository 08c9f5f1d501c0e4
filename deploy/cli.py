"""The `streamrank` command: local stack, traffic, training, the job (embedded or on a cluster),
serving and lookups. Every subcommand has --help."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from contract.config import ConfigError
from deploy.paths import PROJECT_ROOT, run_dir

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
stack_app = typer.Typer(help="Local Kafka (KRaft) + Redis on loopback.", no_args_is_help=True)
cluster_app = typer.Typer(help="Standalone Flink cluster from PyFlink's bin/.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
models_app = typer.Typer(help="The model registry: list, promote, roll back; the live drift report.",
                         no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
app.add_typer(models_app, name="models")
config_app = typer.Typer(help="Config files: check one without running anything.", no_args_is_help=True)
app.add_typer(config_app, name="config")
REGISTRY = PROJECT_ROOT / "var" / "models"
RegistryOpt = Annotated[Path, typer.Option("--registry", help="model registry directory")]

DEFAULT_CONFIG = str(PROJECT_ROOT / "deploy" / "config" / "local.toml")
DEFAULT_SERVING = str(PROJECT_ROOT / "deploy" / "config" / "serving.toml")
ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="job config TOML")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a field: SECTION.KEY=VALUE")]


def _logging(verbose: bool = False, fmt: str = "text") -> None:
    """text for people; json (one object per line, for log shippers) for the long-running services."""
    handler = logging.StreamHandler()
    if fmt == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    logging.getLogger("kafka").setLevel(logging.WARNING)


PresetOpt = Annotated[str | None, typer.Option(
    "--preset", help="config preset applied over --config: web-sessions | retail-purchases (deploy/config/presets)")]


def _job_config(config: str, sets: list[str] | None, bounded: bool = False, preset: str | None = None):
    from contract.config import ConfigError, load_config
    from jobs.recommend import parse_overrides

    try:
        return load_config(config, parse_overrides(sets or [], bounded=bounded), preset)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


@config_app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="a job config (local.toml) or a serving config (serving.toml)")],
    serving: Annotated[bool | None, typer.Option(
        "--serving/--job", help="which kind of file (default: serving if its name says so)")] = None,
) -> None:
    """Validate a config file as the job or the service would, before anything starts: exit 0 and
    the effective values as JSON, or exit 2 naming each bad field and the fix."""
    from contract.config import ConfigError, load_config, load_serving_config

    as_serving = "serving" in file.name if serving is None else serving
    try:
        cfg = load_serving_config(file, None) if as_serving else load_config(file)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    typer.echo(cfg.model_dump_json(indent=2))
    typer.echo(f"{file}: a valid {'serving' if as_serving else 'job'} config", err=True)


@stack_app.command("up")
def stack_up(
    kafka_port: Annotated[int, typer.Option(help="broker port")] = 19092,
    redis_port: Annotated[int, typer.Option(help="Redis port")] = 16379,
    partitions: Annotated[int, typer.Option(help="partitions of the interactions topic")] = 2,
) -> None:
    """Start (or keep) Kafka and Redis; wait until both answer; create topics."""
    from deploy.stack import LocalStack, StackError

    _logging()
    try:
        services = LocalStack(run_dir()).up(kafka_port, redis_port, partitions)
    except StackError as e:
        typer.echo(f"stack up failed: {e}", err=True)
        raise typer.Exit(1) from None
    for s in services.values():
        typer.echo(f"{s.name:6s} 127.0.0.1:{s.port}  pid {s.pid}  log {s.log}")


@stack_app.command("down")
def stack_down() -> None:
    """Stop Kafka and Redis started by `stack up`."""
    from deploy.stack import LocalStack

    LocalStack(run_dir()).down()
    typer.echo("stack stopped")


@stack_app.command("status")
def stack_status() -> None:
    """Show each service and whether its process runs and its port answers."""
    from deploy.stack import LocalStack

    status = LocalStack(run_dir()).status()
    if not status:
        typer.echo("stack not started (streamrank stack up)")
        raise typer.Exit(1)
    for name, s in status.items():
        typer.echo(f"{name:6s} {'running' if s['running'] else 'DOWN':8s} 127.0.0.1:{s['port']}  pid {s['pid']}  log {s['log']}")
    if not all(s["running"] for s in status.values()):
        raise typer.Exit(1)


@app.command()
def simulate(
    events: Annotated[int, typer.Option(help="how many records")] = 10000,
    rate: Annotated[float, typer.Option(help="events per second of event time")] = 200.0,
    users: Annotated[int, typer.Option(help="simulated users")] = 500,
    items: Annotated[int, typer.Option(help="catalog size")] = 2000,
    categories: Annotated[int, typer.Option(help="item categories")] = 20,
    seed: Annotated[int, typer.Option(help="same seed, same stream")] = 7,
    malformed: Annotated[float, typer.Option(help="fraction of records to break (0..1)")] = 0.0,
    replenishment: Annotated[float, typer.Option(help="share of items users rebuy at item-specific intervals "
                                                 "(0..1); 0 = none")] = 0.0,
    history: Annotated[Path | None, typer.Option(help="write a history file (a folder for retailrocket) instead of publishing")] = None,
    fmt: Annotated[str, typer.Option("--format", help="with --history: native (JSONL) | retailrocket | online-retail "
                                     "(the public log formats `import` and `evaluate` read)")] = "native",
    hours_ago: Annotated[float | None, typer.Option(help="with --history: start this many hours before now "
                                                       "(default: so that the stream ends now)")] = None,
    realtime: Annotated[bool, typer.Option(help="pace sends so event time follows the wall clock")] = False,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Publish simulated interactions (and the item catalog) to Kafka, or write a history file."""
    from traffic.publish import catalog_path, publish_catalog, publish_events, write_history
    from traffic.simulator import Simulator

    _logging()
    if not 0 <= malformed < 1:
        typer.echo("--malformed must be in [0, 1)", err=True)
        raise typer.Exit(2)
    if fmt not in ("native", "retailrocket", "online-retail"):
        raise typer.BadParameter(f"{fmt!r}; use native, retailrocket or online-retail", param_hint="--format")
    if not 0 <= replenishment <= 1:
        typer.echo("--replenishment must be in [0, 1]", err=True)
        raise typer.Exit(2)
    sim = Simulator(seed=seed, users=users, items=items, categories=categories, replenishment=replenishment)
    span_s = hours_ago * 3600 if hours_ago is not None else events / rate + 60
    start = int((time.time() - span_s) * 1000)
    if history and fmt != "native":
        from traffic.formats import write_online_retail, write_retailrocket

        write = write_retailrocket if fmt == "retailrocket" else write_online_retail
        typer.echo(json.dumps(write(sim, history, events, rate, start)))
        return
    if history:
        history.parent.mkdir(parents=True, exist_ok=True)
        report = write_history(sim, str(history), events, rate, start, malformed)
        typer.echo(json.dumps({**report.as_dict(), "history": str(history), "catalog": str(catalog_path(history))}))
        return
    cfg = _job_config(config, None)
    k = cfg.kafka
    n_items = publish_catalog(sim, k.bootstrap_servers, k.items_topic)
    report = publish_events(sim, k.bootstrap_servers, k.interactions_topic, events, rate,
                            malformed_fraction=malformed, realtime=realtime)
    typer.echo(json.dumps({**report.as_dict(), "catalog_items": n_items}))


@app.command("import")
def import_events(
    path: Annotated[Path, typer.Argument(help="the event log to import")],
    fmt: Annotated[str, typer.Option("--format", help="retailrocket | online-retail | completejourney")],
    out: Annotated[Path, typer.Option(help="history file to write (JSONL, time-ordered; catalog beside it)")] = Path("var/import/history.jsonl"),
    item_properties: Annotated[list[Path] | None, typer.Option(help="retailrocket item_properties CSV (repeatable)")] = None,
    category_tree: Annotated[Path | None, typer.Option(help="retailrocket category_tree.csv (roll categories up)")] = None,
    products: Annotated[Path | None, typer.Option(
        help="completejourney products.csv (categories; default: products.csv beside PATH)")] = None,
    publish: Annotated[bool, typer.Option(help="also replay the events to Kafka")] = False,
    rate: Annotated[float | None, typer.Option(help="with --publish: events/s (default: as fast as possible)")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Import RetailRocket, UCI Online Retail or The Complete Journey logs into the event schema;
    rejected rows are listed with line numbers (and written to OUT.rejected.csv)."""
    from traffic.importers import ImportFailed, import_file

    _logging()
    cfg = _job_config(config, None)
    try:
        report = import_file(path, fmt, out, item_properties=[str(p) for p in item_properties or []],
                             category_tree=str(category_tree) if category_tree else None,
                             products=str(products) if products else None, min_ts_ms=cfg.events.min_ts_ms)
    except (ImportFailed, FileNotFoundError) as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    for line, reason, row in report.rejected[:20]:
        typer.echo(f"rejected line {line}: {reason}: {row[:120]}", err=True)
    if len(report.rejected) > 20:
        typer.echo(f"... {len(report.rejected) - 20} more in {out}.rejected.csv", err=True)
    summary = {**report.summary(), "history": str(out), "rejected_file": f"{out}.rejected.csv"}
    if publish:
        from traffic.publish import publish_history

        summary["published"] = publish_history(out, cfg.kafka.bootstrap_servers, cfg.kafka.interactions_topic,
                                               cfg.kafka.items_topic, rate)
    typer.echo(json.dumps(summary))


@app.command()
def evaluate(
    events: Annotated[Path, typer.Option(help="event log to evaluate on")],
    fmt: Annotated[str, typer.Option(
        "--format", help="native (JSONL history) | retailrocket | online-retail | completejourney")] = "native",
    item_properties: Annotated[list[Path] | None, typer.Option(help="retailrocket: item_properties CSV (repeatable)")] = None,
    category_tree: Annotated[Path | None, typer.Option(help="retailrocket: category_tree.csv")] = None,
    products: Annotated[Path | None, typer.Option(
        help="completejourney: products.csv (default: products.csv beside --events)")] = None,
    train_fraction: Annotated[float, typer.Option(help="share of events (by time) to train on")] = 0.8,
    k: Annotated[int, typer.Option(help="cut-off for NDCG@k and HitRate@k")] = 10,
    out: Annotated[Path | None, typer.Option(help="report folder (default var/eval/<time>)")] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="config preset applied over --config: web-sessions | retail-purchases | none; default "
        "by format (retailrocket: web-sessions; online-retail, completejourney: retail-purchases; native: none)")] = None,
    horizon_s: Annotated[float | None, typer.Option(
        help="label horizon for training (s); default training.horizon_s (0: the test period's span)")] = None,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Train on the earlier part of a log, evaluate next-period recommendations on the later part
    against the baselines (popularity, trending, user_top_category, repeat), with 95% bootstrap
    intervals, candidate recall and results per segment. Last line: JSON (ranker -> metrics, and
    "evaluation": the comparison, segments and candidate recall)."""
    from collections import Counter

    from contract.config import FORMAT_PRESETS
    from models.evaluation import NotEnoughEvents, evaluate_history

    _logging()
    if preset is None:
        preset = FORMAT_PRESETS.get(fmt)
    sets = [f"training.horizon_s={horizon_s}"] if horizon_s is not None else None
    cfg = _job_config(config, sets, preset=None if preset == "none" else preset)
    if preset and preset != "none":
        typer.echo(f"config: {config} with preset {preset}", err=True)
    history = events
    if fmt != "native":
        from traffic.importers import ImportFailed, import_file

        history = Path(run_dir()) / "evaluate" / "history.jsonl"
        try:
            report = import_file(events, fmt, history, item_properties=[str(p) for p in item_properties or []],
                                 category_tree=str(category_tree) if category_tree else None,
                                 products=str(products) if products else None, min_ts_ms=cfg.events.min_ts_ms)
        except (ImportFailed, FileNotFoundError) as e:
            typer.echo(str(e), err=True)
            raise typer.Exit(2) from None
        typer.echo(f"imported {report.events} events ({len(report.rejected)} rows rejected, see {history}.rejected.csv)",
                   err=True)
        if report.events < 2:  # split_by_time needs two: say why the rows went, not a traceback
            reasons = Counter(r for _, r, _ in report.rejected).most_common(5)
            typer.echo(f"{events}: {report.events} of {report.rows} rows became events; evaluation needs at least "
                       f"2. Rejected {len(report.rejected)} (most common: "
                       f"{', '.join(f'{r} {n}' for r, n in reasons) or 'none'}; each row with its line and reason "
                       f"in {history}.rejected.csv), skipped {dict(report.skipped) or 'none'}. Is this the "
                       "right --format?", err=True)
            raise typer.Exit(2)
    report_dir = out or PROJECT_ROOT / "var" / "eval" / time.strftime("%Y%m%d-%H%M%S")
    report_dir.mkdir(parents=True, exist_ok=True)
    try:
        results = evaluate_history(str(history), cfg, train_fraction, k, work_dir=str(report_dir))
    except NotEnoughEvents as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"report: {report_dir}/evaluation.md (+ evaluation.json, ndcg_at_k.png, feature_importance.png, "
               "calibration.png)", err=True)
    typer.echo(json.dumps(results))


@app.command()
def train(
    history: Annotated[Path, typer.Option(help="JSONL event history (streamrank simulate --history, or import)")],
    catalog: Annotated[Path | None, typer.Option(help="items JSONL (item_id, category, price)")] = None,
    registry: RegistryOpt = REGISTRY,
    horizon_s: Annotated[float | None, typer.Option(
        help="label horizon after each cut-off (s); default training.horizon_s (0: the held-out period's span)")] = None,
    kind: Annotated[str, typer.Option(help="lambdamart (LightGBM ranker, graded labels) or classifier "
                                      "(LightGBM binary)")] = "lambdamart",
    holdout: Annotated[float, typer.Option(help="share of events (latest, by time) held out for the gate")] = 0.2,
    promote: Annotated[bool, typer.Option(help="make it the current model if it passes the gate "
                                          "(the running job switches to it)")] = True,
    force: Annotated[bool, typer.Option(help="promote even if it does not beat the best baseline")] = False,
    preset: PresetOpt = None,
    k: Annotated[int, typer.Option(help="the gate's NDCG@k")] = 10,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Train a model on the earlier part of a history, gate it on the held-out later part, publish.

    The gate scores the model and every baseline (popularity, trending, user_top_category, repeat)
    on the held-out period as `evaluate` does. A model that does not beat the best baseline on
    NDCG@k is published but not promoted, and the reason is printed; --force promotes it anyway.
    Last line: the model card (JSON)."""
    from models.evaluation import NotEnoughEvents, gate, holdout_evaluation
    from models.training import MODEL_KINDS, PublishRefused, publish

    if kind not in MODEL_KINDS:
        raise typer.BadParameter(f"{kind!r}; choose one of {', '.join(MODEL_KINDS)}", param_hint="--kind")
    if not 0 < holdout < 1:
        raise typer.BadParameter(f"{holdout}; a share strictly between 0 and 1", param_hint="--holdout")
    _logging()
    sets = [f"training.horizon_s={horizon_s}"] if horizon_s is not None else None
    cfg = _job_config(config, sets, preset=preset)
    report_dir = PROJECT_ROOT / "var" / "train" / time.strftime("%Y%m%d-%H%M%S")
    try:
        run = holdout_evaluation(str(history), cfg, [kind], 1 - holdout, k, str(report_dir),
                                 catalog=str(catalog) if catalog else None)
        verdict = gate(run.results, kind, [n for n in run.results if n not in MODEL_KINDS], k)
        verdict["forced"] = force and promote and not verdict["promote"]
        verdict["difference_ci95"] = run.summary["comparison"]["difference_ci95"]  # model - best baseline
        out = publish(run.trained[kind], registry, promote=promote and (verdict["promote"] or force), gate=verdict)
    except (PublishRefused, NotEnoughEvents, ValueError) as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    if verdict["promote"]:
        typer.echo(f"gate passed: {verdict['reason']}" + ("; promoted" if promote else "; not promoted (--no-promote)"),
                   err=True)
    elif verdict["forced"]:
        typer.echo(f"gate failed, promoted anyway (--force): {verdict['reason']}", err=True)
    else:
        typer.echo(f"gate failed, published {out.name} but NOT promoted: {verdict['reason']} "
                   "(--force promotes it anyway)", err=True)
    typer.echo(f"held-out report: {report_dir}/evaluation.md", err=True)
    typer.echo((out / "card.json").read_text())


@models_app.command("list")
def models_list(registry: RegistryOpt = REGISTRY) -> None:
    """Published versions, newest last; * marks the current (promoted) one."""
    from models.registry import Registry

    versions = Registry(registry).versions()
    if not versions:
        typer.echo(f"no models in {registry}; train one with `streamrank train`", err=True)
        raise typer.Exit(1)
    for v in versions:
        typer.echo(f"{'*' if v.current else ' '} {v.version}  {v.created_at}  AUC {v.holdout.get('auc', '?')}  {v.model}")


def _move_current(registry: Path, move) -> None:
    """Run a registry move (promote / rollback: Registry -> the version now current) and say where
    `current` points; a refused move exits 1 with the registry's reason."""
    from models.registry import Registry, RegistryError

    try:
        version = move(Registry(registry))
    except RegistryError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"current -> {version}")


@models_app.command("baseline")
def models_baseline(
    kind: Annotated[str, typer.Argument(help="repeat | trending")],
    promote: Annotated[bool, typer.Option(help="make it the current model (the running job switches to it)")] = False,
    preset: PresetOpt = None,
    registry: RegistryOpt = REGISTRY,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Publish a baseline (repeat: the user's own items by purchase occasions, then popularity;
    trending) as a registry version the job serves like a model: a fixed linear score over the
    config's features, in ONNX. Last line: the card (JSON)."""
    from models.baselines import BASELINE_KINDS, publish_baseline

    if kind not in BASELINE_KINDS:
        raise typer.BadParameter(f"{kind!r}; choose one of {', '.join(BASELINE_KINDS)}", param_hint="KIND")
    cfg = _job_config(config, None, preset=preset)
    out = publish_baseline(kind, registry, cfg.features, promote=promote)
    typer.echo((out / "card.json").read_text())


@models_app.command("promote")
def models_promote(version: Annotated[str, typer.Argument(help="e.g. v0003")], registry: RegistryOpt = REGISTRY) -> None:
    """Make VERSION current; a running job switches within scoring.reload_check_s."""
    _move_current(registry, lambda reg: reg.promote(version))


@models_app.command("rollback")
def models_rollback(registry: RegistryOpt = REGISTRY) -> None:
    """Undo the latest promotion: back to the version that was current before it."""
    _move_current(registry, lambda reg: reg.rollback())


@models_app.command("drift")
def models_drift(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """The job's last drift window: PSI per feature against the scoring model's card."""
    import redis as redis_lib

    from contract import keys

    cfg = _job_config(config, None)
    try:
        raw = redis_lib.Redis(host=cfg.redis.host, port=cfg.redis.port, decode_responses=True).hgetall(keys.DRIFT)
    except redis_lib.RedisError as e:
        typer.echo(f"cannot read {keys.DRIFT} from Redis {cfg.redis.host}:{cfg.redis.port}: {e}", err=True)
        raise typer.Exit(1) from None
    if not raw:
        typer.echo("no drift window closed yet (scoring.drift_window_s of event time with scoring.drift_min_rows "
                   "scored rows)", err=True)
        raise typer.Exit(1)
    raw["psi"] = json.loads(raw["psi"])
    typer.echo(json.dumps(raw))


def _parse_time(value: str) -> int:
    """Epoch milliseconds, or an ISO-8601 time (UTC when no zone is given)."""
    from datetime import UTC, datetime

    if value.isdigit():
        return int(value)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither epoch milliseconds nor an ISO-8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@app.command()
def features(
    events: Annotated[Path, typer.Option(help="JSONL event history, in arrival order")],
    at: Annotated[str, typer.Option(help="cut-off: epoch ms or ISO time, e.g. 2026-11-24T05:00:00")],
    user: Annotated[list[str] | None, typer.Option(help="only these users (repeatable)")] = None,
    limit: Annotated[int, typer.Option(help="at most this many users")] = 20,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Show users' features at a cut-off, computed offline with the streaming job's definitions."""
    from models.offline import replay_file
    from udfs.features import describe

    cfg = _job_config(config, None)
    t = _parse_time(at)
    _, replay = replay_file(events, cfg, until_ms=t)
    wanted = user or sorted(u for u, s in replay.states.items() if s.feature_ts > 0)[:limit]
    for u in wanted:
        s = replay.states.get(u)
        if s is None or s.feature_ts == 0:
            typer.echo(json.dumps({"user_id": u, "features": None, "why": "no used events before the cut-off"}))
            continue
        typer.echo(json.dumps({"user_id": u, "at_ms": t, "window_end": s.window_end,
                               "features": describe(s, t, cfg.features)}))


@app.command()
def ledger(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Where every input record went: used / duplicate / opted_out / late / dlq, beside the input
    count, and a running embedded job's Flink metrics of the same counts."""
    import redis as redis_lib

    from contract import keys

    cfg = _job_config(config, set_)
    try:
        client = redis_lib.Redis(host=cfg.redis.host, port=cfg.redis.port)
        counts, control = keys.read_ledger(client), keys.read_control(client)
    except redis_lib.RedisError as e:
        typer.echo(f"cannot read the ledger from Redis {cfg.redis.host}:{cfg.redis.port}: {e}", err=True)
        raise typer.Exit(1) from None
    report: dict[str, object] = {**counts, "accounted": keys.accounted(counts, control)}
    if control:
        report["control"] = control
    if cfg.flink.prometheus_port:  # a running embedded job's Flink metrics, beside the ledger
        from deploy.metrics import find_ledger_metrics

        found = find_ledger_metrics(cfg.flink.prometheus_port)
        report["flink_metrics"] = {"url": found[0], **found[1]} if found else "no running job's reporter answers"
    try:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers, request_timeout_ms=5000)
        parts = [TopicPartition(cfg.kafka.interactions_topic, p)
                 for p in consumer.partitions_for_topic(cfg.kafka.interactions_topic) or []]
        end, begin = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
        report["input_records"] = sum(end[p] - begin[p] for p in parts)
        consumer.close()
    except Exception as e:  # the ledger is still worth printing without Kafka
        report["input_records"] = f"unknown ({type(e).__name__})"
    typer.echo(json.dumps(report))


FromSavepointOpt = Annotated[str | None, typer.Option(
    help="resume from a savepoint (`cluster stop` prints it) or a retained checkpoint's chk-N directory")]
AllowNonRestoredOpt = Annotated[bool, typer.Option(
    help="with --from-savepoint: skip state of operators the job no longer has")]


def _job_args(set_: list[str] | None, bounded: bool, from_savepoint: str | None,
              allow_non_restored_state: bool, preset: str | None = None) -> list[str]:
    """jobs.recommend's arguments besides --config; the savepoint is checked here, before Flink starts."""
    from jobs.recommend import restore_options

    try:
        restore = restore_options(from_savepoint, allow_non_restored_state)
    except SystemExit as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    return ([a for s in (set_ or []) for a in ("--set", s)] + (["--bounded"] if bounded else [])
            + (["--preset", preset] if preset else [])
            # as a URI: the job may run in another directory (flink run)
            + (["--from-savepoint", restore["execution.state-recovery.path"]] if restore else [])
            + (["--allow-non-restored-state"] if allow_non_restored_state else []))


@app.command()
def dlq(
    late: Annotated[bool, typer.Option("--late", help="the late topic instead of the DLQ")] = False,
    samples: Annotated[int, typer.Option(min=0, help="records shown per reason")] = 3,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """What the job rejected: the DLQ (or late) topic read from its start, counted by reason, with
    the input offsets it covers, how many input records were written twice (at-least-once after a
    restart) and a few records per reason. Reads as a read_committed consumer. Last line: JSON."""
    from deploy.rejected import read_rejected, summarize

    cfg = _job_config(config, set_)
    topic = cfg.kafka.late_topic if late else cfg.kafka.dlq_topic
    unread: dict[str, list[int]] = {}
    try:
        report = summarize(read_rejected(cfg.kafka.bootstrap_servers, topic, progress=sys.stderr.isatty(),
                                         unread=unread), samples)
    except LookupError as e:
        typer.echo(f"{e}: has the job run with this config? (`--config`, or `--set kafka.dlq_topic=...`)", err=True)
        raise typer.Exit(1) from None
    except Exception as e:  # kafka-python's errors: the broker is not there
        typer.echo(f"cannot read {topic!r} from {cfg.kafka.bootstrap_servers}: {type(e).__name__}: {e} "
                   "(is the broker up? `streamrank stack status`)", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{topic}: {report['records']} records, {report['input_records']} input records"
               + (f" ({report['repeated']} repeats of records already there: at-least-once after a restart)"
                  if report["repeated"] else ""))
    for reason, n in report["by_reason"].items():
        typer.echo(f"  {reason:24s} {n}")
        for sample in report["samples"].get(reason, []):
            typer.echo(f"      {sample['src']}  {sample['record']}")
    for partition, (at, end) in unread.items():
        typer.echo(f"partition {partition}: read to offset {at} of {end}; the rest is in a transaction still "
                   "open (exactly-once: it commits at the job's next checkpoint, or times out after "
                   "kafka.transaction_timeout_s): run again later", err=True)
    typer.echo(json.dumps({"topic": topic, **report, **({"unread": unread} if unread else {})}))


@app.command()
def control(
    action: Annotated[str, typer.Argument(help="erase | opt-out | opt-in")],
    users: Annotated[list[str], typer.Argument(help="user ids")],
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Send users' requests into their event streams: erase a history, opt out, opt back in.

    Each is a record on the interactions topic, keyed by the user like their events, with the type
    erase, opt_out or opt_in and the time now; the job applies it at that place in the user's events.
    erase forgets the user's features, items, categories and list (only event ids stay, for
    deduplication, until the dedup horizon); opt-out does too and uses none of the user's events
    until opt-in. The job counts them in the `control` hash (`streamrank ledger`)."""
    from contract.schema import CONTROL_ACTIONS, ID_PATTERN, valid_id
    from traffic.publish import send_requests

    name = action.replace("-", "_")
    if name not in CONTROL_ACTIONS:
        typer.echo(f"unknown action {action!r}: use erase, opt-out or opt-in", err=True)
        raise typer.Exit(2)
    if bad := [u for u in users if not valid_id(u)]:
        typer.echo(f"not user ids ({ID_PATTERN}): {', '.join(map(repr, bad))}", err=True)
        raise typer.Exit(2)
    cfg = _job_config(config, set_)
    now = int(time.time() * 1000)
    sent = send_requests(cfg.kafka.bootstrap_servers, cfg.kafka.interactions_topic, name, users, now)
    typer.echo(json.dumps({"topic": cfg.kafka.interactions_topic, "type": name, "ts": now, "event_ids": sent}))


@app.command()
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    bounded: Annotated[bool, typer.Option(help="stop at the offsets latest at start")] = False,
    set_: SetOpt = None,
    from_savepoint: FromSavepointOpt = None,
    allow_non_restored_state: AllowNonRestoredOpt = False,
    preset: PresetOpt = None,
) -> None:
    """Run the recommend job on the embedded Flink MiniCluster (the default). With a model trained
    under a preset, run with the same --preset: the model's features follow it."""
    from jobs.recommend import main as job_main

    _job_config(config, set_, bounded, preset)  # fail before Flink starts
    args = ["--config", config] + _job_args(set_, bounded, from_savepoint, allow_non_restored_state, preset)
    raise typer.Exit(job_main(args))


@cluster_app.command("up")
def cluster_up(
    rest_port: Annotated[int, typer.Option(help="REST/web port")] = 18081,
    slots: Annotated[int, typer.Option(help="task slots")] = 2,
    metrics_port: Annotated[int, typer.Option(
        help="first port of Flink's Prometheus reporter; each daemon takes the first free one of 10")] = 9249,
) -> None:
    """Start a JobManager and a TaskManager on loopback, each with Flink's Prometheus reporter."""
    from deploy.cluster import ClusterError, FlinkCluster

    c = FlinkCluster(run_dir())
    try:
        ov = c.up(rest_port, slots, metrics_port)
    except ClusterError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"Flink {ov.get('flink-version')} at http://{c.address()}  "
               f"taskmanagers {ov['taskmanagers']}  slots {ov['slots-total']}")
    for role, url in c.metrics_endpoints().items():
        typer.echo(f"{role} metrics at {url}")


@cluster_app.command("down")
def cluster_down() -> None:
    """Stop the standalone cluster."""
    from deploy.cluster import FlinkCluster

    FlinkCluster(run_dir()).down()
    typer.echo("cluster stopped")


@cluster_app.command("status")
def cluster_status() -> None:
    """Show the cluster overview and its jobs."""
    from deploy.cluster import FlinkCluster

    c = FlinkCluster(run_dir())
    ov = c.overview()
    if not ov:
        typer.echo("cluster not running (streamrank cluster up)")
        raise typer.Exit(1)
    typer.echo(json.dumps({"overview": ov, "jobs": c.jobs()}, indent=2))


def _cluster():
    """The standalone cluster, or exit 1 saying how to start one."""
    from deploy.cluster import FlinkCluster

    c = FlinkCluster(run_dir())
    if not c.overview():
        typer.echo("no cluster answers; start one with `streamrank cluster up`", err=True)
        raise typer.Exit(1)
    return c


def _cluster_job(job_id: str | None, verb: str):
    """(cluster, job id): the named job, or the one running job."""
    c = _cluster()
    if job_id:
        return c, job_id
    running = [j["jid"] for j in c.jobs() if j["state"] == "RUNNING"]
    if len(running) != 1:
        typer.echo(f"{len(running)} jobs running ({', '.join(running) or 'none'}); name the one to {verb}",
                   err=True)
        raise typer.Exit(2)
    return c, running[0]


@cluster_app.command("cancel")
def cluster_cancel(
    job_id: Annotated[str | None, typer.Argument(help="default: the one running job")] = None,
) -> None:
    """Cancel a job running on the cluster (e.g. one `streamrank submit` started detached).

    Its last checkpoint is kept, to resume from with `submit --from-savepoint .../chk-N`."""
    from deploy.cluster import ClusterError

    c, job = _cluster_job(job_id, "cancel")
    try:
        c.cancel(job)
    except ClusterError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"cancelling {job}")


@cluster_app.command("stop")
def cluster_stop(
    job_id: Annotated[str | None, typer.Argument(help="default: the one running job")] = None,
    savepoint_dir: Annotated[str | None, typer.Option(
        help="where the savepoint goes (default: the job's flink.savepoint_dir)")] = None,
    drain: Annotated[bool, typer.Option(
        help="fire every open window before stopping (for a job that will not be resumed)")] = False,
) -> None:
    """Stop a running job with a savepoint, to resume it later.

    Resume with `streamrank submit --from-savepoint PATH`, e.g. with a new parallelism, model or
    top-K: the Kafka offsets and open windows carry over, so no record is lost or counted twice."""
    from deploy.cluster import ClusterError

    c, job = _cluster_job(job_id, "stop")
    target = str(Path(savepoint_dir).resolve()) if savepoint_dir and "://" not in savepoint_dir else savepoint_dir
    typer.echo(f"stopping {job} with a savepoint ...")
    try:
        path = c.stop_with_savepoint(job, target, drain)
    except ClusterError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"savepoint at {path}\nresume with: streamrank submit --from-savepoint {path}")


@app.command()
def submit(
    config: ConfigOpt = DEFAULT_CONFIG,
    bounded: Annotated[bool, typer.Option(help="stop at the offsets latest at start")] = False,
    detached: Annotated[bool, typer.Option(help="return once submitted")] = True,
    set_: SetOpt = None,
    from_savepoint: FromSavepointOpt = None,
    allow_non_restored_state: AllowNonRestoredOpt = False,
    preset: PresetOpt = None,
) -> None:
    """Submit the recommend job to the standalone cluster with `flink run -py` (--preset: as for run)."""
    _job_config(config, set_, bounded, preset)
    c = _cluster()
    extra = _job_args(set_, bounded, from_savepoint, allow_non_restored_state, preset)
    out = c.submit(str(Path(config).resolve()), extra, detached)
    typer.echo(out.stdout[-4000:])
    if out.returncode != 0:
        typer.echo(out.stderr[-4000:], err=True)
        raise typer.Exit(out.returncode)


def _serving_config(config: str, port: int | None):
    from contract.config import load_serving_config

    try:
        return load_serving_config(config, {"port": port} if port is not None else None)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


def _run_service(cfg, run) -> None:
    """A long-running service: its configured log format; a config problem found at start-up
    (e.g. an unset token variable) exits 2 with the message."""
    _logging(fmt=cfg.log_format)
    try:
        run(cfg)
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: Annotated[str, typer.Option("--config", "-c", help="serving config TOML")] = DEFAULT_SERVING,
    port: Annotated[int | None, typer.Option(help="override the port (0: any free)")] = None,
) -> None:
    """Run the gRPC lookup service (the config's engine: go by default) until SIGTERM/SIGINT, then
    drain in-flight calls."""
    from serving.launch import serve as run_server

    _run_service(_serving_config(config, port), run_server)


@app.command()
def gateway(
    config: Annotated[str, typer.Option("--config", "-c", help="serving config TOML ([gateway] section)")] = DEFAULT_SERVING,
    port: Annotated[int | None, typer.Option(help="override the gateway port")] = None,
) -> None:
    """Run the HTTP/JSON + GraphQL gateway (same lookups as gRPC) until SIGTERM/SIGINT."""
    cfg = _serving_config(config, None)
    if port is not None:
        cfg = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"port": port})})
    from serving.gateway import run_gateway

    _run_service(cfg, run_gateway)


@app.command()
def lookup(
    user_id: Annotated[str, typer.Argument(help="user to look up")],
    k: Annotated[int, typer.Option(help="how many items")] = 10,
    target: Annotated[str, typer.Option(help="gRPC host:port")] = "127.0.0.1:50051",
    token_env: Annotated[str | None, typer.Option(help="environment variable holding the bearer token")] = None,
    ca_file: Annotated[str | None, typer.Option(help="CA certificate (PEM) for a TLS server")] = None,
    deadline_s: Annotated[float, typer.Option(help="deadline per call, seconds")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Ask the gRPC service for a user's recommendations."""
    import grpc
    from google.protobuf.json_format import MessageToDict

    from serving.client import RecommendationsClient, format_recommendations

    token = os.environ.get(token_env) if token_env else None
    try:
        with RecommendationsClient(target, token=token, ca_file=ca_file, deadline_s=deadline_s) as client:
            resp = client.recommendations(user_id, k)
    except grpc.RpcError as e:
        typer.echo(f"{e.code().name}: {e.details()}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(MessageToDict(resp, preserving_proto_field_name=True)))
    else:
        typer.echo(format_recommendations(resp))


@app.command()
def demo(
    live_events: Annotated[int, typer.Option(help="live events to stream through the job")] = 12000,
    rate: Annotated[float, typer.Option(help="live events per second")] = 250.0,
    keep: Annotated[bool, typer.Option(help="leave the stack running afterwards")] = False,
) -> None:
    """The whole loop: stack, history, train, job on live traffic, gRPC lookups, tidy up."""
    from deploy.demo import run_demo

    _logging()
    raise typer.Exit(run_demo(live_events, rate, keep))


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    app()


if __name__ == "__main__":
    main()
