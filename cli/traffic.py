"""Traffic into the job: `simulate`, `import` (public logs), `control` (users' requests)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, import_log, job_config, setup_logging
from contract.schema import CONTROL_ACTIONS, ID_PATTERN, valid_id
from traffic.formats import write_online_retail, write_retailrocket
from traffic.publish import (catalog_path, publish_catalog, publish_events, publish_history, send_requests,
                             write_history)
from traffic.simulator import Simulator

commands = typer.Typer()


@commands.command()
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
    setup_logging()
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
        write = write_retailrocket if fmt == "retailrocket" else write_online_retail
        typer.echo(json.dumps(write(sim, history, events, rate, start)))
        return
    if history:
        history.parent.mkdir(parents=True, exist_ok=True)
        report = write_history(sim, str(history), events, rate, start, malformed)
        typer.echo(json.dumps({**report.as_dict(), "history": str(history), "catalog": str(catalog_path(history))}))
        return
    cfg = job_config(config, None)
    k = cfg.kafka
    n_items = publish_catalog(sim, k.bootstrap_servers, k.items_topic)
    report = publish_events(sim, k.bootstrap_servers, k.interactions_topic, events, rate,
                            malformed_fraction=malformed, realtime=realtime)
    typer.echo(json.dumps({**report.as_dict(), "catalog_items": n_items}))


@commands.command("import")
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
    setup_logging()
    cfg = job_config(config, None)
    report = import_log(path, fmt, out, cfg, item_properties, category_tree, products)
    for line, reason, row in report.rejected[:20]:
        typer.echo(f"rejected line {line}: {reason}: {row[:120]}", err=True)
    if len(report.rejected) > 20:
        typer.echo(f"... {len(report.rejected) - 20} more in {out}.rejected.csv", err=True)
    summary = {**report.summary(), "history": str(out), "rejected_file": f"{out}.rejected.csv"}
    if publish:
        summary["published"] = publish_history(out, cfg.kafka.bootstrap_servers, cfg.kafka.interactions_topic,
                                               cfg.kafka.items_topic, rate)
    typer.echo(json.dumps(summary))


@commands.command()
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
    name = action.replace("-", "_")
    if name not in CONTROL_ACTIONS:
        typer.echo(f"unknown action {action!r}: use erase, opt-out or opt-in", err=True)
        raise typer.Exit(2)
    if bad := [u for u in users if not valid_id(u)]:
        typer.echo(f"not user ids ({ID_PATTERN}): {', '.join(map(repr, bad))}", err=True)
        raise typer.Exit(2)
    cfg = job_config(config, set_)
    now = int(time.time() * 1000)
    sent = send_requests(cfg.kafka.bootstrap_servers, cfg.kafka.interactions_topic, name, users, now)
    typer.echo(json.dumps({"topic": cfg.kafka.interactions_topic, "type": name, "ts": now, "event_ids": sent}))
