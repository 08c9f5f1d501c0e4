"""The ceiling for bench.e2e: the recommend job's source and validation into a discarding sink.

    python -m bench.ceiling_job --bounded --set kafka.interactions_topic='"t"' ...
"""

from __future__ import annotations

import argparse
import sys

from contract.config import load_config
from contract.schema import parse_once_sql, validation_sql
from jobs.recommend import environment, kafka_source_ddl, parse_overrides


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config")
    p.add_argument("--bounded", action="store_true")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args(argv)
    cfg = load_config(args.config, parse_overrides(args.set, bounded=args.bounded))
    t_env = environment(cfg)
    t_env.execute_sql(kafka_source_ddl(cfg))
    t_env.execute_sql("CREATE TABLE discard (payload BYTES, reason STRING) WITH ('connector' = 'blackhole')")
    t_env.execute_sql(f"INSERT INTO discard SELECT payload, {validation_sql('kafka_ts_ms')} "
                      f"FROM ({parse_once_sql('interactions_src', ('payload', 'kafka_ts_ms'))})").wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
