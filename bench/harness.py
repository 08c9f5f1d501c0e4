"""What the benchmarks share: their own Kafka + Redis, a small trained model, timed job runs."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import redis

from contract.config import JobConfig, load_config
from contract.paths import PROJECT_ROOT
from devstack.stack import Service, create_topics, free_port, start_kafka, start_redis, stop_pid
from models.training import TrainingSet, build_training_set, train_and_publish
from traffic.publish import write_history
from traffic.simulator import Simulator


def parse_sets(pairs: list[str]) -> dict[str, object]:
    """The benches' --set SECTION.KEY=JSON options as config overrides."""
    return {k: json.loads(v) for k, v in (x.split("=", 1) for x in pairs)}


def toml_value(v: object) -> str:
    """A value for `--set SECTION.KEY=VALUE` (parsed as TOML): JSON scalars are valid TOML, a
    dict becomes an inline table."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


@dataclass
class BenchStack:
    work: Path
    kafka: Service
    redis_svc: Service
    model: Path

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka.port}"

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis(port=self.redis_svc.port)

    def topics(self, *names: str, partitions: int = 2) -> None:
        for t in names:
            create_topics(self.bootstrap, partitions, {"interactions": t, "items": "bench.items", "dlq": "bench.dlq"})

    def job_sets(self, topic: str, parallelism: int, startup: str = "earliest-offset", **extra: object) -> list[str]:
        values: dict[str, object] = {
            "kafka.bootstrap_servers": self.bootstrap, "kafka.interactions_topic": topic,
            "kafka.items_topic": "bench.items", "kafka.dlq_topic": "bench.dlq",
            "kafka.late_topic": "bench.late", "kafka.group_id": f"bench-{time.time()}",
            "kafka.startup_mode": startup, "redis.port": self.redis_svc.port,
            "scoring.model_dir": str(self.model), "flink.parallelism": parallelism, **extra,
        }
        return [a for k, v in values.items() for a in ("--set", f"{k}={toml_value(v)}")]

    def timed_run(self, module: str, args: list[str]) -> float:
        """Seconds for one bounded run of `python -m module` (Redis flushed first)."""
        self.redis.flushdb()
        t0 = time.monotonic()
        with open(self.work / "jobs.log", "ab") as out:
            rc = subprocess.run([sys.executable, "-m", module, "--bounded", *args], cwd=PROJECT_ROOT,
                                stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise SystemExit(f"{module} failed ({rc}); see {self.work / 'jobs.log'}")
        return time.monotonic() - t0

    def checkpointed_run(self, module: str, args: list[str]) -> tuple[float, int]:
        """One bounded run of `python -m module` with its REST API on a free port, Redis flushed
        first: (seconds, the largest checkpoint's state size in bytes, from Flink's own checkpoint
        statistics; 0 if none completed)."""
        self.redis.flushdb()
        port = free_port()
        t0 = time.monotonic()
        largest = 0
        with open(self.work / "jobs.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, "-m", module, "--bounded", *args, "--set", f"flink.web_port={toml_value(str(port))}"],
                                    cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                largest = max(largest, _checkpointed_bytes(port))
                time.sleep(0.5)
        if proc.returncode != 0:
            raise SystemExit(f"{module} failed ({proc.returncode}); see {self.work / 'jobs.log'}")
        return time.monotonic() - t0, largest

    def close(self) -> None:
        stop_pid(self.kafka.pid)
        stop_pid(self.redis_svc.pid)


def _checkpointed_bytes(port: int) -> int:
    """The largest completed checkpoint's state size of the jobs a local REST API lists (0 if it
    does not answer yet, or none completed)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs", timeout=1) as r:
            jobs = json.load(r)["jobs"]
        sizes = [0]
        for job in jobs:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/jobs/{job['id']}/checkpoints", timeout=1) as r:
                latest = (json.load(r).get("latest") or {}).get("completed") or {}
            sizes.append(int(latest.get("state_size") or 0))
        return max(sizes)
    except (OSError, ValueError, KeyError):
        return 0


def stop_on_sigterm() -> None:
    """Let a SIGTERM (kill, a CI time limit) end the benchmark through its `finally`, which stops
    the Kafka and Redis it started. Python's default for SIGTERM exits at once and left them running."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


def start_bench_stack(partitions: int = 2) -> BenchStack:
    stop_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="streamrank-bench-"))
    print(f"bench: work dir {work}", flush=True)
    rsvc = start_redis(work, free_port())
    ksvc = start_kafka(work, free_port(), free_port(), partitions=partitions)
    cfg, ts = bench_training_set(work)
    model = train_and_publish(ts, work / "models", cfg).parent / "current"
    return BenchStack(work, ksvc, rsvc, model)


def bench_training_set(work: Path) -> tuple[JobConfig, TrainingSet]:
    """The training set of the benchmarks' small model (default config): 20,000 simulated events
    at 5/s (2,000 users, 5,000 items), written to work/history.jsonl."""
    hist = work / "history.jsonl"
    write_history(Simulator(seed=42, users=2000, items=5000, categories=30), str(hist), 20000, 5.0,
                  int((time.time() - 7200) * 1000), progress=False)
    cfg = load_config(None)
    return cfg, build_training_set(hist, cfg, progress=False)


def go_build(src: Path, name: str) -> Path:
    """`go build` of the Go program in src into .cache/bin/name (incremental: a no-op when nothing
    changed); modules come from the Go module proxy."""
    go = shutil.which("go")
    if go is None:
        raise SystemExit(f"this benchmark needs Go (https://go.dev/dl/) to build {src.relative_to(PROJECT_ROOT)}")
    binary = PROJECT_ROOT / ".cache" / "bin" / name
    binary.parent.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([go, "build", "-o", str(binary), "."], cwd=src, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"go build of {src.relative_to(PROJECT_ROOT)} failed:\n{out.stderr[-3000:]}")
    return binary


def sustained_rate(events: int, full_s: float, tiny_s: float) -> int:
    """Events/s with the job's fixed start-up (a run over a one-record topic) taken out."""
    return round(events / max(full_s - tiny_s, 1e-3))
