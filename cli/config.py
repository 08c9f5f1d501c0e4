"""`streamrank config`: check a config file without running anything."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import exit_on
from contract.config import ConfigError, load_config
from contract.serving_config import load_serving_config

app = typer.Typer(help="Config files: check one without running anything.", no_args_is_help=True)


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
