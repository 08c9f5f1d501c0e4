"""`streamrank experiments`: check an experiments file, apply it to the running services and job
(through Redis, which they poll), list what is applied, and report an experiment's outcomes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from kafka.errors import KafkaError

from cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, exit_on, job_config, on_redis_error, redis_for, redis_of
from contract import keys
from contract.config import ConfigError, JobConfig
from contract.experiments import BUCKETS, load_experiments, now_ms, read_experiments, store_experiments
from contract.paths import PROJECT_ROOT
from models.canary import running_canary, with_canary
from models.experiment_report import ExposureRow, cumulative_lift, outcomes, plot_cumulative_lift, report
from traffic.publish import read_json_topic
from udfs.attribution import MODELS

app = typer.Typer(help="Experiments: check a file, apply it to the running services and job, list what runs, "
                       "report one.", no_args_is_help=True)
FileArg = Annotated[Path, typer.Argument(help="an experiments file (deploy/config/experiments.toml is an example)")]


def _describe(spec: dict, at_ms: int) -> list[str]:
    lines = []
    for e in spec["experiments"]:
        state = "scheduled" if at_ms < e["start_ms"] else "ended" if at_ms >= e["end_ms"] else "running"
        lo, hi = e["traffic"]
        total = e["arms"][-1]["upto"]
        arms, prev = [], 0
        for a in e["arms"]:
            what = a["ranker"] + (f"@{a['model_version']}" if a["model_version"] else "")
            what += f", candidates {a['candidates']}" if a["candidates"] else ""
            control = ", control" if a["name"] == e["control"] else ""
            arms.append(f"{a['name']} {100 * (a['upto'] - prev) / total:.1f}% ({what}{control})")
            prev = a["upto"]
        lines.append(f"{e['name']} [{state}] layer {e['layer']}, {100 * (hi - lo) / BUCKETS:.2f}% of users "
                     f"(buckets {lo}-{hi}): " + "; ".join(arms))
    return lines


@app.command("check")
def check(file: FileArg) -> None:
    """Validate an experiments file as `apply` would: exit 0 with each experiment's traffic and arms
    (the spec as JSON on the last line), or exit 2 naming each bad field and the fix."""
    with exit_on(ConfigError, code=2):
        spec = load_experiments(file).spec()
    for line in _describe(spec, now_ms()):
        typer.echo(line, err=True)
    typer.echo(json.dumps(spec))


@app.command("apply")
def apply(
    file: FileArg, config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None,
    drop_canary: Annotated[bool, typer.Option(help="also end a canary `streamrank retrain` is running")] = False,
) -> None:
    """Validate an experiments file and store it in the config's Redis: the lookup services and the
    job switch to it at their next poll. A canary that `streamrank retrain` runs is kept (the file
    does not declare it) unless --drop-canary. The last line is JSON with the applied version."""
    with exit_on(ConfigError, code=2):
        spec = load_experiments(file).spec()
    with on_redis_error("store the experiments in Redis"):
        client = redis_of(config, set_)
        try:
            applied = read_experiments(client)
        except ValueError:  # a spec this version cannot read is replaced, and holds no canary it knows
            applied = None
        canary = running_canary(applied[0] if applied else None)
        if canary and not drop_canary and not running_canary(spec):
            spec = with_canary(spec, canary)
            typer.echo(f"kept the running canary {canary['name']} (--drop-canary ends it)", err=True)
        version = store_experiments(client, spec, file.read_text())
    for line in _describe(spec, now_ms()):
        typer.echo(line, err=True)
    typer.echo(json.dumps({"applied": str(file), "version": version, "experiments": len(spec["experiments"])}))


@app.command("list")
def list_(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """The experiments applied in the config's Redis: each one's state (scheduled, running, ended),
    layer, traffic and arms. The last line is JSON: the version and the spec."""
    with on_redis_error("read the experiments from Redis"), exit_on(ValueError):  # fields this version does not know
        applied = read_experiments(redis_of(config, set_))
    if applied is None:
        typer.echo("no experiments applied; `streamrank experiments apply FILE` applies some", err=True)
        typer.echo(json.dumps({"version": None, "experiments": []}))
        return
    spec, version = applied
    for line in _describe(spec, now_ms()):
        typer.echo(line, err=True)
    typer.echo(json.dumps({"version": version, **spec}))


def applied_experiments(cfg: JobConfig) -> tuple[dict, str] | None:
    """The applied spec and version from the config's Redis, or exit 1 saying why not."""
    with on_redis_error("read the experiments from Redis"), exit_on(ValueError):  # fields this version does not know
        return read_experiments(redis_for(cfg))


