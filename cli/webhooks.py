"""`streamrank webhooks`: register the endpoints a CMS wants events on, run the delivery worker,
replay the dead letters."""

from __future__ import annotations

import json
import logging
import signal
import uuid
from typing import Annotated

import httpx
import typer

from cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, job_config, on_redis_error, redis_for, redis_of
from contract import keys
from contract.webhooks import EVENT_TYPES, Endpoint, new_secret, read_endpoints
from serving.webhooks import Worker

app = typer.Typer(help="Webhooks: register endpoints for events (list_changed, segment_entered, segment_left, "
                       "profile_updated), deliver them signed with retries, replay the dead letters.",
                  no_args_is_help=True)


def _check_url(url: str) -> None:
    """Refuse at registration a URL the worker could never POST to (it would only fill the DLQ)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as e:
        raise typer.BadParameter(f"{url!r}: {e}; give an http:// or https:// URL", param_hint="URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise typer.BadParameter(f"{url!r}: give an http:// or https:// URL with a host", param_hint="URL")


def _events(value: str) -> tuple[str, ...]:
    events = tuple(e.strip() for e in value.split(",") if e.strip())
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown or not events:
        raise typer.BadParameter(f"{', '.join(unknown) or 'none given'}; choose from {', '.join(EVENT_TYPES)}",
                                 param_hint="--events")
    return events


@app.command("add")
def add(url: Annotated[str, typer.Argument(help="where to POST events (http:// or https://)")],
        events: Annotated[str, typer.Option(help=f"comma-separated: {', '.join(EVENT_TYPES)}")] = ",".join(EVENT_TYPES),
        secret: Annotated[str, typer.Option(help="signing secret (default: a new random one, printed once)")] = "",
        config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Register an endpoint; the worker sends it the chosen events from its next refresh. The last
    line is JSON with the endpoint's id and its signing secret (verify deliveries with it:
    contract.webhooks.verify)."""
    _check_url(url)
    endpoint = Endpoint(f"ep_{uuid.uuid4().hex[:12]}", url, _events(events), secret or new_secret())
    with on_redis_error("store the endpoint in Redis"):
        redis_of(config, set_).hset(keys.WEBHOOK_ENDPOINTS, endpoint.endpoint_id, endpoint.encode())
    typer.echo(json.dumps({"endpoint_id": endpoint.endpoint_id, "url": url, "events": list(endpoint.events),
                           "secret": endpoint.secret}))


@app.command("list")
def list_(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """The registered endpoints (secrets not shown). The last line is JSON."""
    with on_redis_error("read the endpoints from Redis"):
        endpoints = read_endpoints(redis_of(config, set_))
    for e in endpoints:
        typer.echo(f"{e.endpoint_id} {e.url}: {', '.join(e.events)}", err=True)
    typer.echo(json.dumps([{"endpoint_id": e.endpoint_id, "url": e.url, "events": list(e.events)} for e in endpoints]))


@app.command("remove")
def remove(endpoint_id: str, config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Stop sending to an endpoint."""
    with on_redis_error("remove the endpoint from Redis"):
        removed = redis_of(config, set_).hdel(keys.WEBHOOK_ENDPOINTS, endpoint_id)
    if not removed:
        typer.echo(f"no endpoint {endpoint_id!r}; `streamrank webhooks list` shows them", err=True)
        raise typer.Exit(1)


@app.command("deliver")
def deliver(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None,
            idle_s: Annotated[float | None, typer.Option(help="stop after this long with no event (default: run "
                                                                  "until SIGTERM/SIGINT)")] = None) -> None:
    """Deliver the job's events to the registered endpoints: signed, retried with backoff, dead-lettered
    after [webhooks] max_attempts. Runs until SIGTERM/SIGINT; the last line is JSON counts."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = job_config(config, set_)
    worker = Worker(cfg.webhooks, cfg.kafka.bootstrap_servers, redis_for(cfg))
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop.set())
    typer.echo(f"delivering {cfg.webhooks.topic} from {cfg.kafka.bootstrap_servers}", err=True)
    typer.echo(json.dumps(worker.run(idle_s)))


@app.command("replay")
def replay(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None,
           idle_s: Annotated[float, typer.Option(help="stop after this long with no dead letter")] = 3.0) -> None:
    """Resend the dead letters not replayed before to their endpoints as registered now; one that
    fails again is dead-lettered again. The last line is JSON counts."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = job_config(config, set_)
    worker = Worker(cfg.webhooks, cfg.kafka.bootstrap_servers, redis_for(cfg))
    typer.echo(json.dumps(worker.replay(idle_s)))
