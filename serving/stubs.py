"""Loads the gRPC stubs generated from serving/proto (by `make setup`, or here on first use)."""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).parent / "proto"
GENERATED = Path(__file__).parent / "generated"
PROTO = "streamrank/v1/recommendations.proto"


def generate() -> None:
    from grpc_tools import protoc  # local: only generating needs the compiler, not a running server

    GENERATED.mkdir(exist_ok=True)
    rc = protoc.main(["grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={GENERATED}",
                      f"--grpc_python_out={GENERATED}", PROTO])
    if rc != 0:
        raise RuntimeError(f"protoc failed on {PROTO_DIR / PROTO} (exit {rc})")


def load():
    """(messages module, grpc module) for streamrank.v1."""
    if not (GENERATED / "streamrank/v1/recommendations_pb2_grpc.py").exists():
        generate()
    if str(GENERATED) not in sys.path:
        sys.path.insert(0, str(GENERATED))
    from streamrank.v1 import recommendations_pb2, recommendations_pb2_grpc  # local: generated just above

    return recommendations_pb2, recommendations_pb2_grpc
