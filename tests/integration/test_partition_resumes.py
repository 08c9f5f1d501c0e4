"""A partition that goes quiet and then resumes behind the others loses nothing.

Two partitions, two source subtasks. Partition 0 gets two minutes of events; partition 1 gets
nothing for longer than any idleness timeout, then events from the middle of those two minutes.
Each subtask's own watermark says partition 1's records are on time, so they are neither DLQ'd nor
sent to the late topic. If the quiet partition had been declared idle, the windows' watermark would
have moved on with partition 0 alone and the window operator would drop partition 1's records
without a trace: the ledger would stay short of what was sent (what the TaskManager kills under
load showed, where a restarted subtask trails the other)."""

from __future__ import annotations

import json
import time

from contract.keys import read_ledger
from tests.cluster.test_cluster_submit import close_windows, send
from tests.helpers import job_args, prefixed_topics, start_job_embedded, wait_for, wait_until
from traffic.simulator import Simulator

PREFIX = "resume."


def events(seed: int, users: str, start_ms: int, span_s: float, n: int) -> list[tuple[str, bytes]]:
    sim = Simulator(seed=seed, users=20, items=60, categories=4)
    out = []
    for ev in sim.events(start_ms, n / span_s, n):
        ev = {**ev, "user_id": f"{users}{ev['user_id']}", "consent": True}
        out.append((ev["user_id"], json.dumps(ev).encode()))
    return out


def test_a_partition_resuming_behind_the_other_loses_nothing(kafka_broker, redis_server, model_dir, tmp_path):
    port, r = redis_server
    r.flushdb()
    topic = prefixed_topics(kafka_broker, PREFIX, partitions=2)["interactions"]
    start = int(time.time() * 1000) - 900_000
    ahead = events(1, "a", start, 120.0, 120)
    behind = events(2, "b", start + 40_000, 20.0, 40)
    log = tmp_path / "job.log"
    job = start_job_embedded(job_args(kafka_broker, port, model_dir, PREFIX, "resume")
                             + ["--set", "flink.parallelism=2"], log)
    try:
        send(kafka_broker, topic, ahead, partition=0)
        # partition 0's windows are read and waiting (checkpoints complete), partition 1 says nothing
        wait_for(lambda: "Completed checkpoint" in "".join(p.read_text(errors="replace")
                                                          for p in tmp_path.glob("flink-*.log")),
                 180, "a completed checkpoint", job, log)
        time.sleep(8)  # longer than Flink's usual idleness timeouts (5 s here before)
        send(kafka_broker, topic, behind, partition=1)
        close_windows(kafka_broker, topic, start)
        total = len(ahead) + len(behind)
        if wait_until(lambda: sum(read_ledger(r).values()) >= total or job.poll() is not None, 180, every_s=1):
            time.sleep(3)  # a record counted twice would show now
    finally:
        job.terminate()
        job.wait(timeout=60)
    ledger = read_ledger(r)
    assert ledger["used"] == total and sum(ledger.values()) == total, (total, ledger, log.read_text()[-2000:])
