"""`streamrank experiments apply` and `list` against a real Redis: what apply stores is what
services and the job read (contract.experiments.read_experiments), a bad file stores nothing, and
both engines answer with the applied arms within experiments_refresh_s, without a restart."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from contract import keys
from contract.config import CanaryConfig
from contract.experiments import assign, load_experiments, read_experiments, store_experiments
from models.canary import canary_experiment, with_canary
from contract.paths import CONFIG_DIR
from contract.serving_config import load_serving_config
from serving.client import RecommendationsClient
from serving.launch import start_server
from tests.helpers import wait_until

EXAMPLE = CONFIG_DIR / "experiments.toml"


def run(*args: str):
    return CliRunner().invoke(app, ["experiments", *args])


def test_apply_stores_the_spec_services_read_and_list_shows_it(redis_db, tmp_path):
    port, client = redis_db
    at = ["--set", f"redis.port={port}"]
    empty = run("list", *at)
    assert empty.exit_code == 0 and json.loads(empty.stdout.splitlines()[-1]) == {"version": None, "experiments": []}

    applied = run("apply", str(EXAMPLE), *at)
    assert applied.exit_code == 0, applied.output
    version = json.loads(applied.stdout.splitlines()[-1])["version"]
    spec, stored_version = read_experiments(client)
    assert stored_version == version and spec == load_experiments(EXAMPLE).spec()
    assert assign(spec, "u1", spec["experiments"][0]["start_ms"]) == assign(
        load_experiments(EXAMPLE).spec(), "u1", spec["experiments"][0]["start_ms"])

    listed = run("list", *at)
    assert listed.exit_code == 0
    assert json.loads(listed.stdout.splitlines()[-1])["version"] == version
    assert "ranker-vs-trending [" in listed.output and "layer ranking, 50.00% of users" in listed.output

    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace('share = 0.2', 'share = 0.2\nsalty = "x"'))
    refused = run("apply", str(bad), *at)
    assert refused.exit_code == 2 and "salty: unknown key; did you mean 'salt'?" in refused.output
    assert read_experiments(client)[1] == version  # nothing stored


def test_apply_without_redis_says_so(tmp_path):
    out = run("apply", str(EXAMPLE), "--set", "redis.port=1")
    assert out.exit_code == 1 and "cannot store the experiments in Redis" in out.output


def running_now(tmp_path) -> Path:
    """The example file with every experiment running from yesterday to tomorrow."""
    day = timedelta(days=1)
    now = datetime.now(UTC).replace(microsecond=0)
    text = re.sub(r"^start = .*$", f"start = {(now - day).isoformat()}", EXAMPLE.read_text(), flags=re.M)
    text = re.sub(r"^end = .*$", f"end = {(now + day).isoformat()}", text, flags=re.M)
    (tmp_path / "experiments.toml").write_text(text)
    return tmp_path / "experiments.toml"


def test_services_pick_up_applied_experiments_without_a_restart(redis_db, engine, tmp_path):
    port, client = redis_db
    cfg = load_serving_config(None, {"redis.port": port, "engine": engine, "experiments_refresh_s": 0.1})
    file = running_now(tmp_path)
    spec = load_experiments(file).spec()
    now_ms = int(time.time() * 1000)
    users = [f"u{n}" for n in range(40)]
    with start_server(cfg) as server, RecommendationsClient(f"127.0.0.1:{server.port}", deadline_s=5) as lookups:
        assert all(not lookups.recommendations(u).experiments for u in users)
        assert run("apply", str(file), "--set", f"redis.port={port}").exit_code == 0

        def arms() -> list[dict]:
            return [dict(lookups.recommendations(u).experiments) for u in users]

        assert wait_until(lambda: any(arms()), 10)
        assert arms() == [assign(spec, u, now_ms) for u in users] and any(arms())
        client.delete(keys.EXPERIMENTS)
        assert wait_until(lambda: not any(arms()), 10)


def test_apply_keeps_a_running_canary_unless_told_to_drop_it(redis_db):
    port, client = redis_db
    at = ["--set", f"redis.port={port}"]
    canary = canary_experiment("v0002", "v0001", CanaryConfig())
    store_experiments(client, with_canary(None, canary), "(retrain)")
    kept = run("apply", str(EXAMPLE), *at)
    assert kept.exit_code == 0 and f"kept the running canary {canary['name']}" in kept.output
    spec, _ = read_experiments(client)
    assert spec["experiments"] == [canary, *load_experiments(EXAMPLE).spec()["experiments"]]
    dropped = run("apply", str(EXAMPLE), "--drop-canary", *at)
    assert dropped.exit_code == 0, dropped.output
    assert read_experiments(client)[0] == load_experiments(EXAMPLE).spec()


def test_a_spec_with_a_field_this_version_does_not_know_is_refused_as_lookupd_refuses_it(redis_db):
    port, client = redis_db
    spec = load_experiments(EXAMPLE).spec()
    spec["experiments"][0]["arms"][0]["boost"] = 2
    store_experiments(client, spec, "(a newer version)")
    with pytest.raises(ValueError, match=r"arm 'trending' of 'ranker-vs-trending' has unknown fields \['boost'\]"):
        read_experiments(client)
    listed = run("list", "--set", f"redis.port={port}")
    assert listed.exit_code == 1 and "unknown fields ['boost']" in listed.output
    assert run("apply", str(EXAMPLE), "--set", f"redis.port={port}").exit_code == 0  # replaces it
    assert read_experiments(client)[0] == load_experiments(EXAMPLE).spec()
