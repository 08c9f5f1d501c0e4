"""Models: `train`, `evaluate`, `features` (offline replay) and `streamrank models` (the registry)."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import redis as redis_lib
import typer

from cli.common import (ConfigOpt, DEFAULT_CONFIG, PresetOpt, REGISTRY, RegistryOpt, SetOpt, exit_on, import_log,
                        job_config, setup_logging)
from cli.experiments import applied_experiments, exposure_outcomes
from contract import keys
from contract.config import FORMAT_PRESETS, JobConfig
from contract.experiments import store_experiments
from contract.paths import PROJECT_ROOT, run_dir
from models.baselines import publish_baseline
from models.canary import Decision, canary_experiment, decide, record, running_canary, with_canary, without
from models.experiment_report import report
from udfs.arms import BASELINE_KINDS
from models.evaluation import NotEnoughEvents, evaluate_history, gate, holdout_evaluation
from models.offline import replay_file
from models.registry import Registry, RegistryError
from models.training import MODEL_KINDS, PublishRefused, publish
from udfs.features import describe

app = typer.Typer(help="The model registry: list, promote, roll back; the live drift report.",
                  no_args_is_help=True)
commands = typer.Typer()
log = logging.getLogger(__name__)


@commands.command()
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
    setup_logging()
    if preset is None:
        preset = FORMAT_PRESETS.get(fmt)
    sets = [f"training.horizon_s={horizon_s}"] if horizon_s is not None else None
    cfg = job_config(config, sets, preset=None if preset == "none" else preset)
    if preset and preset != "none":
        typer.echo(f"config: {config} with preset {preset}", err=True)
    history = events
    if fmt != "native":
        history = Path(run_dir()) / "evaluate" / "history.jsonl"
        report = import_log(events, fmt, history, cfg, item_properties, category_tree, products)
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
    with exit_on(NotEnoughEvents, code=2):
        results = evaluate_history(str(history), cfg, train_fraction, k, work_dir=str(report_dir))
    typer.echo(f"report: {report_dir}/evaluation.md (+ evaluation.json, ndcg_at_k.png, feature_importance.png, "
               "calibration.png)", err=True)
    typer.echo(json.dumps(results))


def train_gated(history: Path, catalog: Path | None, registry: Path, cfg: JobConfig, kind: str, holdout: float,
                k: int, promote: bool, force: bool = False) -> tuple[Path, dict, Path]:
    """Train on the earlier part of a history, gate on the held-out later part against every
    baseline, publish (promoted if asked and the gate passed): (version dir, verdict, report dir)."""
    report_dir = PROJECT_ROOT / "var" / "train" / time.strftime("%Y%m%d-%H%M%S")
    with exit_on(PublishRefused, NotEnoughEvents, ValueError, FileNotFoundError):
        run = holdout_evaluation(str(history), cfg, [kind], 1 - holdout, k, str(report_dir),
                                 catalog=str(catalog) if catalog else None)
        verdict = gate(run.results, kind, [n for n in run.results if n not in MODEL_KINDS], k)
        verdict["forced"] = force and promote and not verdict["promote"]
        verdict["difference_ci95"] = run.summary["comparison"]["difference_ci95"]  # model - best baseline
        out = publish(run.trained[kind], registry, promote=promote and (verdict["promote"] or force), gate=verdict)
    return out, verdict, report_dir


@commands.command()
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
    if kind not in MODEL_KINDS:
        raise typer.BadParameter(f"{kind!r}; choose one of {', '.join(MODEL_KINDS)}", param_hint="--kind")
    if not 0 < holdout < 1:
        raise typer.BadParameter(f"{holdout}; a share strictly between 0 and 1", param_hint="--holdout")
    setup_logging()
    sets = [f"training.horizon_s={horizon_s}"] if horizon_s is not None else None
    cfg = job_config(config, sets, preset=preset)
    out, verdict, report_dir = train_gated(history, catalog, registry, cfg, kind, holdout, k, promote, force)
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


@app.command("list")
def models_list(registry: RegistryOpt = REGISTRY) -> None:
    """Published versions, newest last; * marks the current (promoted) one."""
    versions = Registry(registry).versions()
    if not versions:
        typer.echo(f"no models in {registry}; train one with `streamrank train`", err=True)
        raise typer.Exit(1)
    for v in versions:
        typer.echo(f"{'*' if v.current else ' '} {v.version}  {v.created_at}  AUC {v.holdout.get('auc', '?')}  {v.model}")


def _move_current(registry: Path, move) -> None:
    """Run a registry move (promote / rollback: Registry -> the version now current) and say where
    `current` points; a refused move exits 1 with the registry's reason."""
    with exit_on(RegistryError):
        version = move(Registry(registry))
    typer.echo(f"current -> {version}")


@app.command("baseline")
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
    if kind not in BASELINE_KINDS:
        raise typer.BadParameter(f"{kind!r}; choose one of {', '.join(BASELINE_KINDS)}", param_hint="KIND")
    cfg = job_config(config, None, preset=preset)
    out = publish_baseline(kind, registry, cfg.features, promote=promote)
    typer.echo((out / "card.json").read_text())


@app.command("promote")
def models_promote(version: Annotated[str, typer.Argument(help="e.g. v0003")], registry: RegistryOpt = REGISTRY) -> None:
    """Make VERSION current; a running job switches within scoring.reload_check_s."""
    _move_current(registry, lambda reg: reg.promote(version))


