"""The `streamrank` command: local stack, traffic, training, the job (embedded or on a cluster),
serving and lookups. Every subcommand has --help."""

from __future__ import annotations

import importlib
import os
import sys

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup

from contract.paths import PROJECT_ROOT

# name -> (module, Typer in it, command in that Typer or None for the whole group, one-line help).
# A command's module is imported only when that command runs or shows its own help: the groups
# between them load PyFlink, LightGBM, FastAPI and Kafka's client, seconds that `streamrank --help`
# and every other command would otherwise pay. tests/unit/test_cli.py checks each line here
# against the docstring of the command it names.
COMMANDS: dict[str, tuple[str, str, str | None, str]] = {
    "config": ("cli.config", "app", None, "Config files: check one, or compare two (can a job resume across the "
                                          "change?), without running anything."),
    "experiments": ("cli.experiments", "app", None,
                    "Experiments: check a file, apply it to the running services and job, list what runs, report one."),
    "rules": ("cli.rules", "app", None,
              "Editorial rules: check a file, apply it to the running lookup services (versioned and audited in "
              "Redis), list what is applied, show the history, roll back."),
    "webhooks": ("cli.webhooks", "app", None,
                 "Webhooks: register endpoints for events (list_changed, segment_entered, segment_left, "
                 "profile_updated), deliver them signed with retries, replay the dead letters."),
    "stack": ("cli.stack", "app", None, "Local Kafka (KRaft) + Redis on loopback."),
    "cluster": ("cli.cluster", "app", None, "Standalone Flink cluster from PyFlink's bin/."),
    "models": ("cli.models", "app", None, "The model registry: list, promote, roll back; the live drift report."),
    "simulate": ("cli.traffic", "commands", "simulate",
                 "Publish simulated interactions (and the item catalog) to Kafka, or write a history file."),
    "import": ("cli.traffic", "commands", "import",
               "Import RetailRocket, UCI Online Retail or The Complete Journey logs into the event schema."),
    "control": ("cli.traffic", "commands", "control",
                "Send users' requests into their event streams: erase a history, opt out, opt back in."),
    "evaluate": ("cli.models", "commands", "evaluate",
                 "Train on the earlier part of a log, evaluate next-period recommendations on the later part "
                 "against the baselines."),
    "train": ("cli.models", "commands", "train",
              "Train a model on the earlier part of a history, gate it on the held-out later part, publish."),
    "retrain": ("cli.models", "commands", "retrain",
                "Retraining with a canary: decide the running canary from its experiment report (promote, roll back "
                "or wait), or, when none runs, train on --history, gate it against the baselines and start it as a "
                "canary on [canary] share of users."),
    "features": ("cli.models", "commands", "features",
                 "Show users' features at a cut-off, computed offline with the streaming job's definitions."),
    "run": ("cli.job", "commands", "run",
            "Run the recommend job (or --job engagement) on the embedded Flink MiniCluster."),
    "ledger": ("cli.job", "commands", "ledger",
               "Where every input record went: used / duplicate / opted_out / quarantined / late / dlq, beside the input count."),
    "dlq": ("cli.job", "commands", "dlq",
            "What the job rejected: the DLQ (or late, or quarantine) topic read from its start, counted by reason."),
    "submit": ("cli.cluster", "commands", "submit",
               "Submit the recommend job (or --job engagement) to the standalone cluster with `flink run -py`."),
    "serve": ("cli.serving", "commands", "serve",
              "Run the gRPC lookup service (the config's engine: go by default) until SIGTERM/SIGINT, then "
              "drain in-flight calls."),
    "gateway": ("cli.serving", "commands", "gateway",
                "Run the HTTP/JSON + GraphQL gateway (same lookups as gRPC) until SIGTERM/SIGINT."),
    "lookup": ("cli.serving", "commands", "lookup", "Ask the gRPC service for a user's recommendations."),
    "demo": ("cli.stack", "commands", "demo",
             "The whole loop: stack, history, train, job on live traffic, gRPC lookups, tidy up."),
}


def load_command(name: str) -> TyperCommand | TyperGroup:
    """The click command behind COMMANDS[name], its module imported now."""
    module, typer_app, command, _ = COMMANDS[name]
    group = typer.main.get_group(getattr(importlib.import_module(module), typer_app))
    if command is None:
        group.name = name
        return group
    return group.commands[command]


class _Deferred(TyperCommand):
    """Stands in for a command in the top-level help listing; parsing its arguments (running it,
    or its own --help) hands over to the real command."""

    def __init__(self, name: str) -> None:
        super().__init__(name, short_help=COMMANDS[name][3], help=COMMANDS[name][3])

    def make_context(self, info_name, args, parent=None, **extra):
        return load_command(self.name).make_context(info_name, args, parent=parent, **extra)


class _Commands(TyperGroup):
    def list_commands(self, ctx: typer.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: typer.Context, cmd_name: str) -> TyperCommand | None:
        return _Deferred(cmd_name) if cmd_name in COMMANDS else None


app = typer.Typer(cls=_Commands, help=__doc__, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    pass


def main() -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    app()


if __name__ == "__main__":
    main()
