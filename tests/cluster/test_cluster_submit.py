"""Submit the job to a standalone Flink cluster started from PyFlink's bin/ and see lists appear."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter

from prometheus_client.parser import text_string_to_metric_families
import pytest

from contract import keys
from contract.keys import read_ledger
from contract.paths import PROJECT_ROOT
from devstack.cluster import FlinkCluster, kubernetes_job
from devstack.metrics import scrape
from devstack.rejected import read_rejected, summarize
from devstack.stack import free_port
from tests.conftest import job_config
from tests.integration import test_engagement_job as engagement
from tests.helpers import (assert_features_equal_replay, child_env, job_args, prefixed_topics,
                                       read_states, records_replay, replay_ledger, scrape_until_ledger,
                                       wait_until)
from traffic.publish import producer, publish_catalog, publish_events
from traffic.simulator import Simulator



@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    c = FlinkCluster(run)
    c.up(rest_port=free_port(), slots=2, metrics_port=free_port())
    yield c, run
    c.down()


def test_submitted_job_writes_lists(cluster, kafka_broker, redis_server, model_dir):
    c, run = cluster
    port, r = redis_server
    prefix, sim = "cl.", Simulator(seed=5, users=60, items=200, categories=6)
    fresh_start(kafka_broker, r, prefix, sim)
    report = publish_events(sim, kafka_broker, f"{prefix}interactions", 1000, 50.0,
                            start_ms=int(time.time() * 1000) - 60_000, progress=False)
    env = child_env(STREAMRANK_RUN_DIR=str(run))
    out = subprocess.run(
        [sys.executable, "-m", "cli", "submit", "--bounded", "--no-detached",
         "--config", str(PROJECT_ROOT / "deploy" / "config" / "local.toml"),
         *job_args(kafka_broker, port, model_dir, prefix, "cluster-test")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    jobs = c.jobs()
    assert [j["state"] for j in jobs] == ["FINISHED"], jobs
    with_lists = {k.decode().removeprefix(keys.rec_key("")) for k in r.scan_iter(keys.rec_key("*"))}
    assert len(with_lists) == report.users > 0
    assert keys.RecList.decode(r.get(keys.rec_key(sorted(with_lists)[0]))).items


def test_submitted_engagement_job_totals_the_offline_ones(cluster, kafka_broker, redis_server):
    c, run = cluster
    port, r = redis_server
    for key in r.scan_iter("engagement:*"):
        r.delete(key)
    topics, exposures, interactions = engagement.publish(kafka_broker, "cl.eng.")
    out = subprocess.run([sys.executable, "-m", "cli", "submit", "--job", "engagement", "--bounded", "--no-detached",
                          "--config", str(PROJECT_ROOT / "deploy" / "config" / "local.toml"),
                          *engagement.settings(kafka_broker, port, topics)],
                         cwd=PROJECT_ROOT, env=child_env(STREAMRANK_RUN_DIR=str(run)), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert [j["state"] for j in c.jobs() if j["name"] == "streamrank-engagement"] == ["FINISHED"]
    engagement.assert_totals_are_the_offline_ones(r, exposures, interactions)


def test_detached_job_reports_metrics_and_cancels(cluster, kafka_broker, redis_server, model_dir):
    """A streaming (unbounded) job submitted detached: the TaskManager's Prometheus reporter serves
    the ledger's counters, equal to the ledger once every record is in it, and
    `streamrank cluster cancel` stops the job."""
    c, run = cluster
    port, r = redis_server
    prefix, sim = "cl2.", Simulator(seed=6, users=40, items=100, categories=5)
    fresh_start(kafka_broker, r, prefix, sim, partitions=1)
    start = int(time.time() * 1000) - 60_000
    publish_events(sim, kafka_broker, f"{prefix}interactions", 500, 50.0, start_ms=start, progress=False)
    # a record far ahead closes the windows of the 500; it stays in its own open window
    publish_events(Simulator(seed=7, users=1, items=1, categories=1), kafka_broker, f"{prefix}interactions", 1,
                   1.0, start_ms=start + 3_600_000, progress=False)
    env = child_env(STREAMRANK_RUN_DIR=str(run))
    cli = [sys.executable, "-m", "cli"]
    out = subprocess.run([*cli, "submit", "--config", str(PROJECT_ROOT / "deploy" / "config" / "local.toml"),
                          *job_args(kafka_broker, port, model_dir, prefix, "cluster-metrics")],
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    wait_until(lambda: sum(read_ledger(r).values()) >= 500, 180, every_s=0.5)
    want = read_ledger(r)
    assert sum(want.values()) == 500, want
    got, _ = scrape_until_ledger(c.metrics_endpoints()["taskmanager"], want)
    assert got == want and want["used"] > 0

    out = subprocess.run([*cli, "cluster", "cancel"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_until(lambda: "CANCELED" in [j["state"] for j in c.jobs()], 60, every_s=0.5)
    states = [j["state"] for j in c.jobs()]
    assert states.count("CANCELED") == 1 and "RUNNING" not in states, states


def test_stop_with_savepoint_and_resume_rescaled(cluster, kafka_broker, redis_server, model_dir, tmp_path):
    """The upgrade path a platform team takes: a streaming job at parallelism 1 is stopped with a
    savepoint (`cluster stop`) while some of its windows are open, more records arrive, and the job
    is resubmitted from the savepoint at parallelism 2. Every record is in the ledger exactly once,
    and every user's features equal the offline replay of the whole stream: nothing lost with the
    open windows, nothing read twice after the Kafka offsets. The DLQ is written exactly-once
    (kafka.rejected_delivery): read committed, each rejected record is there once, across the
    savepoint and the rescaling of its transactional writers."""
    c, run = cluster
    port, r = redis_server
    prefix, sim = "cl3.", Simulator(seed=8, users=80, items=200, categories=6)
    fresh_start(kafka_broker, r, prefix, sim)
    start = int(time.time() * 1000) - 600_000
    records = with_duplicates(sim.records(start, 20.0, 2400, malformed_fraction=0.01), every=10)
    part = len(records) * 3 // 5
    topic = f"{prefix}interactions"
    send(kafka_broker, topic, records[:part])

    env = child_env(STREAMRANK_RUN_DIR=str(run))
    cli = [sys.executable, "-m", "cli"]
    checkpoints = tmp_path / "checkpoints"
    args = job_args(kafka_broker, port, model_dir, prefix, "cluster-savepoint") + [
        "--set", f'flink.checkpoint_dir="{checkpoints}"', "--set", 'kafka.rejected_delivery="exactly-once"']

    def submit(*extra: str) -> None:
        out = subprocess.run([*cli, "submit", "--config", str(PROJECT_ROOT / "deploy" / "config" / "local.toml"),
                              *args, *extra], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    submit("--set", "flink.parallelism=1")
    assert wait_until(lambda: read_ledger(r)["used"] >= 200, 180, every_s=0.5), read_ledger(r)
    first = one_running_job(c)
    out = subprocess.run([*cli, "cluster", "stop", "--savepoint-dir", str(tmp_path / "savepoints")],
                         cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    savepoint = out.stdout.split("savepoint at ", 1)[1].split()[0]
    assert (tmp_path / "savepoints").as_posix() in savepoint and list(tmp_path.glob("savepoints/*/_metadata"))
    assert {j["jid"]: j["state"] for j in c.jobs()}[first] == "FINISHED"
    at_stop = sum(read_ledger(r).values())
    assert 0 < at_stop < part  # windows were open when it stopped: their records are in the savepoint

    # `config diff` tells the change made below (the parallelism) from one to the state's shape,
    # and a job with the latter is refused before Flink runs it, naming the field
    local = PROJECT_ROOT / "deploy" / "config" / "local.toml"
    rescaled, sliced = tmp_path / "rescaled.toml", tmp_path / "sliced.toml"
    rescaled.write_text(local.read_text().replace("parallelism = 1\n", "parallelism = 2\n", 1))
    sliced.write_text(local.read_text().replace("[features]\n", "[features]\nwindow_slices = 6\n", 1))
    verdicts = {}
    for new in (rescaled, sliced):
        out = subprocess.run([*cli, "config", "diff", str(local), str(new)], cwd=PROJECT_ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        verdicts[new.stem] = json.loads(out.stdout.splitlines()[-1])
    assert verdicts["rescaled"]["resumable"] and list(verdicts["rescaled"]["changed"]) == ["flink.parallelism"]
    assert not verdicts["sliced"]["resumable"] and list(verdicts["sliced"]["state_shape"]) == ["features.window_slices"]
    jobs_before = len(c.jobs())
    refused = subprocess.run([*cli, "submit", "--config", str(sliced), *args, "--from-savepoint", savepoint],
                             cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "features.window_slices was 12, the config says 6" in refused.stderr
    assert len(c.jobs()) == jobs_before  # nothing was submitted

    send(kafka_broker, topic, records[part:])
    close_windows(kafka_broker, topic, start)
    submit("--set", "flink.parallelism=2", "--from-savepoint", savepoint)  # the resumable change
    second = one_running_job(c, but=first)
    wait_until(lambda: sum(read_ledger(r).values()) >= len(records), 240, every_s=0.5)
    ledger = read_ledger(r)
    read_again = source_records_out(scrape(c.metrics_endpoints()["taskmanager"]) or "", second)
    # a checkpoint of the resumed job, for the cancel to keep; the DLQ's last transaction commits
    # with one
    wait_until(lambda: c.rest("GET", f"/jobs/{second}/checkpoints")["counts"]["completed"] > 0, 60, every_s=0.5)
    dlq_topic = f"{prefix}interactions.dlq"

    def dlq_report() -> dict:
        return summarize(read_rejected(kafka_broker, dlq_topic, idle_ms=2000, progress=False))

    wait_until(lambda: dlq_report()["records"] >= ledger["dlq"], 60, every_s=1)
    c.cancel(second)
    wait_until(lambda: {j["jid"]: j["state"] for j in c.jobs()}[second] == "CANCELED", 60, every_s=0.5)
    # a cancelled job keeps its last checkpoint, to resume from
    assert list(checkpoints.glob(f"{second}/chk-*/_metadata")), list(checkpoints.rglob("*"))[:20]

    cfg = job_config(port, model_dir)
    hist, replay = records_replay([v for _, v in records], cfg, tmp_path / "stream.jsonl")
    assert ledger == replay_ledger(hist, replay)
    assert sum(ledger.values()) == len(records) and ledger["duplicate"] > 0 and ledger["dlq"] > 0
    # the resumed job read on from the savepoint's offsets: not the records the first had accounted
    # (the ledger alone would not tell: a replay from the earliest offset is deduplicated)
    assert len(records) - part <= read_again <= len(records) + 2 - at_stop, (read_again, at_stop)
    job = c.rest("GET", f"/jobs/{second}")
    assert {v["parallelism"] for v in job["vertices"]} == {2}
    jm_log = "".join(p.read_text(errors="replace") for p in c.logs.glob("*standalonesession*.log"))
    assert re.search(rf"Restoring job {second} from Savepoint", jm_log), "the job did not restore the savepoint"
    assert_features_equal_replay(read_states(r), replay, cfg)
    dlq = dlq_report()
    assert dlq["by_reason"] == Counter(why for _, why in hist.rejected) and dlq["repeated"] == 0


def with_duplicates(records, every: int) -> list[tuple[str, bytes]]:
    """The simulator's (key, value, valid) records, every `every`-th valid one sent twice (to the
    same partition: keyed by user)."""
    out: list[tuple[str, bytes]] = []
    for n, (key, value, ok) in enumerate(records):
        out.append((key, value))
        if ok and n % every == 0:
            out.append((key, value))
    return out


def close_windows(bootstrap: str, topic: str, start_ms: int) -> None:
    """One record an hour past start_ms in each of the topic's two partitions: the watermark passes
    every window of the stream (the record stays in a window of its own)."""
    for p, ev in enumerate(Simulator(seed=9, users=2, items=1, categories=1).events(start_ms + 3_600_000, 1.0, 2)):
        send(bootstrap, topic, [(f"flush{p}", json.dumps({**ev, "user_id": f"flush{p}"}).encode())], partition=p)


def fresh_start(bootstrap: str, r, prefix: str, sim: Simulator, partitions: int = 2) -> None:
    """A test's clean start: Redis emptied, the test's own topics, the simulator's catalog on them."""
    r.flushdb()
    prefixed_topics(bootstrap, prefix, partitions=partitions)
    publish_catalog(sim, bootstrap, f"{prefix}items")


