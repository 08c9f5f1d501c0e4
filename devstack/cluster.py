"""A standalone Flink cluster (JobManager + TaskManager on loopback) from PyFlink's own bin/,
and job submission with `flink run -py`."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from contract.config import port_range
from contract.paths import PROJECT_ROOT
from devstack.metrics import scrape
from devstack.stack import free_port
from jobs.runtime import (PROMETHEUS_REPORTER_FACTORY, flink_home, link_flink_lib, python_executable,
                          rest_overview)

# what the job runs, and so all that `flink run -pyfs` ships to the TaskManagers
PY_PACKAGES = ("contract", "jobs", "udfs")


class ClusterError(RuntimeError):
    """The cluster did not start, answer or accept a job; the message names the log."""


def kubernetes_job() -> tuple[dict, list[str]]:
    """deploy/k8s/flink.yaml's FlinkDeployment, and its job's args with the image's paths mapped
    to this checkout (what an application cluster here runs as the operator would)."""
    k8s = PROJECT_ROOT / "deploy" / "k8s"
    flink = next(d for d in yaml.safe_load_all((k8s / "flink.yaml").read_text()) if d["kind"] == "FlinkDeployment")
    image = {"/opt/venv/bin/python3": python_executable(), "/etc/streamrank/job.toml": str(k8s / "job.toml"),
             "/opt/streamrank/": f"{PROJECT_ROOT}/"}
    args = [next((here + a[len(there):] for there, here in image.items() if a.startswith(there)), a)
            for a in flink["spec"]["job"]["args"]]
    unmapped = [a for a in args if "/opt/" in a or "/etc/" in a]
    if unmapped:
        raise ValueError(f"deploy/k8s/flink.yaml's job args name image paths kubernetes_job does not map: {unmapped}")
    return flink, args


def _shipped_java_opts() -> str:
    """The --add-opens/--add-exports flags of PyFlink's own config.yaml (Java 17 needs them)."""
    for line in (flink_home() / "conf" / "config.yaml").read_text().splitlines():
        if line.strip().startswith("all: --add-"):
            return line.split("all:", 1)[1].strip()
    return ""


def _conf_yaml(rest_port: int, rpc_port: int, slots: int, run: Path, metrics_ports: str,
               scheduler_mode: str | None = None, taskmanager_memory: str = "2048m") -> str:
    py = python_executable()
    # reactive: the job takes every slot there is, and rescales from its last checkpoint when a
    # TaskManager comes or goes (application clusters only)
    reactive = f"scheduler-mode: {scheduler_mode}\n" if scheduler_mode else ""
    return reactive + f"""\
jobmanager:
  bind-host: 127.0.0.1
  rpc:
    address: 127.0.0.1
    port: {rpc_port}
  memory:
    process:
      size: 1024m
taskmanager:
  bind-host: 127.0.0.1
  host: 127.0.0.1
  numberOfTaskSlots: {slots}
  memory:
    process:
      size: {taskmanager_memory}
rest:
  address: 127.0.0.1
  bind-address: 127.0.0.1
  port: {rest_port}
parallelism:
  default: 1
metrics:
  reporter:
    prom:
      factory:
        class: {PROMETHEUS_REPORTER_FACTORY}
      port: {metrics_ports}
python:
  executable: {py}
  client:
    executable: {py}
env:
  pid:
    dir: {run}
  java:
    opts:
      all: {_shipped_java_opts()}
"""


def _metrics_ports(first: int) -> str:
    """The reporter's port range on the cluster: each daemon takes the first free one of 10."""
    return f"{first}-{first + 9}"


