"""`streamrank rules`: editorial rules (pin, boost, bury, exclude) for the lookup services. check a
file, apply it (versioned in Redis, audited), list what is applied, show the audit, roll back."""

from __future__ import annotations

import getpass
import json
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import redis
import typer

from cli.common import DEFAULT_CONFIG, ConfigOpt, SetOpt, exit_on, job_config, on_redis_error, redis_for, redis_of
from contract import keys
from contract.config import ConfigError
from contract.editorial import (FOREVER_MS, RulesFile, fill_pin_categories, history, load_rules, pinned_items,
                                previous_version, read_rules, store_rules)
from contract.experiments import now_ms

app = typer.Typer(help="Editorial rules: check a file, apply it to the running lookup services (versioned and "
                       "audited in Redis), list what is applied, show the history, roll back.", no_args_is_help=True)
FileArg = Annotated[Path, typer.Argument(help="a rules file (deploy/config/rules.toml is an example)")]
WhoOpt = Annotated[str, typer.Option(help="who makes the change, for the audit (default: user@host)")]


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _when(ms: int) -> str:
    return "" if ms in (0, FOREVER_MS) else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="minutes")


def describe(spec: dict, at_ms: int) -> list[str]:
    lines = []
    for r in spec["rules"]:
        state = "scheduled" if at_ms < r["start_ms"] else "ended" if at_ms >= r["end_ms"] else "active"
        target = f"item {r['item']}" if r["item"] else f"category {r['category']}"
        what = {"pin": f"pin {target} at {r['position']}", "exclude": f"exclude {target}",
                "boost": f"boost {target} x{r['factor']:g}", "bury": f"bury {target} x{r['factor']:g}"}[r["action"]]
        scope = [f"placements {','.join(r['placements'])}" if r["placements"] else "",
                 f"segments {','.join(r['segments'])}" if r["segments"] else "",
                 f"from {_when(r['start_ms'])}" if r["start_ms"] else "", f"until {_when(r['end_ms'])}"
                 if r["end_ms"] != FOREVER_MS else ""]
        lines.append(f"{r['name']} [{state}] {what}" + "".join(f"; {s}" for s in scope if s))
    return lines


def _load(file: Path) -> RulesFile:
    with exit_on(ConfigError, code=2):
        return load_rules(file)


@app.command("check")
def check(file: FileArg) -> None:
    """Validate a rules file as `apply` would: exit 0 with each rule and what the precedence
    settles between them (two pins on one position, a pin of an excluded item), the spec as JSON
    on the last line; or exit 2 naming each bad field and the fix."""
    rules = _load(file)
    spec = rules.spec()
    for line in describe(spec, now_ms()):
        typer.echo(line, err=True)
    for line in rules.conflicts():
        typer.echo(f"note: {line}", err=True)
    typer.echo(json.dumps(spec))


def _rules_store(config: str, sets: list[str] | None) -> tuple[redis.Redis, keys.Layout]:
    """The config's Redis and its key layout (the audit list's name depends on it)."""
    cfg = job_config(config, sets)
    return redis_for(cfg), cfg.redis.layout()


@app.command("apply")
def apply(file: FileArg, config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None, who: WhoOpt = "") -> None:
    """Validate a rules file and store it as a new version in the config's Redis: the lookup
    services serve it within their rules_refresh_s, with no restart. The change is audited (who,
    when, what, the diff). A pinned item's category is taken from the catalog (item:meta). The
    last line is JSON with the version and the diff."""
    rules = _load(file)
    spec = rules.spec()
    with on_redis_error("store the rules in Redis"):
        client, layout = _rules_store(config, set_)
        items = pinned_items(spec)
        metas = client.hmget(keys.ITEM_META, items) if items else []
        known = {i: keys.ItemMeta.decode(m).category for i, m in zip(items, metas) if m is not None}
        for missing in fill_pin_categories(spec, known):
            typer.echo(f"note: pinned item {missing} is not in the catalog yet; it is served with no category "
                       "(set category in the rule to give it one)", err=True)
        entry = store_rules(client, spec, file.read_text(), who or _who(), now_ms(), layout=layout)
    for line in describe(spec, now_ms()):
        typer.echo(line, err=True)
    for line in rules.conflicts():
        typer.echo(f"note: {line}", err=True)
    typer.echo(json.dumps({"applied": str(file), "version": entry["version"], "rules": len(spec["rules"]),
                           "diff": entry["diff"]}))


@app.command("list")
def list_(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """The rules applied in the config's Redis, each with its state (scheduled, active, ended). The
    last line is JSON: the version and the spec."""
    with on_redis_error("read the rules from Redis"), exit_on(ValueError):  # fields this version does not know
        applied = read_rules(redis_of(config, set_))
    if applied is None:
        typer.echo("no rules applied; `streamrank rules apply FILE` applies some", err=True)
        typer.echo(json.dumps({"version": None, "rules": []}))
        return
    spec, version = applied
    for line in describe(spec, now_ms()):
        typer.echo(line, err=True)
    typer.echo(json.dumps({"version": version, **spec}))


@app.command("history")
def history_(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None,
             limit: Annotated[int, typer.Option(min=1, help="how many changes, newest first")] = 20) -> None:
    """Every change to the rules, newest first: version, when, who, apply or rollback, and the
    diff (rules added, removed, and the fields changed). The last line is JSON."""
    with on_redis_error("read the rules' history from Redis"):
        client, layout = _rules_store(config, set_)
        entries = history(client, limit, layout)
    for e in entries:
        d = e["diff"]
        parts = [f"+{n}" for n in d["added"]] + [f"-{n}" for n in d["removed"]] + [
            f"~{n} ({', '.join(f)})" for n, f in d["changed"].items()]
        typer.echo(f"{_when(e['at_ms'])} {e['version']} {e['action']} by {e['who']}: {' '.join(parts) or 'no change'}",
                   err=True)
    typer.echo(json.dumps([{k: v for k, v in e.items() if k != "source"} for e in entries]))


@app.command("rollback")
def rollback(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None, who: WhoOpt = "") -> None:
    """Restore the rules version that was current before the latest change (a second rollback
    restores the rolled-back one again). Audited like an apply. The last line is JSON."""
    with on_redis_error("roll the rules back in Redis"):
        client, layout = _rules_store(config, set_)
        previous = previous_version(history(client, 2, layout))
        if previous is None:
            typer.echo("nothing to roll back to: the history holds fewer than two changes", err=True)
            raise typer.Exit(1)
        entry = store_rules(client, previous["spec"], previous["source"], who or _who(), now_ms(), "rollback",
                            layout)
    typer.echo(f"rolled back to {entry['version']} (applied {_when(previous['at_ms'])} by {previous['who']})", err=True)
    typer.echo(json.dumps({"version": entry["version"], "diff": entry["diff"]}))
