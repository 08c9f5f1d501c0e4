"""The `streamrank` command, one module per command group (cli.main lists them)."""
