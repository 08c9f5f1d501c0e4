"""Webhooks: what a CMS hears about, and how a delivery proves where it came from.

Events (the job writes them to [webhooks] topic as it writes lists and profiles, serving.webhooks
delivers them):
- `list_changed`: the top list_top_n of a user's list changed by at least list_change_threshold
  (the share of its positions whose item is new);
- `segment_entered`, `segment_left`: a final window moved the user into or out of a segment;
- `profile_updated`: a final window changed the user's profile.

Each event has an `event_id` that depends only on what happened (the user, the kind, the detail
and the window), so a replay of the job after a recovery makes the same ids: it is the delivery's
`Idempotency-Key`, and a receiver that keeps the keys it has handled processes each event once.

A delivery is signed as Stripe and GitHub sign theirs: the header

    Streamrank-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

`verify` checks it (and the timestamp's age, against replays of a captured request).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass

from contract import keys

EVENT_TYPES = ("list_changed", "segment_entered", "segment_left", "profile_updated")
SIGNATURE_HEADER = "Streamrank-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "Streamrank-Event"
DEFAULT_TOLERANCE_S = 300


@dataclass(frozen=True)
class WebhookEvent:
    event_id: str
    type: str
    user_id: str
    at_ms: int  # event time: the window or list the event is about (the same in a replay)
    data: dict

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()

    @staticmethod
    def decode(raw: bytes | str) -> WebhookEvent:
        d = json.loads(raw)
        return WebhookEvent(str(d["event_id"]), str(d["type"]), str(d["user_id"]), int(d["at_ms"]), dict(d["data"]))


def event(kind: str, user_id: str, at_ms: int, data: dict, detail: str = "") -> WebhookEvent:
    """An event with its deterministic id (kind, user, detail, time)."""
    digest = hashlib.sha256("\x00".join((kind, user_id, detail, str(at_ms))).encode("utf-8", "surrogatepass"))
    return WebhookEvent(digest.hexdigest()[:32], kind, user_id, at_ms, data)


def list_change(before: list[str], after: list[str], top_n: int) -> float:
    """The share of the top_n positions whose item was not in the previous top_n."""
    new = [i for i in after[:top_n] if i not in set(before[:top_n])]
    return len(new) / top_n if top_n else 0.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


SIGNATURE = re.compile(r"t=([0-9]{1,12}),v1=([0-9a-f]{64})")


def verify(secret: str, header: str, body: bytes, tolerance_s: float = DEFAULT_TOLERANCE_S,
           now: float | None = None) -> bool:
    """Whether the signature header is the secret's over this body, made within tolerance_s
    (False, never an exception, for any header that is not one)."""
    match = SIGNATURE.fullmatch(header or "")
    if match is None:
        return False
    t, mac = int(match[1]), match[2]
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, t, body).split("v1=")[1], mac)


@dataclass(frozen=True)
class Endpoint:
    """A registered receiver: its URL, the event types it wants, its signing secret."""
    endpoint_id: str
    url: str
    events: tuple[str, ...]
    secret: str

    def wants(self, kind: str) -> bool:
        return kind in self.events

    def encode(self) -> str:
        return json.dumps({"url": self.url, "events": list(self.events), "secret": self.secret})

    @staticmethod
    def decode(endpoint_id: str, raw: bytes | str) -> Endpoint:
        d = json.loads(raw)
        return Endpoint(endpoint_id, d["url"], tuple(d["events"]), d["secret"])


def new_secret() -> str:
    return "whsec_" + secrets.token_hex(24)


def read_endpoints(r) -> list[Endpoint]:
    return sorted((Endpoint.decode(k.decode(), v) for k, v in r.hgetall(keys.WEBHOOK_ENDPOINTS).items()),
                  key=lambda e: e.endpoint_id)
