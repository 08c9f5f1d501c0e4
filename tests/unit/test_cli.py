"""The `streamrank` command in-process (Typer's CliRunner): every command and group answers
--help, and the top-level listing says what each command's own help says."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cli.main import COMMANDS, app, load_command



def _walk(cmd, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [path, *(p for name, sub in sorted(getattr(cmd, "commands", {}).items())
                    for p in _walk(sub, (*path, name)))]


EVERY_COMMAND = [(), *(p for name in COMMANDS for p in _walk(load_command(name), (name,)))]


@pytest.mark.parametrize("path", EVERY_COMMAND, ids=lambda p: " ".join(p) or "streamrank")
def test_every_command_has_help(path):
    out = CliRunner().invoke(app, [*path, "--help"])
    assert out.exit_code == 0, out.output
    assert "Usage" in out.output


def test_the_walk_finds_nested_commands():
    assert {("dlq",), ("control",), ("cluster", "stop"), ("models", "drift"), ("config", "check")} <= set(EVERY_COMMAND)
    assert len(EVERY_COMMAND) >= 30


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_listing_agrees_with_each_command(name):
    cmd = load_command(name)
    own = " ".join((cmd.help or "").split())
    assert own.startswith(COMMANDS[name][3].rstrip(".")), (name, own[:120])


def test_an_unknown_command_is_refused_with_the_list():
    out = CliRunner().invoke(app, ["trian"])
    assert out.exit_code == 2
    assert "No such command" in out.output
