"""`streamrank experiments`: check an experiments file, apply it to the running services and job
(through Redis, which they poll), and list what is applied."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import redis as redis_lib
import typer

from cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, exit_on, job_config
from contract.config import ConfigError
from contract.experiments import BUCKETS, load_experiments, now_ms, read_experiments, store_experiments

app = typer.Typer(help="Experiments: check a file, apply it to the running services and job, list what runs.",
                  no_args_is_help=True)
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


def _redis(config: str, set_: list[str] | None) -> redis_lib.Redis:
    cfg = job_config(config, set_)
    return redis_lib.Redis(**cfg.redis.client_kwargs())


@app.command("apply")
def apply(file: FileArg, config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Validate an experiments file and store it in the config's Redis: the lookup services and the
    job switch to it at their next poll. The last line is JSON with the applied version."""
    with exit_on(ConfigError, code=2):
        spec = load_experiments(file).spec()
    try:
        version = store_experiments(_redis(config, set_), spec, file.read_text())
    except redis_lib.RedisError as e:
        typer.echo(f"cannot store the experiments in Redis: {e}; is it running (`streamrank stack up`)?", err=True)
        raise typer.Exit(1) from None
    for line in _describe(spec, now_ms()):
        typer.echo(line, err=True)
    typer.echo(json.dumps({"applied": str(file), "version": version, "experiments": len(spec["experiments"])}))


@app.command("list")
def list_(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """The experiments applied in the config's Redis: each one's state (scheduled, running, ended),
    layer, traffic and arms. The last line is JSON: the version and the spec."""
    try:
        applied = read_experiments(_redis(config, set_))
    except redis_lib.RedisError as e:
        typer.echo(f"cannot read the experiments from Redis: {e}; is it running (`streamrank stack up`)?", err=True)
        raise typer.Exit(1) from None
    if applied is None:
        typer.echo("no experiments applied; `streamrank experiments apply FILE` applies some", err=True)
        typer.echo(json.dumps({"version": None, "experiments": []}))
        return
    spec, version = applied
    for line in _describe(spec, now_ms()):
        typer.echo(line, err=True)
    typer.echo(json.dumps({"version": version, **spec}))
