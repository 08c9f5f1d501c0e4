"""Logic that runs inside Flink: pure-Python core (no pyflink import) plus thin Flink wrappers
in `flink_functions`."""
