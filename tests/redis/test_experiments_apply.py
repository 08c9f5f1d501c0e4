"""`streamrank experiments apply` and `list` against a real Redis: what apply stores is what
services and the job read (contract.experiments.read_experiments), a bad file stores nothing."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app
from contract.experiments import assign, load_experiments, read_experiments
from contract.paths import CONFIG_DIR

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
