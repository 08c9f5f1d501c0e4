"""`streamrank config`: check a config file without running anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import exit_on
from contract.config import ConfigError, load_config, savepoint_changes
from contract.serving_config import load_serving_config
from udfs.features import FEATURE_SET, layout_changes, state_layout

app = typer.Typer(help="Config files: check one, or compare two (can a job resume across the change?), without "
                       "running anything.", no_args_is_help=True)


@app.command("check")
def config_check(
    file: Annotated[Path, typer.Argument(help="a job config (local.toml) or a serving config (serving.toml)")],
    serving: Annotated[bool | None, typer.Option(
        "--serving/--job", help="which kind of file (default: serving if its name says so)")] = None,
) -> None:
    """Validate a config file as the job or the service would, before anything starts: exit 0 and
    the effective values as JSON, or exit 2 naming each bad field and the fix."""
    as_serving = "serving" in file.name if serving is None else serving
    with exit_on(ConfigError, code=2):
        cfg = load_serving_config(file, None) if as_serving else load_config(file)
    typer.echo(cfg.model_dump_json(indent=2))
    typer.echo(f"{file}: a valid {'serving' if as_serving else 'job'} config", err=True)


def _flat(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict):
        out: dict[str, object] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


@app.command("diff")
def config_diff(
    old: Annotated[Path, typer.Argument(help="the job config a running job was started with")],
    new: Annotated[Path, typer.Argument(help="the job config it would resume with")],
    preset: Annotated[str | None, typer.Option(help="the preset both are loaded with, as the job would")] = None,
) -> None:
    """The effective values (defaults and presets applied) that differ between two job configs,
    and whether a job can resume from its savepoint across the change. Two things stop it: a
    change to the shape of the users' states in Redis (a window, a slice count, the memory
    half-lives, the dedup horizon, the feature set: the job refuses to start over them), and a
    change Flink's state in the savepoint cannot take (the window size, early rows or the
    quarantine turned on or off, the users' pseudonyms). The last line is JSON: changed,
    resumable, state_shape, savepoint (each field -> why)."""
    with exit_on(ConfigError, code=2):
        before, after = load_config(old, preset=preset), load_config(new, preset=preset)
    a, b = _flat(before.model_dump(mode="json")), _flat(after.model_dump(mode="json"))
    changed = {k: {"old": a.get(k), "new": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    shape = layout_changes(state_layout(before.features), state_layout(after.features))
    savepoint = savepoint_changes(before, after)
    for k, v in changed.items():
        why = ([f"changes the state's shape ({shape[k]})"] if k in shape else []) + (
            [f"changes the savepoint's state ({savepoint[k]})"] if k in savepoint else [])
        typer.echo(f"  {k}: {json.dumps(v['old'])} -> {json.dumps(v['new'])}" + "".join(f"   {w}" for w in why),
                   err=True)
    if shape.get(FEATURE_SET) and FEATURE_SET not in changed:
        typer.echo(f"  the feature set changes ({shape[FEATURE_SET]})", err=True)
    if not changed:
        typer.echo("no effective value differs", err=True)
    if not shape and not savepoint:
        typer.echo("a running job can resume from its savepoint with the new config", err=True)
    else:
        typer.echo(f"a running job cannot resume with the new config ({', '.join([*shape, *savepoint])}): run it "
                   "from the start (no savepoint) over an empty Redis database, or keep the old values", err=True)
    typer.echo(json.dumps({"changed": changed, "resumable": not shape and not savepoint, "state_shape": shape,
                           "savepoint": savepoint}))
