"""`streamrank stack` (local Kafka and Redis) and `streamrank demo` (the whole loop on them)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import setup_logging
from contract.paths import run_dir
from devstack.demo import run_demo
from devstack.stack import LocalStack, StackError

app = typer.Typer(help="Local Kafka (KRaft) + Redis on loopback.", no_args_is_help=True)
commands = typer.Typer()


@app.command("up")
def stack_up(
    kafka_port: Annotated[int, typer.Option(help="broker port")] = 19092,
    redis_port: Annotated[int, typer.Option(help="Redis port")] = 16379,
    partitions: Annotated[int, typer.Option(help="partitions of the interactions topic")] = 2,
) -> None:
    """Start (or keep) Kafka and Redis; wait until both answer; create topics."""
    setup_logging()
    try:
        services = LocalStack(run_dir()).up(kafka_port, redis_port, partitions)
    except StackError as e:
        typer.echo(f"stack up failed: {e}", err=True)
        raise typer.Exit(1) from None
    for s in services.values():
        typer.echo(f"{s.name:6s} 127.0.0.1:{s.port}  pid {s.pid}  log {s.log}")


@app.command("down")
def stack_down() -> None:
    """Stop Kafka and Redis started by `stack up`."""
    LocalStack(run_dir()).down()
    typer.echo("stack stopped")


@app.command("status")
def stack_status() -> None:
    """Show each service and whether its process runs and its port answers."""
    status = LocalStack(run_dir()).status()
    if not status:
        typer.echo("stack not started (streamrank stack up)")
        raise typer.Exit(1)
    for name, s in status.items():
        typer.echo(f"{name:6s} {'running' if s['running'] else 'DOWN':8s} 127.0.0.1:{s['port']}  pid {s['pid']}  log {s['log']}")
    if not all(s["running"] for s in status.values()):
        raise typer.Exit(1)


@commands.command()
def demo(
    live_events: Annotated[int, typer.Option(help="live events to stream through the job")] = 12000,
    rate: Annotated[float, typer.Option(help="live events per second")] = 250.0,
    keep: Annotated[bool, typer.Option(help="leave the stack running afterwards")] = False,
) -> None:
    """The whole loop: stack, history, train, job on live traffic, gRPC lookups, tidy up."""
    setup_logging()
    raise typer.Exit(run_demo(live_events, rate, keep))
