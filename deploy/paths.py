"""Where things live on disk: project root, cached jars, run directory, venv interpreter."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CACHE = PROJECT_ROOT / ".cache"
KAFKA_JARS = CACHE / "jars" / "kafka"
FLINK_JARS = CACHE / "jars" / "flink"


def run_dir() -> Path:
    """The directory holding pids, ports and logs of locally started processes."""
    return Path(os.environ.get("STREAMRANK_RUN_DIR", PROJECT_ROOT / ".run")).resolve()


def python_executable() -> str:
    """The interpreter Flink's Python workers must use (FACTS: not `python` from PATH)."""
    return sys.executable


UDF_JAR = CACHE / "udf" / "streamrank-udf.jar"


def job_jars() -> list[Path]:
    """The jars the job ships in pipeline.jars: Flink's Kafka connector and streamrank's own
    JVM functions (deploy/maven/udf)."""
    jars = sorted(FLINK_JARS.glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise FileNotFoundError(
            f"no Flink Kafka connector jar in {FLINK_JARS}; run `make setup` to fetch it"
        )
    if not UDF_JAR.exists():
        raise FileNotFoundError(f"no {UDF_JAR}; run `make setup` to build deploy/maven/udf")
    return [*jars, UDF_JAR]


def flink_home() -> Path:
    """PyFlink's own Flink distribution (bin/, lib/, opt/, plugins/). Found without importing
    pyflink, so that what only needs paths (the lookup service's launcher) does not load Flink."""
    spec = importlib.util.find_spec("pyflink")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("pyflink is not installed in this environment; run `make setup`")
    return Path(spec.origin).parent


PROMETHEUS_REPORTER_FACTORY = "org.apache.flink.metrics.prometheus.PrometheusReporterFactory"


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
