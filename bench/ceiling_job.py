"""Reference jobs for bench.features and bench.e2e, on the recommend job's own source:

- `--through validation` (default, the ceiling): source, event time and validation into a
  discarding sink;
- `--through jvm-stages`: the whole recommend job with its Python functions replaced by a JVM
  stand-in (io.streamrank.udf.Discard): what the JVM side of the job costs, with Python free.

    python -m bench.ceiling_job --bounded [--through validation|jvm-stages] --set kafka.interactions_topic='"t"' ...
"""

from __future__ import annotations

import argparse
import sys

from contract.config import load_config
from contract.schema import parse_once_sql, validation_sql
from contract.config import parse_overrides
from jobs.recommend import build, environment, kafka_source_ddl


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config")
    p.add_argument("--bounded", action="store_true")
    p.add_argument("--through", choices=("validation", "jvm-stages"), default="validation",
                   help="how much of the job runs (default: validation, the ceiling)")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv)
    cfg = load_config(args.config, parse_overrides(args.set, bounded=args.bounded))
    t_env = environment(cfg)
    if args.through == "jvm-stages":
        build(t_env, cfg, python=False).execute().wait()
        return 0
    t_env.execute_sql(kafka_source_ddl(cfg))
    t_env.execute_sql("CREATE TABLE discard (payload BYTES, reason STRING) WITH ('connector' = 'blackhole')")
    reason = validation_sql("kafka_ts_ms", min_ts_ms=cfg.events.min_ts_ms, max_future_ms=cfg.events.max_future_ms)
    t_env.execute_sql(f"INSERT INTO discard SELECT payload, {reason} "
                      f"FROM ({parse_once_sql('interactions_src', ('payload', 'kafka_ts_ms'))})").wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