def send(bootstrap: str, topic: str, records: list[tuple[str, bytes]], partition: int | None = None) -> None:
    p = producer(bootstrap)
    for key, value in records:
        p.send(topic, key=key.encode(), value=value, partition=partition)
    p.flush()
    p.close()


def source_records_out(exposition: str, job_id: str) -> int:
    """Records the interactions source emitted in one job, summed over its subtasks."""
    return int(sum(s.value for f in text_string_to_metric_families(exposition)
                   if f.name == "flink_taskmanager_job_task_operator_numRecordsOut" for s in f.samples
                   if s.labels.get("job_id") == job_id
                   and s.labels.get("operator_name", "").startswith("Source:_interactions_src")))


def one_running_job(c: FlinkCluster, but: str | None = None, timeout_s: float = 60) -> str:
    def running() -> list[str]:
        return [j["jid"] for j in c.jobs() if j["state"] == "RUNNING" and j["jid"] != but]

    assert wait_until(lambda: len(running()) == 1, timeout_s, every_s=0.5), f"no one running job: {c.jobs()}"
    return running()[0]


def test_reactive_mode_rescales_onto_a_second_taskmanager_under_load(kafka_broker, redis_server, model_dir,
                                                                     tmp_path):
    """The Kubernetes job spec as an application cluster in reactive mode (scheduler-mode:
    reactive) with one TaskManager of one slot: the job runs at parallelism 1. A second
    TaskManager started while records keep arriving makes Flink rescale the running job to 2 (from
    its last checkpoint). At the end every record is in the ledger exactly once and every user's
    features equal the offline replay."""
    port, r = redis_server
    flink, args = kubernetes_job()
    prefix, sim = "reactive.", Simulator(seed=13, users=60, items=150, categories=5)
    fresh_start(kafka_broker, r, prefix, sim)
    start = int(time.time() * 1000) - 600_000
    records = [(key, value) for key, value, _ in sim.records(start, 5.0, 3000, malformed_fraction=0.01)]
    topic = f"{prefix}interactions"
    first = len(records) // 3
    send(kafka_broker, topic, records[:first])
    overrides = job_args(kafka_broker, port, model_dir, prefix, "reactive") + [
        "--set", 'redis.host="127.0.0.1"', "--set", f'flink.checkpoint_dir="{tmp_path / "checkpoints"}"',
        "--set", f'flink.savepoint_dir="{tmp_path / "savepoints"}"']
    c = FlinkCluster(tmp_path / "run")

    def parallelism(job_id: str) -> set[int]:
        return {v["parallelism"] for v in c.rest("GET", f"/jobs/{job_id}")["vertices"]}

    try:
        c.up(rest_port=free_port(), slots=1, metrics_port=free_port(), scheduler_mode="reactive",
             application=["--job-classname", flink["spec"]["job"]["entryClass"], *args, *overrides])
        job_id = one_running_job(c, timeout_s=120)
        assert parallelism(job_id) == {1}
        assert wait_until(lambda: read_ledger(r)["used"] > 0, 180, every_s=1), read_ledger(r)
        # records keep coming while the second TaskManager joins and the job rescales onto it
        rest = records[first:]
        sender = threading.Thread(target=lambda: [send(kafka_broker, topic, rest[i:i + 100]) or time.sleep(0.5)
                                                  for i in range(0, len(rest), 100)])
        sender.start()
        c.add_taskmanager()
        assert wait_until(lambda: c.overview()["taskmanagers"] == 2, 90, every_s=1), c.overview()
        running = lambda: {j["jid"]: j["state"] for j in c.jobs()}.get(job_id) == "RUNNING"  # noqa: E731
        assert wait_until(lambda: parallelism(job_id) == {2} and running(), 180, every_s=1), \
            c.rest("GET", f"/jobs/{job_id}")
        sender.join()
        close_windows(kafka_broker, topic, start)
        assert wait_until(lambda: sum(read_ledger(r).values()) >= len(records), 300, every_s=1), read_ledger(r)
        ledger = read_ledger(r)
        jm_log = "".join(p.read_text(errors="replace") for p in c.logs.glob("*standalonejob*.log"))
    finally:
        c.down()
    assert "reactive" in jm_log.lower() or "AdaptiveScheduler" in jm_log, jm_log[-2000:]
    cfg = job_config(port, model_dir)
    hist, replay = records_replay([v for _, v in records], cfg, tmp_path / "stream.jsonl")
    assert ledger == replay_ledger(hist, replay) and sum(ledger.values()) == len(records)
    assert_features_equal_replay(read_states(r), replay, cfg)


