"""Python client for CMS middleware: every call has a deadline, and calls that fail with
UNAVAILABLE are retried by gRPC's own retry policy (exponential backoff, within the deadline).

    with RecommendationsClient("127.0.0.1:50051", token="...") as client:
        resp = client.recommendations("u42", k=10, exclude_items=["i9"])
        for item in resp.items: ...
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import grpc

from serving.stubs import load

pb, pb_grpc = load()
SERVICE = "streamrank.v1.Recommendations"


def retry_service_config(attempts: int) -> str:
    """gRPC service config: retry UNAVAILABLE up to `attempts` times in all (gRPC caps it at 5)."""
    return json.dumps({"methodConfig": [{
        "name": [{"service": SERVICE}],
        "retryPolicy": {"maxAttempts": attempts, "initialBackoff": "0.01s", "maxBackoff": "0.2s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
    }]})


class RecommendationsClient:
    """A channel to the lookup service. deadline_s applies to each call (retries included);
    retries is how many extra attempts an UNAVAILABLE call gets. For TLS give the CA that signed the
    server's certificate (ca_file); for mutual TLS also this client's cert_file and key_file."""

    def __init__(self, target: str, *, token: str | None = None, deadline_s: float = 0.5, retries: int = 2,
                 ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None,
                 server_name: str | None = None) -> None:
        if not 0 <= retries <= 4:
            raise ValueError("retries must be 0-4 (gRPC allows at most 5 attempts)")
        options = [("grpc.enable_retries", 1), ("grpc.service_config", retry_service_config(retries + 1))] \
            if retries else [("grpc.enable_retries", 0)]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if ca_file:
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(ca_file).read_bytes(),
                private_key=Path(key_file).read_bytes() if key_file else None,
                certificate_chain=Path(cert_file).read_bytes() if cert_file else None)
            self.channel = grpc.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = pb_grpc.RecommendationsStub(self.channel)
        self.deadline_s = deadline_s
        self.metadata = [("authorization", f"Bearer {token}")] if token else None

    @staticmethod
    def request(user_id: str, k: int = 0, *, include_categories: Iterable[str] = (),
                exclude_categories: Iterable[str] = (), exclude_items: Iterable[str] = (), placement: str = ""):
        return pb.GetRecommendationsRequest(
            user_id=user_id, k=k, placement=placement,
            filters=pb.Filters(include_categories=list(include_categories),
                               exclude_categories=list(exclude_categories), exclude_items=list(exclude_items)))

    def recommendations(self, user_id: str, k: int = 0, **filters):
        """GetRecommendations; filters: include_categories, exclude_categories, exclude_items, placement."""
        return self.stub.GetRecommendations(self.request(user_id, k, **filters), timeout=self.deadline_s,
                                            metadata=self.metadata)

    def batch(self, requests: list):
        """BatchGetRecommendations for requests built with `RecommendationsClient.request(...)`."""
        return self.stub.BatchGetRecommendations(pb.BatchGetRecommendationsRequest(requests=requests),
                                                 timeout=self.deadline_s, metadata=self.metadata).responses

    def user_features(self, user_id: str):
        return self.stub.GetUserFeatures(pb.GetUserFeaturesRequest(user_id=user_id), timeout=self.deadline_s,
                                         metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RecommendationsClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def format_recommendations(resp) -> str:
    """A GetRecommendations answer as a few lines for a terminal: the user, model or fallback, the
    list's age, the user's experiment arms and segments, the items with their scores and reasons,
    the request id."""
    kind = f"fallback ({resp.fallback_reason})" if resp.fallback else f"model {resp.model_version}"
    age = f", list age {resp.list_age_ms / 1000:.1f}s" if not resp.fallback else ""
    lines = [f"user {resp.user_id}: {kind}{age}"]
    if resp.experiments:
        lines.append("  arms: " + ", ".join(f"{e}={a}" for e, a in sorted(resp.experiments.items())))
    if resp.segments:
        lines.append("  segments: " + ", ".join(resp.segments))
    lines += [f"  {n:2d}. {i.item_id}  {i.score:.4f}" + (f"  ({', '.join(i.reasons)})" if i.reasons else "")
              for n, i in enumerate(resp.items, 1)]
    if resp.request_id:
        lines.append(f"  request id {resp.request_id}")
    return "\n".join(lines)
