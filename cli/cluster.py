"""`streamrank cluster` (a standalone Flink cluster) and `submit` (the job onto it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import (AllowNonRestoredOpt, ConfigOpt, DEFAULT_CONFIG, FromSavepointOpt, JobOpt, PresetOpt,
                        SetOpt, check_job, exit_on, job_args, job_config)
from contract.config import ConfigError
from contract.paths import run_dir
from devstack.cluster import ClusterError, FlinkCluster
from jobs.store import check_state_layout

app = typer.Typer(help="Standalone Flink cluster from PyFlink's bin/.", no_args_is_help=True)
commands = typer.Typer()


@app.command("up")
def cluster_up(
    rest_port: Annotated[int, typer.Option(help="REST/web port")] = 18081,
    slots: Annotated[int, typer.Option(help="task slots")] = 2,
    metrics_port: Annotated[int, typer.Option(
        help="first port of Flink's Prometheus reporter; each daemon takes the first free one of 10")] = 9249,
) -> None:
    """Start a JobManager and a TaskManager on loopback, each with Flink's Prometheus reporter."""
    c = FlinkCluster(run_dir())
    with exit_on(ClusterError):
        ov = c.up(rest_port, slots, metrics_port)
    typer.echo(f"Flink {ov.get('flink-version')} at http://{c.address()}  "
               f"taskmanagers {ov['taskmanagers']}  slots {ov['slots-total']}")
    for role, url in c.metrics_endpoints().items():
        typer.echo(f"{role} metrics at {url}")


@app.command("down")
def cluster_down() -> None:
    """Stop the standalone cluster."""
    FlinkCluster(run_dir()).down()
    typer.echo("cluster stopped")


@app.command("status")
def cluster_status() -> None:
    """Show the cluster overview and its jobs."""
    c = FlinkCluster(run_dir())
    ov = c.overview()
    if not ov:
        typer.echo("cluster not running (streamrank cluster up)")
        raise typer.Exit(1)
    typer.echo(json.dumps({"overview": ov, "jobs": c.jobs()}, indent=2))


def running_cluster():
    """The standalone cluster, or exit 1 saying how to start one."""
    c = FlinkCluster(run_dir())
    if not c.overview():
        typer.echo("no cluster answers; start one with `streamrank cluster up`", err=True)
        raise typer.Exit(1)
    return c


def cluster_job(job_id: str | None, verb: str):
    """(cluster, job id): the named job, or the one running job."""
    c = running_cluster()
    if job_id:
        return c, job_id
    running = [j["jid"] for j in c.jobs() if j["state"] == "RUNNING"]
    if len(running) != 1:
        typer.echo(f"{len(running)} jobs running ({', '.join(running) or 'none'}); name the one to {verb}",
                   err=True)
        raise typer.Exit(2)
    return c, running[0]


@app.command("cancel")
def cluster_cancel(
    job_id: Annotated[str | None, typer.Argument(help="default: the one running job")] = None,
) -> None:
    """Cancel a job running on the cluster (e.g. one `streamrank submit` started detached).

    Its last checkpoint is kept, to resume from with `submit --from-savepoint .../chk-N`."""
    c, job = cluster_job(job_id, "cancel")
    with exit_on(ClusterError):
        c.cancel(job)
    typer.echo(f"cancelling {job}")


@app.command("stop")
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
    c, job = cluster_job(job_id, "stop")
    target = str(Path(savepoint_dir).resolve()) if savepoint_dir and "://" not in savepoint_dir else savepoint_dir
    typer.echo(f"stopping {job} with a savepoint ...")
    with exit_on(ClusterError):
        path = c.stop_with_savepoint(job, target, drain)
    typer.echo(f"savepoint at {path}\nresume with: streamrank submit --from-savepoint {path}")


@commands.command()
def submit(
    config: ConfigOpt = DEFAULT_CONFIG,
    bounded: Annotated[bool, typer.Option(help="stop at the offsets latest at start")] = False,
    detached: Annotated[bool, typer.Option(help="return once submitted")] = True,
    set_: SetOpt = None,
    from_savepoint: FromSavepointOpt = None,
    allow_non_restored_state: AllowNonRestoredOpt = False,
    preset: PresetOpt = None,
    job: JobOpt = "recommend",
) -> None:
    """Submit the recommend job (or --job engagement) to the standalone cluster with `flink run -py`
    (--preset: as for run)."""
    check_job(job)
    cfg = job_config(config, set_, bounded, preset)
    if job == "recommend":  # before Flink starts: the users' states in Redis fit this config
        with exit_on(ConfigError, code=2):
            check_state_layout(cfg)
    c = running_cluster()
    extra = job_args(set_, bounded, from_savepoint, allow_non_restored_state, preset)
    out = c.submit(str(Path(config).resolve()), extra, detached, job)
    typer.echo(out.stdout[-4000:])
    if out.returncode != 0:
        typer.echo(out.stderr[-4000:], err=True)
        raise typer.Exit(out.returncode)
