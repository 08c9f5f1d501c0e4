"""The lookup service (`serve`), its HTTP/GraphQL gateway (`gateway`) and a gRPC client (`lookup`)."""

from __future__ import annotations

import json
import os
from typing import Annotated

import grpc
import typer
from google.protobuf.json_format import MessageToDict

from cli.common import DEFAULT_SERVING, run_service, serving_config
from serving.client import RecommendationsClient, format_recommendations
from serving.gateway import run_gateway
from serving.launch import serve as run_server

commands = typer.Typer()


@commands.command()
def serve(
    config: Annotated[str, typer.Option("--config", "-c", help="serving config TOML")] = DEFAULT_SERVING,
    port: Annotated[int | None, typer.Option(help="override the port (0: any free)")] = None,
) -> None:
    """Run the gRPC lookup service (the config's engine: go by default) until SIGTERM/SIGINT, then
    drain in-flight calls."""
    run_service(serving_config(config, port), run_server)


@commands.command()
def gateway(
    config: Annotated[str, typer.Option("--config", "-c", help="serving config TOML ([gateway] section)")] = DEFAULT_SERVING,
    port: Annotated[int | None, typer.Option(help="override the gateway port")] = None,
) -> None:
    """Run the HTTP/JSON + GraphQL gateway (same lookups as gRPC) until SIGTERM/SIGINT."""
    cfg = serving_config(config, None)
    if port is not None:
        cfg = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(update={"port": port})})

    run_service(cfg, run_gateway)


@commands.command()
def lookup(
    user_id: Annotated[str, typer.Argument(help="user to look up")],
    k: Annotated[int, typer.Option(help="how many items")] = 10,
    target: Annotated[str, typer.Option(help="gRPC host:port")] = "127.0.0.1:50051",
    token_env: Annotated[str | None, typer.Option(help="environment variable holding the bearer token")] = None,
    ca_file: Annotated[str | None, typer.Option(help="CA certificate (PEM) for a TLS server")] = None,
    deadline_s: Annotated[float, typer.Option(help="deadline per call, seconds")] = 2.0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Ask the gRPC service for a user's recommendations."""
    token = os.environ.get(token_env) if token_env else None
    try:
        with RecommendationsClient(target, token=token, ca_file=ca_file, deadline_s=deadline_s) as client:
            resp = client.recommendations(user_id, k)
    except grpc.RpcError as e:
        typer.echo(f"{e.code().name}: {e.details()}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(MessageToDict(resp, preserving_proto_field_name=True)))
    else:
        typer.echo(format_recommendations(resp))
