"""The lookup core, free of gRPC: validate a request, read Redis, fall back when there is no list."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import redis

from contract import keys
from contract.schema import ID_PATTERN

_ID_RE = re.compile(ID_PATTERN)


class InvalidRequest(ValueError):
    """A request the service refuses (INVALID_ARGUMENT); the message says what is allowed."""


@dataclass
class Recommendations:
    user_id: str
    items: list[keys.ScoredItem]
    model_version: str = ""
    feature_ts_ms: int = 0
    list_age_ms: int = 0
    fallback: bool = False
    fallback_reason: str = ""
    extra: dict = field(default_factory=dict)


def check_request(user_id: str, k: int, default_k: int, max_k: int) -> int:
    """Validates user_id and returns the effective k."""
    if not _ID_RE.match(user_id or ""):
        raise InvalidRequest("user_id must be 1-64 characters of letters, digits, '_', '.', ':' or '-'")
    if k < 0:
        raise InvalidRequest("k must be >= 0 (0 means the default)")
    return min(k or default_k, max_k)


def get_recommendations(client: redis.Redis, user_id: str, k: int) -> Recommendations:
    """One pipelined round trip: the user's list and the trending fallback."""
    pipe = client.pipeline(transaction=False)
    pipe.get(keys.rec_key(user_id))
    pipe.zrevrange(keys.TRENDING, 0, k - 1, withscores=True)
    raw, trending = pipe.execute()
    now = int(time.time() * 1000)
    if raw is not None:
        rec = keys.RecList.decode(raw)
        return Recommendations(user_id, rec.items[:k], rec.model_version, rec.feature_ts,
                               max(0, now - rec.feature_ts))
    top = trending[0][1] if trending else 1.0
    items = [keys.ScoredItem(i.decode(), s / top if top else 0.0) for i, s in trending]
    return Recommendations(user_id, items, fallback=True, fallback_reason="no_list")
