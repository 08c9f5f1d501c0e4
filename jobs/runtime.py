"""What the job needs on disk to run: PyFlink's Flink distribution, the jars it ships in
pipeline.jars (Flink's Kafka connector and the job's own JVM functions, jobs/java), the Prometheus
reporter, and the interpreter its Python workers use."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from contract.config import port_range
from contract.paths import CACHE

FLINK_JARS = CACHE / "jars" / "flink"
UDF_JAR = CACHE / "udf" / "streamrank-udf.jar"
PROMETHEUS_REPORTER_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


def python_executable() -> str:
    """The interpreter Flink's Python workers must use (FACTS: not `python` from PATH)."""
    return sys.executable


def job_jars() -> list[Path]:
    """The jars the job ships in pipeline.jars: Flink's Kafka connector and streamrank's own
    JVM functions (jobs/java)."""
    jars = sorted(FLINK_JARS.glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise FileNotFoundError(
            f"no Flink Kafka connector jar in {FLINK_JARS}; run `make setup` to fetch it"
        )
    if not UDF_JAR.exists():
        raise FileNotFoundError(f"no {UDF_JAR}; run `make setup` to build jobs/java")
    return [*jars, UDF_JAR]


def flink_home() -> Path:
    """PyFlink's own Flink distribution (bin/, lib/, opt/, plugins/). Found without importing
    pyflink, so that what only needs paths does not load Flink."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("pyflink is not installed in this environment; run `make setup`")
    return Path(spec.origin).parent


def prometheus_reporter_jars() -> list[Path]:
    """Flink's own Prometheus metrics reporter, as PyFlink ships it under plugins/."""
    return sorted((flink_home() / "plugins" / "metrics-prometheus").glob("flink-metrics-prometheus-*.jar"))


def link_flink_lib(target: Path, extra: list[Path]) -> Path:
    """target/ = PyFlink's lib/ jars plus `extra`, as symlinks (PyFlink's own install stays
    untouched); for FLINK_LIB_DIR, whose jars are the JVM's classpath."""
    target.mkdir(parents=True, exist_ok=True)
    for jar in [*(flink_home() / "lib").glob("*.jar"), *extra]:
        link = target / jar.name
        if not link.exists():
            link.symlink_to(jar)
    return target


def rest_overview(address: str) -> dict | None:
    """GET /overview of a Flink REST API (host:port), or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{address}/overview", timeout=2) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def find_rest_endpoint(spec: str, wait_s: float = 0.0) -> str | None:
    """http://127.0.0.1:port of the first port in spec ("8081" or "8081-8090") where a Flink REST
    API with a running job answers, polling up to wait_s for a job that is still starting."""
    deadline = time.monotonic() + wait_s
    while True:
        for port in port_range(spec):
            if (ov := rest_overview(f"127.0.0.1:{port}")) and ov.get("jobs-running", 0) > 0:
                return f"http://127.0.0.1:{port}"
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def restore_options(path: str | None, allow_non_restored: bool = False) -> dict[str, str]:
    """Flink's options to start from a savepoint (or retained checkpoint) at `path`; a local path
    is checked first, so a wrong one fails here and not in the JobManager."""
    if not path:
        if allow_non_restored:
            raise SystemExit("--allow-non-restored-state needs --from-savepoint PATH")
        return {}
    if "://" in path and not path.startswith("file:"):  # s3://, hdfs://: Flink checks it
        uri = path
    else:
        local = Path(path.removeprefix("file://").removeprefix("file:")).resolve()
        if not (local / "_metadata").is_file():
            raise SystemExit(f"--from-savepoint {path}: no savepoint there (no _metadata file); give the path "
                             "`streamrank cluster stop` printed, or a retained checkpoint's chk-N directory")
        uri = local.as_uri()
    return {"execution.state-recovery.path": uri,
            "execution.state-recovery.ignore-unclaimed-state": str(allow_non_restored).lower()}