class FlinkCluster:
    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "flink-cluster"
        self.conf = self.dir / "conf"
        self.logs = self.dir / "log"
        self.lib = self.dir / "lib"
        self.state_file = self.dir / "cluster.json"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["FLINK_CONF_DIR"] = str(self.conf)
        env["FLINK_LOG_DIR"] = str(self.logs)
        env["FLINK_LIB_DIR"] = str(self.lib)
        env["PATH"] = f"{Path(python_executable()).parent}:{env.get('PATH', '')}"
        return env

    @property
    def rest_port(self) -> int:
        return int(json.loads(self.state_file.read_text())["rest_port"])

    def address(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    def overview(self) -> dict | None:
        if not self.state_file.exists():
            return None
        return rest_overview(self.address())

    def up(self, rest_port: int = 18081, slots: int = 2, metrics_port: int = 9249,
           application: list[str] | None = None, scheduler_mode: str | None = None,
           taskmanager_memory: str = "2048m") -> dict:
        """Start both daemons (a no-op when the cluster already answers). Each serves Flink's
        Prometheus reporter on the first free port of metrics_port..metrics_port+9. application:
        `--job-classname CLASS ARGS...` of an application cluster (standalone-job.sh: the job's
        main runs in the JobManager, as under the Flink Kubernetes Operator; the cluster ends with
        the job) instead of a session cluster."""
        if (ov := self.overview()) and ov.get("taskmanagers", 0) > 0:
            return ov

        home = flink_home()
        self.conf.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        # lib/ of the cluster = PyFlink's lib/ plus opt/flink-python: the Python operators run in
        # the TaskManager, whose classpath is lib/ only
        link_flink_lib(self.lib, [*(home / "opt").glob("flink-python-*.jar")])
        for name in ("log4j.properties", "log4j-console.properties", "log4j-cli.properties", "logback.xml"):
            src = home / "conf" / name
            if src.exists():
                (self.conf / name).write_text(src.read_text())
        (self.conf / "config.yaml").write_text(
            _conf_yaml(rest_port, free_port(), slots, self.dir, _metrics_ports(metrics_port), scheduler_mode,
                       taskmanager_memory))
        (self.conf / "masters").write_text(f"127.0.0.1:{rest_port}\n")
        (self.conf / "workers").write_text("127.0.0.1\n")
        self.state_file.write_text(json.dumps({"rest_port": rest_port, "metrics_port": metrics_port}))
        env = self._env()
        # start-cluster.sh would ssh to the workers; start both daemons directly instead
        jobmanager = ["standalone-job.sh", "start", *application] if application else ["jobmanager.sh", "start"]
        for script, *args in (jobmanager, ["taskmanager.sh", "start"]):
            out = subprocess.run(["bash", str(home / "bin" / script), *args], env=env,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise ClusterError(f"{script} start failed: {out.stderr or out.stdout}; logs in {self.logs}")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            ov = self.overview()
            if ov and ov.get("taskmanagers", 0) > 0 and ov.get("slots-total", 0) > 0:
                return ov
            time.sleep(1)
        raise ClusterError(f"Flink cluster did not come up within 90s; see {self.logs}")

    def add_taskmanager(self) -> None:
        """One more TaskManager process beside the running ones (its own ports; stopped by down)."""
        out = subprocess.run(["bash", str(flink_home() / "bin" / "taskmanager.sh"), "start"], env=self._env(),
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise ClusterError(f"taskmanager.sh start failed: {out.stderr or out.stdout}; logs in {self.logs}")

    def down(self) -> None:
        if not self.conf.exists():
            return
        home = flink_home()
        env = self._env()
        for script, stop in (("taskmanager.sh", "stop-all"), ("jobmanager.sh", "stop-all"),
                             ("standalone-job.sh", "stop")):
            subprocess.run(["bash", str(home / "bin" / script), stop], env=env, capture_output=True)
        if self.state_file.exists():
            self.state_file.unlink()

    def jobs(self) -> list[dict]:
        return self.rest("GET", "/jobs/overview")["jobs"]

    def cancel(self, job_id: str) -> None:
        """Cancel a job through the REST API (PATCH /jobs/:id); returns once Flink took it."""
        self.rest("PATCH", f"/jobs/{job_id}?mode=cancel")

    def stop_with_savepoint(self, job_id: str, target_dir: str | None = None, drain: bool = False,
                            timeout_s: float = 300.0) -> str:
        """Stop a streaming job with a savepoint (POST /jobs/:id/stop): the sources stop, Flink
        takes the savepoint (Kafka offsets, open windows) and the job ends FINISHED. Returns the
        savepoint's path once it completed. target_dir None: the job's savepoint_dir. drain: fire
        every open window first (MAX_WATERMARK) - for a job that will not be resumed."""
        body = {"drain": drain, **({"targetDirectory": target_dir} if target_dir else {})}
        trigger = self.rest("POST", f"/jobs/{job_id}/stop", body)["request-id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            st = self.rest("GET", f"/jobs/{job_id}/savepoints/{trigger}")
            if st["status"]["id"] == "COMPLETED":
                op = st.get("operation", {})
                if "location" in op:
                    return op["location"]
                cause = op.get("failure-cause", {}).get("stack-trace", str(op))
                raise ClusterError(f"savepoint of {job_id} failed; the job keeps running: {cause[:1500]}")
            time.sleep(0.5)
        raise ClusterError(f"savepoint of {job_id} not done within {timeout_s:.0f}s; see {self.logs}")

    def rest(self, method: str, path: str, body: dict | None = None) -> dict:
        """One call of the cluster's REST API (its JSON answer; {} for none), or ClusterError."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.address()}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise ClusterError(f"{method} {path}: HTTP {e.code} {e.read().decode(errors='replace')[:500]}") from None

    def metrics_endpoints(self) -> dict[str, str]:
        """{"jobmanager": url, "taskmanager": url} of the daemons' Prometheus reporters: the
        ports of the configured range that answer, told apart by their metric names."""
        first = int(json.loads(self.state_file.read_text()).get("metrics_port", 0))
        found: dict[str, str] = {}
        for port in port_range(_metrics_ports(first)) if first else ():
            url = f"http://127.0.0.1:{port}/metrics"
            if (body := scrape(url, timeout_s=2.0)) is None:
                continue
            for role in ("taskmanager", "jobmanager"):
                if f"flink_{role}_" in body:
                    found.setdefault(role, url)
                    break
        return found

    def submit(self, config: str | None, extra_args: list[str], detached: bool,
               job: str = "recommend") -> subprocess.CompletedProcess:
        """`flink run -py jobs/<job>.py` (recommend or engagement), shipping the project's packages
        and the jars. extra_args go to the job (--set, --bounded, --from-savepoint: the job sets
        Flink's restore options itself, as it does on the MiniCluster)."""
        home = flink_home()
        py = python_executable()
        cmd = [
            "bash", str(home / "bin" / "flink"), "run", "-m", self.address(),
            "-py", str(PROJECT_ROOT / "jobs" / f"{job}.py"),
            "-pyfs", ",".join(str(PROJECT_ROOT / p) for p in PY_PACKAGES),
            "-pyexec", py, "-pyclientexec", py,
        ]
        if detached:
            cmd.append("-d")
        cmd += [*(["--config", config] if config else []), *extra_args]
        if detached:
            cmd.append("--detached")
        env = self._env()
        env["PYTHONPATH"] = f"{PROJECT_ROOT}:{env.get('PYTHONPATH', '')}"
        return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)
