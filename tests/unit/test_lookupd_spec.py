"""lookupd reads the serving config as Python dumps it, and refuses a field it does not know: a
field added to or renamed in contract.config.ServingConfig without lookupd fails here, not in
production, where Go's JSON decoding would have dropped it without a word."""

from __future__ import annotations

import json
import subprocess

import pytest

from contract.serving_config import load_serving_config
from contract.paths import CONFIG_DIR, PROJECT_ROOT
from serving.launch import lookupd_binary, lookupd_spec


CONFIGS = [CONFIG_DIR / "serving.toml", PROJECT_ROOT / "deploy" / "k8s" / "serving.toml"]


def check(spec: dict, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return subprocess.run([str(lookupd_binary()), "--spec", str(path), "--check-spec"],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.relative_to(PROJECT_ROOT).as_posix())
def test_lookupd_reads_every_field_python_writes(config, tmp_path):
    spec = lookupd_spec(load_serving_config(config), tmp_path / "port")
    out = check(spec, tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == spec  # every field declared, with its type: nothing dropped


@pytest.mark.parametrize("where", [(), ("breaker",), ("cache",), ("redis",), ("exposures",), ("contract",)])
def test_lookupd_refuses_a_field_it_does_not_declare(where, tmp_path):
    spec = lookupd_spec(load_serving_config(CONFIG_DIR / "serving.toml"), tmp_path / "port")
    section = spec
    for name in where:
        section = section[name]
    section["renamed_in_python"] = 1
    out = check(spec, tmp_path)
    assert out.returncode == 2
    assert 'unknown field "renamed_in_python"' in out.stderr
    assert "ServingConfig" in out.stderr


def test_lookupd_reads_the_redis_login_and_tls_sections(tmp_path):
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("PEM")
    cfg = load_serving_config(None, {"redis": {"username": "lookup", "password_env": "SR_PASSWORD", "tls": {
        "ca_file": str(tmp_path / "ca.pem"), "cert_file": str(tmp_path / "client.pem"),
        "key_file": str(tmp_path / "client.key")}}})
    spec = lookupd_spec(cfg, tmp_path / "port")
    out = check(spec, tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == spec
