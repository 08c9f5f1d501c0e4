"""What the command groups share: logging, the config options and their loading."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import redis
import typer
from pythonjsonlogger.json import JsonFormatter

from contract.config import ConfigError, JobConfig, load_config, parse_overrides
from contract.serving_config import ServingConfig, load_serving_config
from contract.paths import CONFIG_DIR, PROJECT_ROOT
from jobs.redis_client import connect
from jobs.runtime import restore_options
from traffic.importers import ImportFailed, ImportReport, import_file

REGISTRY = PROJECT_ROOT / "var" / "models"
RegistryOpt = Annotated[Path, typer.Option("--registry", help="model registry directory")]
DEFAULT_CONFIG = str(CONFIG_DIR / "local.toml")
DEFAULT_SERVING = str(CONFIG_DIR / "serving.toml")
ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="job config TOML")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a field: SECTION.KEY=VALUE")]
PresetOpt = Annotated[str | None, typer.Option(
    "--preset", help="config preset applied over --config: web-sessions | retail-purchases (deploy/config/presets)")]


@contextmanager
def exit_on(*errors: type[BaseException], code: int = 1) -> Iterator[None]:
    """A refusal the code raises (a bad config, a cluster that said no, ...) ends the command with
    its message on stderr and `code`, not a traceback."""
    try:
        yield
    except errors as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(code) from None


def setup_logging(verbose: bool = False, fmt: str = "text") -> None:
    """text for people; json (one object per line, for log shippers) for the long-running services."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s",
                                           rename_fields={"levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    logging.getLogger("kafka").setLevel(logging.WARNING)


def job_config(config: str, sets: list[str] | None, bounded: bool = False, preset: str | None = None) -> JobConfig:
    """The job config with --set and --preset applied, or exit 2 naming each bad field."""
    with exit_on(ConfigError, code=2):
        cfg = load_config(config, parse_overrides(sets or [], bounded=bounded), preset)
        cfg.redis.password()  # an unset variable stops here, before anything connects or reads
        cfg.privacy.keys()
        return cfg


def redis_of(config: str, sets: list[str] | None) -> redis.Redis:
    """A client of the job config's Redis (--set applied): the one the job, the services and the
    commands that store experiments, rules and webhook endpoints share."""
    return redis_for(job_config(config, sets))


def redis_for(cfg: JobConfig) -> redis.Redis:
    """A client of cfg's Redis, for the commands (not jobs.store's: the serving role's install
    has no job dependencies)."""
    return connect(cfg.redis, socket_timeout=10)


@contextmanager
def on_redis_error(what: str) -> Iterator[None]:
    """A Redis that cannot be reached ends the command with exit 1, saying what could not be done."""
    try:
        yield
    except redis.RedisError as e:
        typer.echo(f"cannot {what}: {e}; is Redis running (`streamrank stack up`)?", err=True)
        raise typer.Exit(1) from None


def serving_config(config: str, port: int | None) -> ServingConfig:
    with exit_on(ConfigError, code=2):
        cfg = load_serving_config(config, {"port": port} if port is not None else None)
        cfg.redis.password()
        cfg.privacy.keys()
        return cfg


def run_service(cfg: ServingConfig, run) -> None:
    """A long-running service: its configured log format; a config problem found at start-up
    (e.g. an unset token variable) exits 2 with the message."""
    setup_logging(fmt=cfg.log_format)
    with exit_on(ConfigError, code=2):
        run(cfg)


FromSavepointOpt = Annotated[str | None, typer.Option(
    help="resume from a savepoint (`cluster stop` prints it) or a retained checkpoint's chk-N directory")]
AllowNonRestoredOpt = Annotated[bool, typer.Option(
    help="with --from-savepoint: skip state of operators the job no longer has")]


JOBS = ("recommend", "engagement")
JobOpt = Annotated[str, typer.Option(
    "--job", help="recommend (features, ranking, lists) or engagement (exposures joined with what users did next)")]


def check_job(job: str) -> None:
    if job not in JOBS:
        raise typer.BadParameter(f"{job!r}; choose one of {', '.join(JOBS)}", param_hint="--job")


def job_args(set_: list[str] | None, bounded: bool, from_savepoint: str | None,
             allow_non_restored_state: bool, preset: str | None = None) -> list[str]:
    """The jobs' arguments besides --config; the savepoint is checked here, before Flink starts."""
    with exit_on(SystemExit, code=2):
        restore = restore_options(from_savepoint, allow_non_restored_state)
    return ([a for s in (set_ or []) for a in ("--set", s)] + (["--bounded"] if bounded else [])
            + (["--preset", preset] if preset else [])
            # as a URI: the job may run in another directory (flink run)
            + (["--from-savepoint", restore["execution.state-recovery.path"]] if restore else [])
            + (["--allow-non-restored-state"] if allow_non_restored_state else []))


def import_log(path: Path, fmt: str, out: Path, cfg: JobConfig, item_properties: list[Path] | None,
               category_tree: Path | None, products: Path | None) -> ImportReport:
    """A public log imported into a history file (`import`, `evaluate`), or exit 2 with why not."""
    with exit_on(ImportFailed, FileNotFoundError, code=2):
        return import_file(path, fmt, out, item_properties=[str(p) for p in item_properties or []],
                           category_tree=str(category_tree) if category_tree else None,
                           products=str(products) if products else None, min_ts_ms=cfg.events.min_ts_ms)