@app.command("rollback")
def models_rollback(registry: RegistryOpt = REGISTRY) -> None:
    """Undo the latest promotion: back to the version that was current before it."""
    _move_current(registry, lambda reg: reg.rollback())


@app.command("drift")
def models_drift(config: ConfigOpt = DEFAULT_CONFIG) -> None:
    """The job's last drift window: PSI per feature against the scoring model's card."""
    cfg = job_config(config, None)
    try:
        raw = redis_lib.Redis(**cfg.redis.client_kwargs(), decode_responses=True).hgetall(keys.DRIFT)
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
    if value.isdigit():
        return int(value)
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is neither epoch milliseconds nor an ISO-8601 time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


@commands.command()
def features(
    events: Annotated[Path, typer.Option(help="JSONL event history, in arrival order")],
    at: Annotated[str, typer.Option(help="cut-off: epoch ms or ISO time, e.g. 2026-11-24T05:00:00")],
    user: Annotated[list[str] | None, typer.Option(help="only these users (repeatable)")] = None,
    limit: Annotated[int, typer.Option(help="at most this many users")] = 20,
    config: ConfigOpt = DEFAULT_CONFIG,
) -> None:
    """Show users' features at a cut-off, computed offline with the streaming job's definitions."""
    cfg = job_config(config, None)
    t = _parse_time(at)
    _, replay = replay_file(events, cfg, until_ms=t)
    # with privacy.pseudonymize the replay holds pseudonyms: a raw --user is looked up as its pseudonym
    stored = {u: keys.pseudonym(u, cfg.privacy.keys()[0]) if cfg.privacy.pseudonymize else u for u in user or []}
    wanted = user or sorted(u for u, s in replay.states.items() if s.feature_ts > 0)[:limit]
    for u in wanted:
        s = replay.states.get(stored.get(u, u))
        if s is None or s.feature_ts == 0:
            typer.echo(json.dumps({"user_id": u, "features": None, "why": "no used events before the cut-off"}))
            continue
        typer.echo(json.dumps({"user_id": u, "at_ms": t, "window_end": s.window_end,
                               "features": describe(s, t, cfg.features)}))


@commands.command()
def retrain(
    history: Annotated[Path | None, typer.Option(
        help="recent events to train a new model on when no canary runs (a history file)")] = None,
    catalog: Annotated[Path | None, typer.Option(help="items JSONL (item_id, category, price)")] = None,
    registry: RegistryOpt = REGISTRY,
    exposures_topic: Annotated[str, typer.Option(help="the services' [exposures] topic")] = "exposures",
    kind: Annotated[str, typer.Option(help="lambdamart or classifier")] = "lambdamart",
    holdout: Annotated[float, typer.Option(help="share of events (latest) held out for the gate")] = 0.2,
    k: Annotated[int, typer.Option(help="the gate's NDCG@k")] = 10,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """Retraining with a canary: decide the running canary from its experiment report (promote, roll
    back or wait), or, when none runs, train on --history, gate it against the baselines and start it
    as a canary on [canary] share of users. Every decision is logged with its numbers (and kept in
    the registry's decisions.jsonl); the last line is JSON."""
    setup_logging()
    cfg = job_config(config, set_)
    applied = applied_experiments(cfg)
    spec = applied[0] if applied else None
    store = redis_lib.Redis(**cfg.redis.client_kwargs())
    reg = Registry(registry)
    if (running := running_canary(spec)) is not None:
        decision = decide(report(exposure_outcomes(cfg, exposures_topic), running), running, cfg.canary)
        if decision.action == "promote":
            with exit_on(RegistryError):
                reg.promote(decision.version)
        if decision.action in ("promote", "rollback"):
            store_experiments(store, without(spec, running["name"]), "(streamrank retrain)")
    else:
        if history is None:
            typer.echo("no canary runs; pass --history FILE to train a new model and start one", err=True)
            raise typer.Exit(2)
        if kind not in MODEL_KINDS:
            raise typer.BadParameter(f"{kind!r}; choose one of {', '.join(MODEL_KINDS)}", param_hint="--kind")
        current = reg.current()
        out, verdict, _ = train_gated(history, catalog, registry, cfg, kind, holdout, k, promote=current is None)
        if current is None:
            decision = Decision("promote" if verdict["promote"] else "not_started",
                                "no current model: the first one is promoted without a canary"
                                if verdict["promote"] else f"gate: {verdict['reason']}", out.name, "", verdict)
        elif not verdict["promote"]:
            decision = Decision("not_started", f"gate: {verdict['reason']}", out.name, "", verdict)
        else:
            experiment = canary_experiment(out.name, current, cfg.canary)
            with exit_on(ValueError, code=2):
                store_experiments(store, with_canary(spec, experiment), "(streamrank retrain)")
            decision = Decision("start", f"gate passed ({verdict['reason']}); canary on {50 * cfg.canary.share:g}% "
                                         f"of users against {current} on as many", out.name, experiment["name"], verdict)
    entry = record(registry, decision)
    log.info("retrain: %s %s: %s %s", decision.action, decision.version, decision.reason, json.dumps(decision.numbers))
    typer.echo(json.dumps(entry))
