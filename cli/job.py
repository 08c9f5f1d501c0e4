"""The recommend job on the embedded MiniCluster (`run`) and what it accounted (`ledger`, `dlq`)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import redis as redis_lib
import typer
from kafka import KafkaConsumer, TopicPartition

from cli.common import (DEFAULT_CONFIG, AllowNonRestoredOpt, ConfigOpt, FromSavepointOpt, JobOpt, PresetOpt,
                        SetOpt, check_job, job_args, job_config, redis_for)
from contract import keys
from devstack.metrics import find_ledger_metrics
from devstack.rejected import read_rejected, summarize
from jobs.engagement import main as engagement_main
from jobs.recommend import main as job_main

commands = typer.Typer()


@commands.command()
def ledger(config: ConfigOpt = DEFAULT_CONFIG, set_: SetOpt = None) -> None:
    """Where every input record went: used / duplicate / opted_out / quarantined / late / dlq, beside the input
    count, and a running embedded job's Flink metrics of the same counts."""
    cfg = job_config(config, set_)
    try:
        client = redis_for(cfg)
        counts, control = keys.read_ledger(client, cfg.redis.layout()), keys.read_control(client, cfg.redis.layout())
    except redis_lib.RedisError as e:
        typer.echo(f"cannot read the ledger from Redis {cfg.redis.host}:{cfg.redis.port}: {e}", err=True)
        raise typer.Exit(1) from None
    report: dict[str, object] = {**counts, "accounted": keys.accounted(counts, control)}
    if control:
        report["control"] = control
    if cfg.flink.prometheus_port:  # a running embedded job's Flink metrics, beside the ledger

        found = find_ledger_metrics(cfg.flink.prometheus_port)
        report["flink_metrics"] = {"url": found[0], **found[1]} if found else "no running job's reporter answers"
    try:
        consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap_servers, request_timeout_ms=5000)
        parts = [TopicPartition(cfg.kafka.interactions_topic, p)
                 for p in consumer.partitions_for_topic(cfg.kafka.interactions_topic) or []]
        end, begin = consumer.end_offsets(parts), consumer.beginning_offsets(parts)
        report["input_records"] = sum(end[p] - begin[p] for p in parts)
        consumer.close()
    except Exception as e:  # the ledger is still worth printing without Kafka
        report["input_records"] = f"unknown ({type(e).__name__})"
    typer.echo(json.dumps(report))


@commands.command()
def dlq(
    late: Annotated[bool, typer.Option("--late", help="the late topic instead of the DLQ")] = False,
    quarantine: Annotated[bool, typer.Option("--quarantine", help="the quarantine topic ([quarantine]'s records, by rule) "
                                             "instead of the DLQ")] = False,
    samples: Annotated[int, typer.Option(min=0, help="records shown per reason")] = 3,
    config: ConfigOpt = DEFAULT_CONFIG,
    set_: SetOpt = None,
) -> None:
    """What the job rejected: the DLQ (or late, or quarantine) topic read from its start, counted by reason, with
    the input offsets it covers, how many input records were written twice (at-least-once after a
    restart) and a few records per reason. Reads as a read_committed consumer. Last line: JSON."""
    cfg = job_config(config, set_)
    if late and quarantine:
        typer.echo("--late and --quarantine name two topics; give one", err=True)
        raise typer.Exit(2)
    topic = cfg.kafka.late_topic if late else cfg.kafka.quarantine_topic if quarantine else cfg.kafka.dlq_topic
    unread: dict[str, list[int]] = {}
    try:
        report = summarize(read_rejected(cfg.kafka.bootstrap_servers, topic, progress=sys.stderr.isatty(),
                                         unread=unread), samples)
    except LookupError as e:
        typer.echo(f"{e}: has the job run with this config? (`--config`, or `--set kafka.dlq_topic=...`)", err=True)
        raise typer.Exit(1) from None
    except Exception as e:  # kafka-python's errors: the broker is not there
        typer.echo(f"cannot read {topic!r} from {cfg.kafka.bootstrap_servers}: {type(e).__name__}: {e} "
                   "(is the broker up? `streamrank stack status`)", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"{topic}: {report['records']} records, {report['input_records']} input records"
               + (f" ({report['repeated']} repeats of records already there: at-least-once after a restart)"
                  if report["repeated"] else ""))
    for reason, n in report["by_reason"].items():
        typer.echo(f"  {reason:24s} {n}")
        for sample in report["samples"].get(reason, []):
            typer.echo(f"      {sample['src']}  {sample['record']}")
    for partition, (at, end) in unread.items():
        typer.echo(f"partition {partition}: read to offset {at} of {end}; the rest is in a transaction still "
                   "open (exactly-once: it commits at the job's next checkpoint, or times out after "
                   "kafka.transaction_timeout_s): run again later", err=True)
    typer.echo(json.dumps({"topic": topic, **report, **({"unread": unread} if unread else {})}))


@commands.command()
def run(
    config: ConfigOpt = DEFAULT_CONFIG,
    bounded: Annotated[bool, typer.Option(help="stop at the offsets latest at start")] = False,
    set_: SetOpt = None,
    from_savepoint: FromSavepointOpt = None,
    allow_non_restored_state: AllowNonRestoredOpt = False,
    preset: PresetOpt = None,
    job: JobOpt = "recommend",
) -> None:
    """Run the recommend job (or --job engagement) on the embedded Flink MiniCluster. With a model
    trained under a preset, run with the same --preset: the model's features follow it."""
    check_job(job)
    job_config(config, set_, bounded, preset)  # fail before Flink starts
    args = ["--config", config] + job_args(set_, bounded, from_savepoint, allow_non_restored_state, preset)
    raise typer.Exit(engagement_main(args) if job == "engagement" else job_main(args))
