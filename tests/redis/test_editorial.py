"""Editorial rules against a real Redis: `streamrank rules apply|list|history|rollback` version and
audit what the services read, and both engines (and the gateway) serve an edit, an unavailable
item and a user's segments on the next calls, with no restart."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import grpc
import httpx
import pytest
from typer.testing import CliRunner

from cli.main import app
from contract import keys
from contract.editorial import history, load_rules, read_rules
from contract.paths import CONFIG_DIR
from contract.serving_config import load_serving_config
from devstack.stack import start_redis_cluster
from jobs.store import write_item_meta
from serving.launch import start_server
from serving.server import pb, pb_grpc
from tests.helpers import wait_until
from tests.redis.test_serving_ops import running_gateway

T0 = int(time.time() * 1000) - 60_000


def run(*args: str):
    return CliRunner().invoke(app, ["rules", *args])


def rules_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


PIN = """
[[rules]]
name = "hero"
action = "pin"
item = "i9"
position = 1

[[rules]]
name = "vip-only"
action = "exclude"
item = "i0"
segments = ["vip"]
"""


def test_apply_list_history_and_rollback_version_and_audit_the_rules(redis_db, tmp_path):
    port, r = redis_db
    apply_edit_and_roll_back(r, ["--set", f"redis.port={port}"], tmp_path, keys.ONE_REDIS)


def test_rules_on_a_redis_cluster_keep_each_version_with_its_audit(tmp_path):
    """On a Redis Cluster the audit list is tagged {rules}, in the rules' own slot, so one script
    stores a version and its audit together, as on one Redis."""
    cluster = start_redis_cluster(tmp_path / "redis-cluster")
    try:
        nodes = ", ".join(f'"127.0.0.1:{n.port}"' for n in cluster.nodes)
        at = ["--set", f"redis.cluster={{shards = 4, nodes = [{nodes}]}}", "--set", 'redis.host="127.0.0.1"',
              "--set", f"redis.port={cluster.port}"]
        rc = cluster.client()
        layout = keys.Layout(4)
        assert rc.keyslot(keys.RULES) == rc.keyslot(layout.rules_history())
        apply_edit_and_roll_back(rc, at, tmp_path, layout)
    finally:
        cluster.stop()


def apply_edit_and_roll_back(r, at: list[str], tmp_path: Path, layout: keys.Layout) -> None:
    assert json.loads(run("list", *at).stdout.splitlines()[-1]) == {"version": None, "rules": []}
    r.hset(keys.ITEM_META, "i9", keys.ItemMeta("c2", 3.0).encode())

    first = run("apply", str(rules_file(tmp_path, "a.toml", PIN)), *at, "--who", "ana")
    assert first.exit_code == 0, first.output
    v1 = json.loads(first.stdout.splitlines()[-1])
    assert v1["diff"] == {"added": ["hero", "vip-only"], "removed": [], "changed": {}}
    spec, version = read_rules(r)
    assert version == v1["version"] and spec["rules"][0]["category"] == "c2"  # the pin's category, from the catalog

    edited = PIN.replace("position = 1", "position = 2").replace('name = "vip-only"', 'name = "vip-hide"')
    second = run("apply", str(rules_file(tmp_path, "b.toml", edited)), *at, "--who", "bo")
    v2 = json.loads(second.stdout.splitlines()[-1])
    assert v2["diff"] == {"added": ["vip-hide"], "removed": ["vip-only"], "changed": {"hero": {"position": [1, 2]}}}
    listed = run("list", *at)
    assert json.loads(listed.stdout.splitlines()[-1])["version"] == v2["version"]
    assert "hero [active] pin item i9 at 2" in listed.output

    back = run("rollback", *at, "--who", "cy")
    assert back.exit_code == 0, back.output
    assert json.loads(back.stdout.splitlines()[-1])["version"] == v1["version"] == read_rules(r)[1]
    audit = history(r, layout=layout)
    assert [(e["who"], e["action"], e["version"]) for e in audit] == [
        ("cy", "rollback", v1["version"]), ("bo", "apply", v2["version"]), ("ana", "apply", v1["version"])]
    assert audit[0]["diff"]["changed"] == {"hero": {"position": [2, 1]}}
    shown = run("history", *at)
    assert "rollback by cy" in shown.output and "~hero (position)" in shown.output

    bad = run("apply", str(rules_file(tmp_path, "bad.toml", PIN.replace('action = "exclude"', 'action = "hide"'))), *at)
    assert bad.exit_code == 2 and "rules.1.action" in bad.output and "'pin', 'boost', 'bury' or 'exclude'" in bad.output
    assert read_rules(r)[1] == v1["version"] and len(history(r, layout=layout)) == 3  # nothing stored
    # an apply whose diff was made against a version that is no longer the current one stores
    # nothing (store_rules then reads again and retries)
    stale = r.eval(keys.lua("rules_apply"), 2, keys.RULES, layout.rules_history(), v2["version"], "{}", "v", 0, "", "{}")
    assert stale == 0 and read_rules(r)[1] == v1["version"] and len(history(r, layout=layout)) == 3


def test_check_names_the_conflicts_the_precedence_settles(tmp_path):
    text = PIN + '\n[[rules]]\nname = "also-first"\naction = "pin"\nitem = "i8"\nposition = 1\n' + \
        '\n[[rules]]\nname = "hide-i9"\naction = "exclude"\nitem = "i9"\n'
    out = run("check", str(rules_file(tmp_path, "c.toml", text)))
    assert out.exit_code == 0, out.output
    assert "also-first and hero pin position 1: hero takes it" in out.output
    assert "hero pins i9, which hide-i9 excludes: exclude wins" in out.output
    assert load_rules(CONFIG_DIR / "rules.toml").rules  # the shipped example is valid


def seed(r) -> None:
    items = [keys.ScoredItem(f"i{n}", 1.0 - n / 100, f"c{n % 3}", ("bought_before",) if n == 1 else ())
             for n in range(12)]
    r.set(keys.rec_key("vip-user"), keys.RecList(items, "v0007", T0, T0 + 5, segments=["vip"]).encode())
    r.set(keys.rec_key("plain-user"), keys.RecList(items, "v0007", T0, T0 + 5).encode())


@pytest.mark.parametrize("engine", ["go", "python"])
def test_an_edit_and_an_unavailable_item_are_served_on_the_next_calls_without_a_restart(redis_db, tmp_path, engine):
    port, r = redis_db
    seed(r)
    cfg = load_serving_config(None, {"redis.port": port, "engine": engine, "rules_refresh_s": 0.1})
    with start_server(cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.RecommendationsStub(channel)

        def top(user: str, k: int = 3) -> list[tuple[str, tuple[str, ...]]]:
            resp = stub.GetRecommendations(pb.GetRecommendationsRequest(user_id=user, k=k), timeout=5)
            return [(i.item_id, tuple(i.reasons)) for i in resp.items]

        assert top("vip-user") == [("i0", ()), ("i1", ("bought_before",)), ("i2", ())]
        resp = stub.GetRecommendations(pb.GetRecommendationsRequest(user_id="vip-user"), timeout=5)
        assert list(resp.segments) == ["vip"] and resp.rules_version == ""

        run("apply", str(rules_file(tmp_path, "a.toml", PIN)), "--set", f"redis.port={port}")
        version = read_rules(r)[1]
        assert wait_until(lambda: top("vip-user")[0] == ("i9", ("pinned",)), 10), "the pin served"
        assert top("vip-user") == [("i9", ("pinned",)), ("i1", ("bought_before",)), ("i2", ())]  # i0 excluded for vip
        assert top("plain-user") == [("i9", ("pinned",)), ("i0", ()), ("i1", ("bought_before",))]
        assert stub.GetRecommendations(pb.GetRecommendationsRequest(user_id="plain-user"), timeout=5).rules_version == version

        write_item_meta(r, [("i9", "c0", 1.0, False)])  # the catalog marks it unavailable
        assert wait_until(lambda: top("plain-user")[0] == ("i0", ()), 10), "the unavailable item gone"
        write_item_meta(r, [("i9", "c0", 1.0, True)])
        assert wait_until(lambda: top("plain-user")[0] == ("i9", ("pinned",)), 10), "the item back"

        run("rollback", "--set", f"redis.port={port}")  # one version only: nothing to roll back to
        r.delete(keys.RULES)
        assert wait_until(lambda: top("plain-user")[0] == ("i0", ()), 10), "the rules gone"


@pytest.mark.parametrize("upstream", ["redis", "lookupd"])
def test_the_gateway_answers_with_the_rules_reasons_and_segments(redis_db, tmp_path, upstream):
    """Reading Redis itself (the Python core) or asking lookupd (gateway.lookupd): the same answers."""
    port, r = redis_db
    seed(r)
    run("apply", str(rules_file(tmp_path, "a.toml", PIN)), "--set", f"redis.port={port}")
    with contextlib.ExitStack() as stack:
        cfg = load_serving_config(None, {"redis.port": port, "engine": "go"})
        if upstream == "lookupd":
            lookupd = stack.enter_context(start_server(cfg))
            cfg = cfg.model_copy(update={"gateway": cfg.gateway.model_copy(
                update={"lookupd": f"127.0.0.1:{lookupd.port}"})})
        base = stack.enter_context(running_gateway(cfg))
        got = httpx.get(f"{base}/v1/recommendations/vip-user", params={"k": 2}).json()
        assert [(i["item_id"], i["reasons"]) for i in got["items"]] == [("i9", ["pinned"]), ("i1", ["bought_before"])]
        assert got["segments"] == ["vip"] and got["rules_version"] == read_rules(r)[1]
        q = '{recommendations(userId: "vip-user", k: 2) {items {itemId reasons} segments rulesVersion}}'
        data = httpx.post(f"{base}/graphql", json={"query": q}).json()["data"]["recommendations"]
        assert data["items"] == [{"itemId": "i9", "reasons": ["pinned"]}, {"itemId": "i1", "reasons": ["bought_before"]}]
        assert data["segments"] == ["vip"]
        bad = httpx.get(f"{base}/v1/recommendations/bad user!")
        assert bad.status_code == 400 and "user_id must be" in bad.json()["error"]
        assert httpx.get(f"{base}/healthz").json() == {"status": "SERVING"}
        if upstream == "lookupd":
            lookupd.stop(0)
            down = httpx.get(f"{base}/v1/recommendations/vip-user")
            assert down.status_code == 503 and "lookup service unavailable" in down.json()["error"]
            assert httpx.get(f"{base}/healthz").status_code == 503


def test_the_gateway_says_what_lookupd_refused_when_a_retry_cannot_help(redis_db, monkeypatch):
    """A gateway whose config lacks lookupd's token: 502 naming the refusal, not 503 'retry'."""
    port, r = redis_db
    seed(r)
    monkeypatch.setenv("STREAMRANK_TEST_TOKEN", "s3cret")
    with contextlib.ExitStack() as stack:
        lookupd = stack.enter_context(start_server(load_serving_config(
            None, {"redis.port": port, "engine": "go", "auth_token_env": "STREAMRANK_TEST_TOKEN"})))
        cfg = load_serving_config(None, {"redis.port": port, "gateway.lookupd": f"127.0.0.1:{lookupd.port}"})
        base = stack.enter_context(running_gateway(cfg))
        got = httpx.get(f"{base}/v1/recommendations/vip-user")
        assert got.status_code == 502, got.text
        assert got.json()["code"] == "UPSTREAM_FAILED" and "UNAUTHENTICATED" in got.json()["error"]
        assert "auth_token_env" in got.json()["error"] and "127.0.0.1" not in got.json()["error"]
