"""`make demo`: the whole loop on real parts, then tidy up.

stack up -> simulate a history file -> train model v0 -> recommend job on the embedded
MiniCluster -> live simulated traffic through Kafka -> gRPC lookups of real lists -> stop all."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import redis

from contract import keys
from contract.config import load_config
from contract.editorial import fill_pin_categories, load_rules, store_rules
from contract.experiments import load_experiments, store_experiments
from contract.serving_config import load_serving_config
from contract.paths import PROJECT_ROOT, run_dir
from jobs.runtime import find_rest_endpoint
from devstack.metrics import find_ledger_metrics
from devstack.rejected import read_rejected, summarize
from devstack.stack import LocalStack, free_port, stop_pid
from models.training import build_training_set, train_and_publish
from serving.client import RecommendationsClient, format_recommendations
from serving.launch import start_server
from traffic.publish import catalog_path, end_offsets, publish_catalog, publish_events, send_requests, write_history
from traffic.simulator import Simulator

log = logging.getLogger("streamrank.demo")
CONFIG = PROJECT_ROOT / "deploy" / "config" / "local.toml"
EXPERIMENTS = PROJECT_ROOT / "deploy" / "config" / "experiments.toml"
RULES = PROJECT_ROOT / "deploy" / "config" / "rules.toml"


def _step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def run_demo(live_events: int, rate: float, keep: bool) -> int:
    run = run_dir()
    stack = LocalStack(run)
    cfg = load_config(CONFIG)
    job = None
    server = None
    try:
        _step("starting Kafka (KRaft) and Redis")
        stack.up(int(cfg.kafka.bootstrap_servers.rsplit(":", 1)[1]), cfg.redis.port)
        r = redis.Redis(**cfg.redis.client_kwargs())
        r.flushdb()

        _step("simulating 6 hours of history and training model v0")
        sim = Simulator(seed=11)
        history = run / "demo" / "history.jsonl"
        history.parent.mkdir(parents=True, exist_ok=True)
        write_history(sim, str(history), 60000, 5.0, int((time.time() - 6 * 3600) * 1000))
        catalog = catalog_path(history)
        registry = PROJECT_ROOT / "var" / "models"
        model = train_and_publish(build_training_set(history, cfg, catalog=catalog), registry, cfg)
        card = json.loads((model / "card.json").read_text())
        print(f"model {card['version']}: holdout AUC {card['holdout']['auc']}, "
              f"ONNX parity {card['onnx_parity_max_diff']:.1e}")

        dlq_start = end_offsets(cfg.kafka.bootstrap_servers, cfg.kafka.dlq_topic)  # the topic keeps earlier runs'
        _step(f"experiments: `streamrank experiments apply {EXPERIMENTS.relative_to(PROJECT_ROOT)}`")
        version = store_experiments(r, load_experiments(EXPERIMENTS).spec(), EXPERIMENTS.read_text())
        print(f"experiments version {version} (the job ranks each user for their arm): " + ", ".join(e.name for e in load_experiments(EXPERIMENTS).experiments))

        _step(f"editorial rules: `streamrank rules apply {RULES.relative_to(PROJECT_ROOT)}` (versioned, audited)")
        rules = load_rules(RULES)
        spec = rules.spec()
        fill_pin_categories(spec, {i.item_id: i.category for i in sim.items})  # as `rules apply` does
        entry = store_rules(r, spec, RULES.read_text(), "make demo", int(time.time() * 1000))
        print(f"rules version {entry['version']}: " + ", ".join(x.name for x in rules.rules))

        _step("starting the recommend job on the embedded Flink MiniCluster")
        job_log = run / "demo" / "job.log"
        with open(job_log, "wb") as out:
            job = subprocess.Popen(
                [sys.executable, "-m", "jobs.recommend", "--config", str(CONFIG),
                 "--set", f'scoring.model_dir="{registry / "current"}"',
                 "--set", 'kafka.startup_mode="latest-offset"',
                 "--set", f'kafka.group_id="streamrank-demo-{int(time.time())}"'],
                cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        publish_catalog(sim, cfg.kafka.bootstrap_servers, cfg.kafka.items_topic)
        print(f"job log: {job_log}; waiting for the job to read its sources")
        _wait_for(lambda: r.hlen(keys.ITEM_META) > 0, 120, job, job_log, "the job to load the catalog")

        _step(f"streaming {live_events} live events at {rate:.0f}/s through Kafka (1% malformed)")
        live = Simulator(seed=12)
        report = publish_events(live, cfg.kafka.bootstrap_servers, cfg.kafka.interactions_topic,
                                live_events, rate, malformed_fraction=0.01, realtime=True)
        print(f"published {report.sent} records ({report.malformed} malformed) from {report.users} users")
        # the last windows close once the watermark passes them: keep a trickle flowing
        publish_events(Simulator(seed=13), cfg.kafka.bootstrap_servers, cfg.kafka.interactions_topic,
                       int(rate * 10), rate, realtime=True, progress=False)
        _wait_for(lambda: sum(1 for _ in r.scan_iter(keys.rec_key("*"), count=1000)) >= report.users * 0.9,
                  90, job, job_log, "lists for the live users")
        n_lists = sum(1 for _ in r.scan_iter(keys.rec_key("*"), count=1000))
        if cfg.flink.web_port and (ui := find_rest_endpoint(cfg.flink.web_port)):
            print(f"Flink web UI (jobs, backpressure, checkpoints): {ui}")
        print("ledger (Redis): " + ", ".join(f"{k} {v}" for k, v in keys.read_ledger(r).items()))
        if cfg.flink.prometheus_port and (found := find_ledger_metrics(cfg.flink.prometheus_port)):
            counts = {k: v for k, v in found[1].items() if k != "control"}
            counts.update({f"control_{a}": n for a, n in found[1].get("control", {}).items()})
            print(f"Flink metrics at {found[0]}: " + ", ".join(f"streamrank_{k} {v}" for k, v in counts.items()))
        rejected = summarize(read_rejected(cfg.kafka.bootstrap_servers, cfg.kafka.dlq_topic, idle_ms=2000,
                                           progress=False, start=dlq_start), samples=0)
        print(f"this run's DLQ records (`streamrank dlq` shows samples): {rejected['records']}: "
              + ", ".join(f"{why} {n}" for why, n in rejected["by_reason"].items()))

        _step("serving over gRPC and looking up a few users (each answer is logged on Kafka's exposures topic)")
        scfg = load_serving_config(PROJECT_ROOT / "deploy" / "config" / "serving.toml", {"port": 0})
        exposures_start = sum(end_offsets(scfg.exposures.bootstrap_servers, scfg.exposures.topic).values())
        server = start_server(scfg, free_port())
        answered = 0
        newest = sorted(
            ((keys.RecList.decode(r.get(k)).feature_ts, k.decode().removeprefix(keys.rec_key(""))) for k in r.scan_iter(keys.rec_key("*"), count=1000)),
            reverse=True,
        )
        users = [u for _, u in newest[:3]]
        with RecommendationsClient(f"127.0.0.1:{server.port}", deadline_s=2.0) as client:
            for u in users + ["cold-user-42"]:
                print(format_recommendations(client.recommendations(u, 5)))
                answered += 1
            segmented = [u for _, u in newest if keys.RecList.decode(r.get(keys.rec_key(u))).segments]
            if segmented and segmented[0] not in users:
                print(format_recommendations(client.recommendations(segmented[0], 5)))
                answered += 1

            _step(f"{users[0]} opts out: `streamrank control opt-out {users[0]}` (history forgotten, no tracking)")
            send_requests(cfg.kafka.bootstrap_servers, cfg.kafka.interactions_topic, "opt_out", [users[0]])
            publish_events(Simulator(seed=14), cfg.kafka.bootstrap_servers, cfg.kafka.interactions_topic,
                           int(rate * 10), rate, realtime=True, progress=False)  # the watermark moves on
            _wait_for(lambda: not r.exists(keys.rec_key(users[0])), 60, job, job_log, "the opt-out to be applied")
            print(f"{users[0]}'s history and list are gone (control: {json.dumps(keys.read_control(r))})")
            print(format_recommendations(client.recommendations(users[0], 5)))
            answered += 1
        _wait_for(lambda: sum(end_offsets(scfg.exposures.bootstrap_servers, scfg.exposures.topic).values())
                  - exposures_start >= answered, 30, job, job_log, "the answers' exposure records")
        logged = sum(end_offsets(scfg.exposures.bootstrap_servers, scfg.exposures.topic).values()) - exposures_start
        print(f"{answered} answers served, {logged} exposure records on `{scfg.exposures.topic}` "
              "(request id, user, arms, items with positions)")
        print(f"\n{n_lists} users have lists in Redis; Kafka -> Flink -> ONNX -> Redis -> gRPC works. The pinned "
              f"item and the reasons come from the editorial rules and the job; `streamrank gateway` serves "
              "the same at /demo in a browser.")
        return 0
    finally:
        _step("tidying up")
        if server is not None:
            server.stop(1)
        if job is not None:
            stop_pid(job.pid)
        if not keep:
            stack.down()


def _wait_for(check, timeout_s: float, job, job_log: Path, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if job.poll() is not None:
            raise RuntimeError(f"the job exited ({job.returncode}) while waiting for {what}; see {job_log}")
        time.sleep(1)
    raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}; see {job_log}")
