"""Exposures: one record per answer served (gRPC in either engine, HTTP, GraphQL) on the Kafka
topic [exposures] topic, so what was shown can be joined with what users did next.

A record is JSON with exactly EXPOSURE_FIELDS (each item with ITEM_FIELDS); lookupd's Exposure
struct writes the same (tests/vectors/exposure.json holds both to one example). `user_id` is the
id as stored: the pseudonym when [privacy] pseudonymize is on, never the raw id.
"""

from __future__ import annotations

import secrets

EXPOSURE_FIELDS = ("request_id", "user_id", "placement", "experiments", "items", "model_version", "list_age_ms",
                   "fallback", "fallback_reason", "served_at_ms", "interface")
ITEM_FIELDS = ("item_id", "position", "score", "category")  # position: 1 for the top item
INTERFACES = ("grpc", "http", "graphql")


def new_request_id() -> str:
    """128 random bits as 32 hex digits: returned with the answer, so a click can carry it back."""
    return secrets.token_hex(16)
