"""deploy/monitoring: the Grafana dashboard reads metrics the service declares, and the Prometheus
config scrapes the ports the shipped configs use. (The Flink names it reads are checked against a
real job's reporter in the integration tier.)"""

from __future__ import annotations

import json
import re

from prometheus_client import REGISTRY, generate_latest

from contract.config import load_config, port_range
from contract.serving_config import load_serving_config
from contract.paths import PROJECT_ROOT
from devstack.metrics import MONITORING, dashboard_metrics
import serving.core  # noqa: F401  (declares the metrics)


def test_dashboard_serving_queries_name_metrics_the_service_declares():
    declared = {m for m in re.findall(r"^# TYPE (\S+)", generate_latest(REGISTRY).decode(), re.M)}
    wanted = {n for n in dashboard_metrics() if n.startswith("streamrank_serving_")}
    assert wanted, "the dashboard has no serving panels"
    # a counter's samples end in _total, a histogram's in _bucket: TYPE names the family
    families = {re.sub(r"_(total|bucket)$", "", n) for n in wanted}
    assert families <= {re.sub(r"_total$", "", d) for d in declared}, families - declared


def test_dashboard_panels_are_well_formed():
    dash = json.loads((MONITORING / "grafana-streamrank.json").read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert {"x", "y", "w", "h"} <= p["gridPos"].keys() and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"]), p["title"]


def test_prometheus_config_scrapes_the_shipped_ports():
    targets = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", (MONITORING / "prometheus.yml").read_text())}
    job = load_config(PROJECT_ROOT / "deploy" / "config" / "local.toml")
    serving = load_serving_config(PROJECT_ROOT / "deploy" / "config" / "serving.toml")
    assert set(port_range(job.flink.prometheus_port)) <= targets
    assert serving.metrics_port in targets
