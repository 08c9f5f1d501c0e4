"""The one contract shared by jobs, udfs, models and serving: event schema, Redis keys, config."""
