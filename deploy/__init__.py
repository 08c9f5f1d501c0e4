"""How streamrank runs beyond one process: local stack, Flink cluster, config files."""
