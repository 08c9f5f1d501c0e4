"""The web SDK in a real browser: Debian's Chromium (puppeteer-core) loads the gateway's /demo
page, which fetches two placements in one call through the SDK. What the page shows must be what
lookupd answers over gRPC (items, reasons, segments, an editorial pin), and a click must reach Kafka
as an interaction carrying the answer's request_id. The screenshot is kept in var/web/."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import grpc
import pytest
from typer.testing import CliRunner

from cli.main import app
from contract import keys
from contract.paths import PROJECT_ROOT
from contract.serving_config import load_serving_config
from devstack.stack import create_topics
from serving.launch import start_server
from serving.server import pb, pb_grpc
from tests.helpers import read_topic
from tests.redis.test_serving_ops import running_gateway

WEB = PROJECT_ROOT / "serving" / "web"
SCREENSHOT = PROJECT_ROOT / "var" / "web" / "demo.png"
T0 = int(time.time() * 1000) - 120_000


def seed(r) -> None:
    items = [keys.ScoredItem(f"i{n}", 1.0 - n / 100, f"c{n % 3}",
                             ("bought_before", "model:your_history") if n == 2 else ("trending_in:c1",) if n == 4 else ())
             for n in range(15)]
    r.set(keys.rec_key("web-user"), keys.RecList(items, "v0003", T0, T0 + 5, segments=["buyers", "vip"]).encode())
    r.hset(keys.ITEM_META, "i9", keys.ItemMeta("c0", 2.0).encode())


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (make setup)")
def test_the_demo_page_shows_the_grpc_answer_and_a_click_reaches_kafka(kafka_broker, redis_db, tmp_path):
    port, r = redis_db
    seed(r)
    topics = {"interactions": "web.interactions", "rendered": "web.rendered"}
    create_topics(kafka_broker, 1, {"interactions": topics["interactions"], "rendered": topics["rendered"]})
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rules]]\nname = "hero-pick"\naction = "pin"\nitem = "i9"\nposition = 1\nplacements = ["hero"]\n')
    assert CliRunner().invoke(app, ["rules", "apply", str(rules), "--set", f"redis.port={port}"]).exit_code == 0

    cfg = load_serving_config(None, {"redis.port": port, "gateway.beacons.enabled": True,
                                     "gateway.beacons.bootstrap_servers": kafka_broker,
                                     "gateway.beacons.interactions_topic": topics["interactions"],
                                     "gateway.beacons.rendered_topic": topics["rendered"]})
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with running_gateway(cfg) as base, start_server(cfg) as lookupd, \
            grpc.insecure_channel(f"127.0.0.1:{lookupd.port}") as channel:
        stub = pb_grpc.RecommendationsStub(channel)
        want = {p: stub.GetRecommendations(pb.GetRecommendationsRequest(user_id="web-user", k=k, placement=p), timeout=5)
                for p, k in (("hero", 4), ("rail", 8))}
        run = subprocess.run(["node", str(WEB / "browser" / "drive-demo.mjs"), base, "web-user",
                              shutil.which("chromium"), str(SCREENSHOT)],
                             cwd=WEB, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-3000:]
        shown = json.loads(run.stdout.strip().splitlines()[-1])

    assert shown["errors"] == [] and shown["status"] == "ready"
    for placement, answer in want.items():
        page = shown["placements"][placement]
        assert [(i["item_id"], i["reasons"]) for i in page["items"]] == \
            [(i.item_id, list(i.reasons)) for i in answer.items], placement
        assert not page["fallback"] and len(page["request_id"]) == 32
    assert shown["placements"]["hero"]["items"][0] == {"item_id": "i9", "reasons": ["pinned"]}  # the editorial pin
    assert shown["placements"]["rail"]["items"][0]["item_id"] == "i0"  # the pin is for hero only
    assert shown["segments"] == list(want["hero"].segments) == ["buyers", "vip"]
    assert any(i["reasons"] for i in shown["placements"]["rail"]["items"])

    clicked = shown["placements"]["hero"]["items"][0]["item_id"]
    assert shown["clicks"] == [{"item": clicked, "sent": True}]
    interactions = [json.loads(v) for v in read_topic(kafka_broker, topics["interactions"], idle_ms=3000)]
    assert [(e["user_id"], e["item_id"], e["type"], e["request_id"]) for e in interactions] == \
        [("web-user", clicked, "click", shown["placements"]["hero"]["request_id"])]
    rendered = [json.loads(v) for v in read_topic(kafka_broker, topics["rendered"], idle_ms=1000)]
    assert {e["request_id"] for e in rendered} == {p["request_id"] for p in shown["placements"].values()}
    assert SCREENSHOT.stat().st_size > 10_000