def test_application_mode_runs_the_kubernetes_job_spec(kafka_broker, redis_server, model_dir, tmp_path):
    """deploy/k8s/flink.yaml's job as the Flink Kubernetes Operator runs it: an application cluster
    whose JobManager runs the FlinkDeployment's entry class with its args (PyFlink's PythonDriver,
    jobs/recommend.py, --config job.toml). Here standalone-job.sh starts it, with the image's paths
    mapped to this checkout and job.toml's Kafka, Redis, storage and model pointed at the test's
    (everything else as job.toml says: parallelism 2, group offsets, the DLQ exactly-once). The
    bounded job accounts for every record, writes a list for every user and the DLQ holds each
    rejected record once; the cluster ends with the job."""
    port, r = redis_server
    flink, args = kubernetes_job()

    prefix, sim = "app.", Simulator(seed=11, users=80, items=150, categories=5)
    fresh_start(kafka_broker, r, prefix, sim)
    records = [(key, value) for key, value, _ in sim.records(int(time.time() * 1000) - 120_000, 20.0, 1200,
                                                               malformed_fraction=0.02)]
    send(kafka_broker, f"{prefix}interactions", records)
    overrides = job_args(kafka_broker, port, model_dir, prefix, "app-mode") + [
        "--set", 'redis.host="127.0.0.1"', "--set", "kafka.bounded=true", "--set", f'flink.checkpoint_dir="{tmp_path / "checkpoints"}"',
        "--set", f'flink.savepoint_dir="{tmp_path / "savepoints"}"']
    c = FlinkCluster(tmp_path / "run")
    try:
        c.up(rest_port=free_port(), slots=2, metrics_port=free_port(),
             application=["--job-classname", flink["spec"]["job"]["entryClass"], *args, *overrides])
        job_id = one_running_job(c, timeout_s=120)
        assert {v["parallelism"] for v in c.rest("GET", f"/jobs/{job_id}")["vertices"]} == {flink["spec"]["job"]["parallelism"]}
        assert wait_until(lambda: sum(read_ledger(r).values()) >= len(records), 300, every_s=1), read_ledger(r)
        ended = wait_until(lambda: c.overview() is None, 180, every_s=1)  # an application cluster ends with its job
    finally:
        c.down()
    jm_log = "".join(p.read_text(errors="replace") for p in c.logs.glob("*standalonejob*.log"))
    assert ended, jm_log[-3000:]
    assert re.search(rf"Job .*\({job_id}\) switched from state RUNNING to FINISHED", jm_log), jm_log[-3000:]
    cfg = job_config(port, model_dir)
    hist, replay = records_replay([v for _, v in records], cfg, tmp_path / "stream.jsonl")
    ledger = read_ledger(r)
    assert ledger == replay_ledger(hist, replay) and ledger["dlq"] > 0
    states = read_states(r)
    assert_features_equal_replay(states, replay, cfg)
    assert {k.decode().removeprefix(keys.rec_key("")) for k in r.scan_iter(keys.rec_key("*"))} == set(states)  # a list for every user
    dlq = summarize(read_rejected(kafka_broker, f"{prefix}interactions.dlq", idle_ms=2000, progress=False))
    assert dlq["by_reason"] == Counter(why for _, why in hist.rejected) and dlq["repeated"] == 0
