"""The local stack commands on real processes, and --help on every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deploy.paths import PROJECT_ROOT
from deploy.stack import LocalStack, free_port, stop_pid
from tests.integration.helpers import child_env

COMMANDS = [[], ["stack"], ["stack", "up"], ["stack", "down"], ["stack", "status"], ["simulate"], ["train"],
            ["run"], ["cluster"], ["cluster", "up"], ["cluster", "down"], ["cluster", "status"], ["cluster", "cancel"],
            ["submit"], ["config"], ["config", "check"],
            ["serve"], ["gateway"], ["lookup"], ["demo"], ["features"], ["ledger"], ["import"], ["evaluate"],
            ["models"], ["models", "list"], ["models", "promote"], ["models", "rollback"], ["models", "drift"]]


def cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deploy.cli", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, env=env or child_env(), timeout=300)


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "streamrank")
def test_every_command_has_help(cmd):
    out = cli(*cmd, "--help")
    assert out.returncode == 0 and "Usage" in out.stdout


def test_stack_up_twice_status_and_crash(tmp_path):
    env = child_env(STREAMRANK_RUN_DIR=str(tmp_path))
    kp, rp = str(free_port()), str(free_port())
    first = cli("stack", "up", "--kafka-port", kp, "--redis-port", rp, env=env)
    assert first.returncode == 0, first.stderr
    try:
        pids = {n: s.pid for n, s in LocalStack(tmp_path).services().items()}
        again = cli("stack", "up", "--kafka-port", kp, "--redis-port", rp, env=env)
        assert again.returncode == 0
        assert {n: s.pid for n, s in LocalStack(tmp_path).services().items()} == pids  # harmless
        assert cli("stack", "status", env=env).returncode == 0
        stop_pid(pids["redis"])  # a crash
        status = cli("stack", "status", env=env)
        assert status.returncode == 1 and "DOWN" in status.stdout
    finally:
        assert cli("stack", "down", env=env).returncode == 0
    assert cli("stack", "status", env=env).returncode == 1


def test_bad_config_fails_before_the_job_starts(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[features]\nmicro_batch_s = -2\n")
    out = cli("run", "--config", str(bad))
    assert out.returncode == 2
    assert "features.micro_batch_s" in out.stderr
