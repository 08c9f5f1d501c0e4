"""Local stack: a single-node Kafka broker in KRaft mode and Redis, as plain processes on loopback.

State (ports, pids, log paths) is kept in `<run_dir>/stack.json`; `status` checks the processes
and ports themselves, so it tells the truth after a crash.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
import redis

from contract.paths import CACHE

KAFKA_JARS = CACHE / "jars" / "kafka"
log = logging.getLogger(__name__)

KAFKA_LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = {level}
rootLogger.appenderRef.file.ref = file
"""

KAFKA_PROPS = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions={partitions}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
"""


class StackError(RuntimeError):
    """A stack process failed to start or answer; the message says which log to read."""


@dataclass
class Service:
    name: str
    pid: int
    port: int
    log: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited child not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _spawn(cmd: list[str], log_path: Path, cwd: Path) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
        )
    return proc.pid


def _wait(check, what: str, timeout_s: float, pid: int, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if not pid_alive(pid):
            raise StackError(f"{what} exited during start-up; see {log_path}")
        time.sleep(0.2)
    raise StackError(f"{what} did not answer within {timeout_s:.0f}s; see {log_path}")


def kafka_classpath() -> str:
    if not KAFKA_JARS.is_dir() or not any(KAFKA_JARS.glob("kafka_2.13-*.jar")):
        raise StackError(f"Kafka broker jars missing in {KAFKA_JARS}; run `make setup`")
    return str(KAFKA_JARS / "*")


def start_kafka(run_dir: Path, port: int, controller_port: int, partitions: int = 2) -> Service:
    home = run_dir / "kafka"
    data = home / "data"
    home.mkdir(parents=True, exist_ok=True)
    props = home / "server.properties"
    props.write_text(
        KAFKA_PROPS.format(
            port=port, controller_port=controller_port, data=data, partitions=partitions
        )
    )
    log_path = home / "kafka.log"
    log4j = home / "log4j2.properties"
    log4j.write_text(KAFKA_LOG4J.format(log=home / "server.log", level="INFO"))
    java = shutil.which("java") or "java"
    jvm = [java, "-Xms256m", "-Xmx768m", f"-Dlog4j2.configurationFile={log4j}", "-cp", kafka_classpath()]
    if not (data / "meta.properties").exists():
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        out = subprocess.run(
            # "--cluster-id=ID", not "-t ID": a base64 id can start with '-', which the tool's
            # argument parser then reads as an option (seen in CI: "expected one argument")
            [*jvm, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(props)],
            capture_output=True, text=True,
        )
        if out.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{out.stdout}{out.stderr}")
    pid = _spawn([*jvm, "kafka.Kafka", str(props)], log_path, home)
    _wait(lambda: port_open(port), "Kafka broker", 90, pid, log_path)
    _wait(lambda: _kafka_answers(port), "Kafka broker metadata", 60, pid, log_path)
    return Service("kafka", pid, port, str(home / "server.log"))


def _kafka_answers(port: int) -> bool:
    try:
        admin = KafkaAdminClient(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=3000)
        admin.list_topics()
        admin.close()
        return True
    except (KafkaError, OSError):
        return False


def start_redis(run_dir: Path, port: int, durable: bool = True, extra_args: tuple[str, ...] = (),
                login: dict | None = None) -> Service:
    """redis-server on loopback. durable: an append-only file, so a Redis that crashes or is
    restarted comes back with every write it acknowledged (the file is written before each reply,
    fsynced every second: only a crash of the machine loses up to a second). The job's exactly-once
    depends on it: Flink's checkpoint says which records were folded, Redis holds what they made,
    and the two must not part. durable=False only where what is stored does not matter.
    extra_args: more redis-server options (TLS, requirepass, ACL users), after which it answers
    only to a client made with login (redis.Redis keyword arguments)."""
    home = run_dir / "redis"
    home.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        raise StackError("redis-server not installed; run `make setup` (installs Debian's redis-server)")
    log_path = home / "redis.log"
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(home),
           "--save", "", "--appendonly", "yes" if durable else "no", "--appendfsync", "everysec",
           "--daemonize", "no", "--protected-mode", "yes", *extra_args]
    pid = _spawn(cmd, log_path, home)
    _wait(lambda: _redis_answers(port, login), "Redis", 30, pid, log_path)
    return Service("redis", pid, port, str(log_path))


@dataclass
class RedisCluster:
    """A local Redis Cluster: masters and their replicas, one redis-server each (start_redis_cluster)."""

    nodes: list[Service]  # in start order: the first `masters` were made masters

    @property
    def port(self) -> int:
        """A node to start from: cluster clients find the rest themselves."""
        return self.nodes[0].port

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.port, socket_timeout=5)

    def masters(self) -> list[Service]:
        """The nodes that are masters now (after a failover, a former replica)."""
        by_port = {n.port: n for n in self.nodes if pid_alive(n.pid)}
        return [by_port[int(n["port"])] for n in self._cluster_nodes() if "master" in n["flags"] and int(n["port"]) in by_port]

    def _cluster_nodes(self) -> list[dict]:
        for node in self.nodes:
            if not pid_alive(node.pid):
                continue
            try:
                seen = redis.Redis(port=node.port, socket_timeout=2).execute_command("CLUSTER NODES")
            except redis.RedisError:
                continue
            # redis-py parses the reply: "host:port" -> {"node_id", "flags", "connected", ...}
            return [{"port": addr.rsplit(":", 1)[1], "flags": v["flags"]} for addr, v in seen.items()
                    if "fail" not in v["flags"]]
        return []

    def healthy(self) -> bool:
        """Every slot served (cluster_state:ok), as a live node sees it."""
        for node in self.nodes:
            if pid_alive(node.pid):
                try:
                    info = redis.Redis(port=node.port, socket_timeout=2).execute_command("CLUSTER INFO")
                except redis.RedisError:
                    continue
                return info.get("cluster_state") == "ok"  # redis-py parses the reply
        return False

    def stop(self) -> None:
        for node in self.nodes:
            stop_pid(node.pid)


def start_redis_cluster(run_dir: Path, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000
                        ) -> RedisCluster:
    """A Redis Cluster on loopback from Debian's redis-server: masters x (1 + replicas) nodes, each
    `--cluster-enabled yes` with an append-only file, joined by `redis-cli --cluster create`. A master
    that stops answering for node_timeout_ms is failed over to its replica."""
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    if not Path(exe).exists() or not Path(cli).exists():
        raise StackError("redis-server / redis-cli not installed; run `make setup` (installs Debian's redis-server)")
    nodes = []
    for n in range(masters * (1 + replicas)):
        port = free_port()
        home = run_dir / f"redis-cluster-{n}"
        home.mkdir(parents=True, exist_ok=True)
        log_path = home / "redis.log"
        pid = _spawn([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(home), "--save", "",
                      "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
                      "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                      "--cluster-port", str(free_port()),  # else port + 10000, past 65535 for a high port
                      "--cluster-node-timeout", str(node_timeout_ms)], log_path, home)
        _wait(lambda port=port: _redis_answers(port), "Redis cluster node", 30, pid, log_path)
        nodes.append(Service("redis", pid, port, str(log_path)))
    cluster = RedisCluster(nodes)
    created = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                              "--cluster-replicas", str(replicas), "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
    if created.returncode != 0:
        cluster.stop()
        raise StackError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}{created.stderr[-2000:]}")
    deadline = time.monotonic() + 60
    # served slots and every replica attached (create assigns the replicas a moment after the slots)
    while not (cluster.healthy() and len(cluster.masters()) == masters):
        if time.monotonic() > deadline:
            cluster.stop()
            raise StackError(f"the Redis Cluster did not reach cluster_state:ok within 60 s; see {run_dir}/redis-cluster-*")
        time.sleep(0.2)
    return cluster


def _redis_answers(port: int, login: dict | None = None) -> bool:
    try:
        return bool(redis.Redis(**{"port": port, **(login or {})}, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def stop_pid(pid: int, timeout_s: float = 20) -> None:
    if not pid_alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)


def create_topics(bootstrap: str, partitions: int = 2, names: dict | None = None) -> None:
    """Create the interactions, items (compacted), DLQ, late, quarantine, exposures, engagement,
    webhook events and dead letters, and rendered-exposure topics if missing."""
    names = {"interactions": "interactions", "items": "items", "dlq": "interactions.dlq", **(names or {})}
    names.setdefault("late", names["interactions"] + ".late")
    names.setdefault("quarantine", names["interactions"] + ".quarantine")
    names.setdefault("exposures", "exposures")  # keyed by user, as the interactions: partitioned alike
    names.setdefault("engagement", "engagement")  # the engagement job's credited interactions
    names.setdefault("webhooks", "webhooks.events")  # the job's events for CMSs, keyed by user
    names.setdefault("webhooks_dlq", "webhooks.dlq")
    names.setdefault("rendered", "exposures.rendered")  # exposures pages confirm (the gateway's beacons)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        existing = set(admin.list_topics())
        wanted = [
            NewTopic(names["interactions"], partitions, 1),
            NewTopic(names["items"], 1, 1, topic_configs={"cleanup.policy": "compact"}),
            NewTopic(names["dlq"], 1, 1),
            NewTopic(names["late"], 1, 1),
            NewTopic(names["quarantine"], 1, 1),
            NewTopic(names["exposures"], partitions, 1),
            NewTopic(names["engagement"], 1, 1),
            NewTopic(names["webhooks"], partitions, 1),
            NewTopic(names["webhooks_dlq"], 1, 1),
            NewTopic(names["rendered"], partitions, 1),
        ]
        todo = [t for t in wanted if t.name not in existing]
        if todo:
            try:
                admin.create_topics(todo)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


class LocalStack:
    """The Kafka + Redis pair recorded in `<run_dir>/stack.json`."""
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.state_file = run_dir / "stack.json"

    def services(self) -> dict[str, Service]:
        if not self.state_file.exists():
            return {}
        raw = json.loads(self.state_file.read_text())
        return {k: Service(**v) for k, v in raw.items()}

    def _save(self, services: dict[str, Service]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({k: asdict(v) for k, v in services.items()}, indent=2))

    def status(self) -> dict[str, dict]:
        out = {}
        for name, svc in self.services().items():
            alive = pid_alive(svc.pid)
            out[name] = {**asdict(svc), "running": alive and port_open(svc.port)}
        return out

    def up(self, kafka_port: int = 19092, redis_port: int = 16379, partitions: int = 2) -> dict[str, Service]:
        services = self.services()
        status = self.status()
        if not status.get("redis", {}).get("running"):
            if "redis" in services:
                stop_pid(services["redis"].pid)
            log.info("starting Redis on 127.0.0.1:%d", redis_port)
            services["redis"] = start_redis(self.run_dir, redis_port)
            self._save(services)
        if not status.get("kafka", {}).get("running"):
            if "kafka" in services:
                stop_pid(services["kafka"].pid)
            log.info("starting Kafka (KRaft) on 127.0.0.1:%d", kafka_port)
            services["kafka"] = start_kafka(self.run_dir, kafka_port, free_port(), partitions)
            self._save(services)
        create_topics(f"127.0.0.1:{services['kafka'].port}", partitions)
        return services

    def down(self) -> None:
        for svc in self.services().values():
            stop_pid(svc.pid)
        if self.state_file.exists():
            self.state_file.unlink()

    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.services()['kafka'].port}"
