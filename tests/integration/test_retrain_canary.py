"""`streamrank retrain` deciding a running canary on the real parts (Kafka, Redis, a model
registry): a canary whose users click less is rolled back, one whose users click more is
promoted; either way the canary leaves the applied experiments and the decision is kept with its
numbers."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from cli.main import app
from contract.config import load_config
from contract.experiments import read_experiments, store_experiments
from devstack.stack import create_topics
from models.canary import DECISIONS, canary_experiment, running_canary, with_canary
from models.registry import Registry
from traffic.publish import producer


def two_versions(model_dir, root) -> Registry:
    """A registry with v0001 current and v0002 published beside it (the same model's files)."""
    reg = Registry(root)
    files = {"model.onnx": (model_dir / "model.onnx").read_bytes()}
    card = {k: v for k, v in json.loads((model_dir / "card.json").read_text()).items() if k != "version"}
    reg.publish(files, card, promote=True)
    reg.publish(files, card, promote=False)
    return reg


def publish_outcomes(bootstrap: str, prefix: str, experiment: str, ctr: dict[str, float], users: int = 800) -> None:
    rng = random.Random(prefix)
    p = producer(bootstrap)
    for n in range(users):
        arm = "current" if n % 2 == 0 else "canary"
        for m in range(5):
            rid, t = f"{prefix}{n}-{m}", 1_796_000_000_000 + m * 3_600_000
            e = {"request_id": rid, "user_id": f"u{n}", "served_at_ms": t, "experiments": {experiment: arm},
                 "placement": "", "model_version": "", "items": [{"item_id": f"i{m}"}]}
            p.send(f"{prefix}exposures", value=json.dumps(e).encode())
            if rng.random() < ctr[arm]:
                for typ, dt in (("click", 1000), ("purchase", 2000)):
                    if typ == "purchase" and rng.random() < 0.5:
                        continue
                    i = {"event_id": f"{rid}-{typ}", "user_id": f"u{n}", "type": typ, "item_id": f"i{m}",
                         "ts": t + dt, "value": 10.0, "request_id": rid}
                    p.send(f"{prefix}interactions", value=json.dumps(i).encode())
    p.flush()


@pytest.mark.parametrize(("case", "ctr", "action", "current"), [
    ("worse", {"current": 0.15, "canary": 0.08}, "rollback", "v0001"),
    ("better", {"current": 0.08, "canary": 0.15}, "promote", "v0002"),
])
def test_a_worse_canary_is_rolled_back_and_a_better_one_promoted(case, ctr, action, current, kafka_broker,
                                                                   redis_db, model_dir, tmp_path):
    port, r = redis_db
    reg = two_versions(model_dir, tmp_path / "registry")
    experiment = canary_experiment("v0002", "v0001", load_config(None).canary)
    store_experiments(r, with_canary(None, experiment), "(test)")
    prefix = f"rt.{case}."
    create_topics(kafka_broker, 1, {"interactions": f"{prefix}interactions", "exposures": f"{prefix}exposures"})
    publish_outcomes(kafka_broker, prefix, experiment["name"], ctr)

    out = CliRunner().invoke(app, ["retrain", "--registry", str(reg.root), "--exposures-topic", f"{prefix}exposures",
                                   "--set", f"redis.port={port}", "--set", f'kafka.bootstrap_servers="{kafka_broker}"',
                                   "--set", f'kafka.interactions_topic="{prefix}interactions"'])
    assert out.exit_code == 0, out.output
    decision = json.loads(out.stdout.strip().splitlines()[-1])
    assert decision["action"] == action and decision["version"] == "v0002", decision
    assert reg.current() == current
    assert running_canary(read_experiments(r)[0]) is None  # decided: the canary no longer runs
    assert decision["numbers"]["users"] == {"current": 400, "canary": 400}
    kept = [json.loads(line) for line in (reg.root / DECISIONS).read_text().splitlines()]
    assert kept[-1] == decision


def test_without_a_canary_or_a_history_retrain_says_what_it_needs(redis_db, tmp_path):
    port, r = redis_db
    out = CliRunner().invoke(app, ["retrain", "--registry", str(tmp_path), "--set", f"redis.port={port}"])
    assert out.exit_code == 2 and "no canary runs; pass --history FILE" in out.output
