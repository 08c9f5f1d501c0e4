"""Flink's metrics as its own Prometheus reporter serves them (flink.prometheus_port embedded,
`streamrank cluster up --metrics-port` on the cluster): the ledger's counters, the users'
requests applied and the DLQ by reason."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import yaml
from prometheus_client.parser import text_string_to_metric_families

from contract.config import port_range
from contract.keys import LEDGER_FIELDS
from contract.paths import PROJECT_ROOT
from contract.schema import CONTROL_ACTIONS

MONITORING = PROJECT_ROOT / "deploy" / "monitoring"

TASK_BUSY = "flink_taskmanager_job_task_busyTimeMsPerSecond"
TASK_BACKPRESSURED = "flink_taskmanager_job_task_backPressuredTimeMsPerSecond"
SOURCE_ASSIGNED = "flink_taskmanager_job_task_operator_KafkaSourceReader_KafkaConsumer_assigned_partitions"
_LEDGER_METRIC = re.compile(r"flink_taskmanager_job_task_operator_streamrank_(\w+)")


def scrape(url: str, timeout_s: float = 5.0) -> str | None:
    """The exposition text at url, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None


def _streamrank_counters(text: str, names: tuple[str, ...]) -> dict[str, int]:
    """streamrank_<name> for each name, summed over operators and subtasks (0 when not served)."""
    out = dict.fromkeys(names, 0)
    for family in text_string_to_metric_families(text):
        m = _LEDGER_METRIC.fullmatch(family.name)
        if m and m[1] in out:
            out[m[1]] += int(sum(s.value for s in family.samples))
    return out


def ledger_counters(text: str) -> dict[str, int]:
    """streamrank_{used,duplicate,opted_out,quarantined,late,dlq}, as keys.read_ledger reads the ledger hash."""
    return _streamrank_counters(text, LEDGER_FIELDS)


def control_counters(text: str) -> dict[str, int]:
    """streamrank_control_{erase,opt_out,opt_in}, as keys.read_control reads the control hash: only
    the actions that happened."""
    counts = _streamrank_counters(text, tuple(f"control_{a}" for a in CONTROL_ACTIONS))
    return {name.removeprefix("control_"): n for name, n in counts.items() if n}


def dlq_reason_counters(text: str) -> dict[str, int]:
    """streamrank_dlq_reason_records by its dlq_reason label, summed over operators and subtasks:
    the DLQ'd records by reason (only the reasons that happened)."""
    out: dict[str, int] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "flink_taskmanager_job_task_operator_streamrank_dlq_reason_records":
            for s in family.samples:
                if s.value:
                    out[s.labels["dlq_reason"]] = out.get(s.labels["dlq_reason"], 0) + int(s.value)
    return out


def find_ledger_metrics(spec: str) -> tuple[str, dict] | None:
    """(url, counters) of the first port in spec whose reporter serves streamrank's counters: the
    ledger's, and under "control" the users' requests applied, when there were any."""
    for port in port_range(spec):
        url = f"http://127.0.0.1:{port}/metrics"
        text = scrape(url, timeout_s=2.0)
        if text and "_streamrank_" in text:
            control = control_counters(text)
            return url, {**ledger_counters(text), **({"control": control} if control else {})}
    return None


FRESHNESS_BUCKET = "flink_taskmanager_job_task_operator_streamrank_list_freshness_le_bucket"


def freshness_buckets(text: str) -> dict[float, float]:
    """The job's list-freshness histogram: upper bound (s; inf for +Inf) -> lists written at most
    that long after their newest event, summed over subtasks. Flink serves the bounds with '_'
    for '.' and '+' ("0_25", "_Inf")."""
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == FRESHNESS_BUCKET:
                le = s.labels["le"]
                bound = float("inf") if le == "_Inf" else float(le.replace("_", "."))
                out[bound] = out.get(bound, 0.0) + s.value
    return out


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative buckets (linear within a bucket; the
    highest finite bound when the quantile falls in +Inf); None without observations."""
    bounds = sorted(buckets)
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for b in bounds:
        if buckets[b] >= rank:
            if b == float("inf"):
                return lower
            return lower + (b - lower) * (rank - below) / max(buckets[b] - below, 1e-12)
        lower, below = b, buckets[b]
    return lower


def task_load(text: str) -> dict[str, tuple[float, float]]:
    """Each task (its chained operators' name, shortened): (busy, back-pressured) ms per second,
    the highest over its subtasks. Flink's own answer to "which stage is the bottleneck"."""
    out: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (TASK_BUSY, TASK_BACKPRESSURED):
            continue
        for s in family.samples:
            name = s.labels.get("task_name", "?")[:60]
            busy, back = out.get(name, (0.0, 0.0))
            out[name] = (max(busy, s.value), back) if family.name == TASK_BUSY else (busy, max(back, s.value))
    return out


def source_assigned(text: str) -> bool:
    """Whether the Kafka source readers hold their partitions (a job reading from the latest
    offset misses nothing sent after this)."""
    return any(s.value > 0 for family in text_string_to_metric_families(text) if family.name == SOURCE_ASSIGNED
               for s in family.samples)


def rule_inputs() -> set[str]:
    """The Flink metric names deploy/monitoring/streamrank-rules.yml reads."""
    rules = yaml.safe_load((MONITORING / "streamrank-rules.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    return {m for e in exprs for m in re.findall(r"\bflink_\w+", e)}


def dashboard_metrics() -> set[str]:
    """The metric names (or, ending in `_`, name prefixes) the Grafana dashboard's queries read."""
    exprs = [t["expr"] for p in json.loads((MONITORING / "grafana-streamrank.json").read_text())["panels"]
             for t in p.get("targets", [])]
    return {m for e in exprs for m in re.findall(r"\b(?:flink|streamrank)_\w+", e)}
