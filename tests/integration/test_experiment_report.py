"""`streamrank experiments report` on the real parts: the exposures and interactions read from
Kafka, the experiment from Redis as `apply` stored it, the numbers those of the offline
computation over the same records, and the plot written."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from cli.main import app
from contract.config import EngagementConfig
from contract.experiments import parse_experiments, store_experiments
from devstack.stack import create_topics
from models.experiment_report import outcomes, report
from tests.unit.test_attribution import logs
from traffic.publish import producer

NOW = datetime.now(UTC)


def test_the_report_reads_the_topics_and_the_applied_experiment(kafka_broker, redis_db, tmp_path):
    port, r = redis_db
    create_topics(kafka_broker, 1, {"interactions": "rep.interactions", "exposures": "rep.exposures"})
    exposures, interactions = logs({"control": 0.10, "model": 0.16}, users=600, seed=5)
    p = producer(kafka_broker)
    for e in exposures:
        p.send("rep.exposures", key=e["user_id"].encode(), value=json.dumps(e).encode())
    for i in interactions:
        p.send("rep.interactions", key=i["user_id"].encode(), value=json.dumps(i).encode())
    p.send("rep.interactions", key=b"x", value=b"not json")  # the job's DLQ would take it; the report skips it
    p.flush()
    spec = parse_experiments({"experiments": [
        {"name": "ab", "salt": "ab", "share": 1.0, "start": NOW - timedelta(days=1), "end": NOW + timedelta(days=1),
         "arms": [{"name": "control", "ranker": "trending"}, {"name": "model"}]}]}).spec()
    store_experiments(r, spec, "(test)")
    args = ["--set", f"redis.port={port}", "--set", f'kafka.bootstrap_servers="{kafka_broker}"',
            "--set", 'kafka.interactions_topic="rep.interactions"', "--exposures-topic", "rep.exposures",
            "--samples", "500"]
    out = CliRunner().invoke(app, ["experiments", "report", "ab", "--plot", str(tmp_path / "lift.png"), *args])
    assert out.exit_code == 0, out.output
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got.pop("plot") == str(tmp_path / "lift.png") and (tmp_path / "lift.png").read_bytes()[:4] == b"\x89PNG"
    assert got == json.loads(json.dumps(report(outcomes(exposures, interactions, EngagementConfig()),
                                               spec["experiments"][0], samples=500)))
    assert got["arms"]["model"]["users"] == 300 and got["lift"]["model"]["ctr"]["low"] > 0
    # counted straight from the records (each exposure shows one item of its own, clicked at most once)
    arm_of = {e["user_id"]: e["experiments"]["ab"] for e in exposures}
    for arm in ("control", "model"):
        shown = sum(arm_of[e["user_id"]] == arm for e in exposures)
        clicks = sum(arm_of[i["user_id"]] == arm and i["type"] == "click" for i in interactions)
        buys = sum(arm_of[i["user_id"]] == arm and i["type"] == "purchase" for i in interactions)
        assert got["arms"][arm]["exposures"] == shown
        assert got["arms"][arm]["ctr"] == round(clicks / shown, 6)
        assert got["arms"][arm]["conversion"] == round(buys / shown, 6)
    assert "model vs control: ctr lift" in out.output

    missing = CliRunner().invoke(app, ["experiments", "report", "nope", *args])
    assert missing.exit_code == 2 and "no experiment 'nope' is applied; applied: ab" in missing.output
