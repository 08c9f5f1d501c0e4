"""The local stack commands on real processes (--help of every command: tests/unit/test_cli.py)."""

from __future__ import annotations

import subprocess
import sys


from contract.paths import PROJECT_ROOT
from devstack.stack import LocalStack, free_port, stop_pid
from tests.helpers import child_env


def cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, env=env or child_env(), timeout=300)


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
