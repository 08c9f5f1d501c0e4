"""The pure core the job runs: features, candidates, ranking, scoring and drift, with no I/O to
Redis or Kafka and no pyflink (the job's Flink functions and Redis store are in jobs/)."""
