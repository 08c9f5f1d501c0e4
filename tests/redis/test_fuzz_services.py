"""A short fuzzing campaign against the real services (bench.fuzz runs the long one): lookupd
(`streamrank serve`) over gRPC with generated messages and raw bytes, and `streamrank gateway` with
schemathesis's calls from its OpenAPI document and GraphQL schema. No 5xx, no INTERNAL, no hang,
and both processes still up."""

from __future__ import annotations

from pathlib import Path

from bench import fuzz


def test_short_campaign_against_lookupd_and_the_gateway(tmp_path: Path):
    with fuzz.services(tmp_path, hang_s=5) as svc:
        reports = {"grpc": fuzz.fuzz_grpc(svc["grpc"], svc["procs"], seconds=60, max_inputs=400, hang_s=5),
                   "gateway": fuzz.fuzz_gateway(svc["http"], svc["procs"], seconds=60, max_inputs=400, hang_s=5)}
    for name, report in reports.items():
        assert report["inputs"] >= 100, (name, report)
        assert (report["crashes"], report["server_errors"], report["hangs"]) == (0, 0, 0), (name, report)
