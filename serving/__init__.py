"""The gRPC lookup service over Redis, its CLI client, and the generated stubs' loader."""