def exposure_outcomes(cfg: JobConfig, exposures_topic: str) -> list[ExposureRow]:
    """Every exposure on the topic with what followed it on the interactions topic."""
    try:
        exposures = read_json_topic(cfg.kafka.bootstrap_servers, exposures_topic)
        interactions = read_json_topic(cfg.kafka.bootstrap_servers, cfg.kafka.interactions_topic)
    except KafkaError as e:
        typer.echo(f"cannot read Kafka {cfg.kafka.bootstrap_servers}: {e}", err=True)
        raise typer.Exit(1) from None
    if pseudonym_keys := cfg.privacy.keys():  # exposures name users as the job stores them
        interactions = [{**i, "user_id": keys.pseudonym(str(i.get("user_id")), pseudonym_keys[0])}
                        for i in interactions]
    typer.echo(f"{len(exposures)} exposures, {len(interactions)} interactions read", err=True)
    return outcomes(exposures, interactions, cfg.engagement)


@app.command("report")
def report_(
    experiment: Annotated[str, typer.Argument(help="the experiment's name (`experiments list` shows them)")],
    config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None,
    exposures_topic: Annotated[str, typer.Option(help="the services' [exposures] topic")] = "exposures",
    attribution: Annotated[str, typer.Option(help=f"credit model for conversions: {' | '.join(MODELS)}")] = "last_touch",
    plot: Annotated[Path | None, typer.Option(help="PNG of cumulative lift (default var/experiments/NAME/)")] = None,
    samples: Annotated[int, typer.Option(min=100, help="bootstrap resamples of users")] = 2000,
) -> None:
    """An experiment's outcomes per arm, from the exposures and the interactions that followed
    them ([engagement] window, half-life, click types): users, exposures, CTR, conversion and
    revenue per user; lift over control with 95% intervals; a sample-ratio-mismatch check; a PNG of
    cumulative lift. The last line is JSON."""
    if attribution not in MODELS:
        raise typer.BadParameter(f"{attribution!r}; choose one of {', '.join(MODELS)}", param_hint="--attribution")
    cfg = job_config(config, set_)
    applied = applied_experiments(cfg)
    found = [e for e in (applied[0]["experiments"] if applied else []) if e["name"] == experiment]
    if not found:
        names = [e["name"] for e in applied[0]["experiments"]] if applied else []
        typer.echo(f"no experiment {experiment!r} is applied; applied: {', '.join(names) or 'none'} "
                   "(`streamrank experiments list`)", err=True)
        raise typer.Exit(2)
    rows = exposure_outcomes(cfg, exposures_topic)
    out = report(rows, found[0], attribution, samples)
    for arm, a in out["arms"].items():
        typer.echo(f"{arm}{' (control)' if arm == out['control'] else ''}: {a['users']} users, {a['exposures']} "
                   f"exposures, CTR {a['ctr']:.4f}, conversion {a['conversion']:.4f}, revenue per user "
                   f"{a['revenue_per_user']:.2f}", err=True)
    for arm, lift in out["lift"].items():
        for metric, v in lift.items():
            typer.echo(f"{arm} vs {out['control']}: {metric} lift {100 * v['lift']:+.1f}% "
                       f"(95% interval {100 * v['low']:+.1f}% to {100 * v['high']:+.1f}%)", err=True)
    typer.echo(f"sample ratio: p = {out['srm_p']:.4g}" + ("  MISMATCH: check assignment and logging"
                                                          if out["srm_alarm"] else ""), err=True)
    png = plot or PROJECT_ROOT / "var" / "experiments" / experiment / "cumulative_lift.png"
    out["plot"] = str(plot_cumulative_lift(cumulative_lift(rows, found[0]), experiment, png))
    typer.echo(f"cumulative lift: {out['plot']}", err=True)
    typer.echo(json.dumps(out))
