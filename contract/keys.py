"""Redis key layout and value encoding, shared by the job's writer and the gRPC service.

Per-user values (rec, feat, profile) are stored packed (contract.compact: zstd with a trained
dictionary, behind a `z:<feature_ts>:` prefix); every reader goes through compact.text, which
also reads plain JSON.

- `rec:{user}`   JSON RecList: ranked items with scores, model version, feature timestamp, the
                 user's segments.
- `feat:{user}`  JSON user feature state (see udfs.features.UserState), read by the job only.
- `profile:{user}` JSON Profile: the user's features by name as of the last window folded in,
                 written beside the state; GetUserFeatures answers from it in every engine.
- `trending`     sorted set item_id -> forward-decayed popularity (global candidates, fallback).
- `trending:cat:{category}` the same per category.
- `trending:long` the same with the long half-life; `trending:cats` (`:long`) category popularity;
  `trending:views` / `:buys` / `:rebuys` long-term counts per item (and `__all__`);
  `trending:landmark` the boards' common time origin, `trending:boards` the set of boards.
- `item:meta`    hash item_id -> JSON {"category", "price"} from the `items` topic.
- `item:unavailable` set: items the `items` topic marks `available = false` (never served).
- `rules`        hash: the applied editorial rules (contract.editorial: `spec`, `version`,
                 `applied_at_ms`, `source`); `rules:history` list: the audit, newest first.
- `webhooks:endpoints` hash: the registered webhook receivers (`streamrank webhooks add`).
- `ledger`       hash: how many input records were used, duplicate, opted_out, dlq, late.
- `control`      hash: control records applied, by action (erase, opt_out, opt_in).
- `ledger:rejected_offsets` hash: per source partition, the offset of the last DLQ'd or late
                 record counted, so a replay after recovery does not count it again.
- `experiments`  hash: the applied experiments spec (`spec`, JSON from contract.experiments), its
                 `version` (what services poll), `applied_at_ms` and the `source` file's text.
- `engagement:t:{experiment}:{arm}:{placement}:{model_version}` hash (each part percent-encoded):
                 the engagement job's totals for that group (ENGAGEMENT_FIELDS; conversions in
                 udfs.attribution.CREDIT_UNITS, revenue in 1/REVENUE_UNITS); `engagement:u:{...}` the
                 set of its users; `engagement:groups` hash: totals key -> JSON [experiment, arm,
                 placement, model_version]. Markers, each living as long as a replay or a late
                 interaction can still need it (contract/lua/once.lua): `engagement:x:{request_id}`
                 an exposure counted, `engagement:c:{request_id}` an exposure clicked,
                 `engagement:s:{event_id}` an interaction settled.
- `drift:psi`    hash: the last drift window's PSI per feature (JSON), its model version, window,
                 rows, the worst feature and whether it crossed the alert threshold.

Writes of rec/feat/profile are guarded by the feature timestamp in a Lua script, so a replay after
recovery never moves a key backwards. The scripts are contract/lua/*.lua, loaded by name
(`lua`); they name no key themselves: every key reaches them in KEYS (or a prefix in ARGV).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import sys
import zlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import quote

from contract import compact

TRENDING = "trending"
TRENDING_LONG = "trending:long"
TRENDING_CATS = "trending:cats"
TRENDING_CATS_LONG = "trending:cats:long"
TRENDING_VIEWS, TRENDING_BUYS, TRENDING_REBUYS = "trending:views", "trending:buys", "trending:rebuys"
TRENDING_LANDMARK = "trending:landmark"
TRENDING_BOARDS = "trending:boards"
TRENDING_CATEGORY_PREFIX = "trending:cat:"
# item -> short popularity among the users now in a segment (candidates.per_segment > 0; segment_stats.lua)
TRENDING_SEGMENT_PREFIX = "trending:seg:"
# the boards item_stats.lua writes, in its KEYS order after the landmark and the set of boards
ITEM_STATS_BOARDS = (TRENDING, TRENDING_LONG, TRENDING_CATS, TRENDING_CATS_LONG, TRENDING_VIEWS, TRENDING_BUYS,
                     TRENDING_REBUYS)
ALL_ITEMS = "__all__"  # the member of the count boards that sums every item
LEDGER = "ledger"  # hash: LEDGER_FIELDS -> records counted
LEDGER_FIELDS = ("used", "duplicate", "opted_out", "quarantined", "late", "dlq")  # also Flink metrics streamrank.<field>
ITEM_META = "item:meta"
DRIFT = "drift:psi"
CONTROL = "control"  # hash: control records applied, by action (erase, opt_out, opt_in)
EXPERIMENTS = "experiments"
RULES = "rules"  # hash: the applied editorial rules (contract.editorial): spec, version, applied_at_ms, source
RULES_HISTORY = "rules:history"  # list, newest first: one JSON audit entry per apply or rollback
WEBHOOK_ENDPOINTS = "webhooks:endpoints"  # hash: endpoint id -> JSON {url, events, secret} (contract.webhooks)
# JSON: the layout (udfs.features.state_layout) the users' feat:{user} states were written with, set
# with the first states; a job whose config gives another does not start
STATE_LAYOUT = "state:layout"
UNAVAILABLE_ITEMS = "item:unavailable"  # set: items the catalog marks unavailable; never served
REJECTED_OFFSETS = "ledger:rejected_offsets"  # hash "{topic}:{partition}" -> last rejected offset counted


def read_control(r, layout: Layout | None = None) -> dict[str, int]:
    """The control hash (summed over a cluster layout's shards): users' requests applied, by
    action (only those that happened)."""
    layout = layout or Layout()
    out: dict[str, int] = {}
    for shard in layout.all_shards():
        for k, v in r.hgetall(layout.control(shard)).items():
            out[k.decode()] = out.get(k.decode(), 0) + int(v)
    return out



def accounted(ledger: dict[str, int], control: dict[str, int]) -> int:
    """Input records accounted for: the ledger's outcomes plus the users' requests applied (records
    of the same topic, counted apart). Equals the topic's record count once the job has read it all."""
    return sum(ledger.values()) + sum(control.values())


def read_ledger(r, layout: Layout | None = None) -> dict[str, int]:
    """The ledger hash from a Redis client (summed over a cluster layout's shards), with 0 for a
    count nothing has incremented yet."""
    layout = layout or Layout()
    out = dict.fromkeys(LEDGER_FIELDS, 0)
    for shard in layout.all_shards():
        raw = r.hgetall(layout.ledger(shard))
        for f in LEDGER_FIELDS:
            out[f] += int(raw.get(f.encode(), 0))
    return out


ENGAGEMENT_GROUPS = "engagement:groups"
ENGAGEMENT_MODELS = ("last_touch", "linear", "time_decay")  # udfs.attribution.MODELS
ENGAGEMENT_FIELDS = ("exposures", "clicks", *(f"conversions_{m}" for m in ENGAGEMENT_MODELS),
                     *(f"revenue_{m}" for m in ENGAGEMENT_MODELS))
Group = tuple[str, str, str, str]  # (experiment, arm, placement, model_version)


def _group_path(group: Group) -> str:
    # each part percent-encoded: a placement is the client's text and may hold ':'
    return ":".join(quote(part, safe="") for part in group)


def engagement_key(group: Group) -> str:
    """The totals hash of (experiment, arm, placement, model_version)."""
    return "engagement:t:" + _group_path(group)


def engagement_users_key(group: Group) -> str:
    return "engagement:u:" + _group_path(group)


def exposed_key(request_id: str) -> str:
    """Marks an exposure counted (a record sent twice, or read again after a restart, counts once)."""
    return f"engagement:x:{quote(request_id, safe='')}"


def clicked_key(request_id: str) -> str:
    """Marks an exposure clicked (however many of the user's clicks touch it)."""
    return f"engagement:c:{quote(request_id, safe='')}"


def settled_key(event_id: str) -> str:
    """Marks an interaction settled (sent twice, or read again after a restart, it counts once)."""
    return f"engagement:s:{quote(event_id, safe='')}"


def read_engagement(r) -> dict[Group, dict[str, int]]:
    """Every group's totals as the engagement job wrote them, with its users counted (`users`)."""
    def text(v: bytes | str) -> str:
        return v.decode() if isinstance(v, bytes) else v

    out = {}
    for key, group in r.hgetall(ENGAGEMENT_GROUPS).items():
        g = tuple(json.loads(group))
        totals = {text(f): int(v) for f, v in r.hgetall(text(key)).items()}
        out[g] = {**dict.fromkeys(ENGAGEMENT_FIELDS, 0), **totals, "users": r.scard(engagement_users_key(g))}
    return dict(sorted(out.items()))


# A pseudonymous user id (privacy.pseudonymize): "p:" and the first 32 hex digits (128 bits) of
# HMAC-SHA256(key, the user id's UTF-8 bytes). The same function in the job's JVM
# (io.streamrank.udf.Pseudonym), lookupd and here; tests/vectors/pseudonym.json holds them to it.
PSEUDONYM_PREFIX = "p:"


def pseudonym(user_id: str, key: bytes) -> str:
    return PSEUDONYM_PREFIX + hmac.new(key, user_id.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


def rec_key(user_id: str) -> str:
    return f"rec:{user_id}"


def feat_key(user_id: str) -> str:
    return f"feat:{user_id}"


def profile_key(user_id: str) -> str:
    return f"profile:{user_id}"


def trending_category_key(category: str) -> str:
    return f"{TRENDING_CATEGORY_PREFIX}{category}"


def trending_segment_key(segment: str) -> str:
    return f"{TRENDING_SEGMENT_PREFIX}{segment}"


# The job's atomic write: one MULTI per shard, with the shard's users' keys and its own ledger,
# control counts and item boards. One Redis has one shard and the names above; in a Redis Cluster
# (redis.cluster) each of N shards carries the hash tag {sK}, so everything one transaction touches
# is in one hash slot, and the boards and the ledger are kept per shard (readers sum them).
@dataclass(frozen=True, slots=True)
class Layout:
    shards: int = 0  # 0: one Redis; N: a Redis Cluster with the users in N shards

    def shard(self, user_id: str) -> int:
        """The user's shard: CRC-32 of the id's UTF-8 bytes modulo the shards (lookupd the same, userKey)."""
        return zlib.crc32(user_id.encode("utf-8", "surrogatepass")) % self.shards if self.shards else 0

    def all_shards(self) -> range:
        return range(max(self.shards, 1))

    def tag(self, shard: int) -> str:
        return f"{{s{shard}}}" if self.shards else ""

    def rec(self, user_id: str) -> str:
        return rec_key(user_id) + self.tag(self.shard(user_id))

    def feat(self, user_id: str) -> str:
        return feat_key(user_id) + self.tag(self.shard(user_id))

    def profile(self, user_id: str) -> str:
        return profile_key(user_id) + self.tag(self.shard(user_id))

    def ledger(self, shard: int = 0) -> str:
        return LEDGER + self.tag(shard)

    def control(self, shard: int = 0) -> str:
        return CONTROL + self.tag(shard)

    def rejected_offsets(self) -> str:
        """Beside shard 0's ledger, which the DLQ'd and late records are counted into."""
        return REJECTED_OFFSETS + self.tag(0)

    def board(self, name: str, shard: int = 0) -> str:
        """One of the item boards (TRENDING, ...; a category's or a segment's) of a shard. The tag
        comes first: a category is free text, and a brace in it must not become the hash tag."""
        return self.tag(shard) + name

    def rules_history(self) -> str:
        """The rules' audit list: tagged {rules} on a cluster, the slot of RULES, so that one script
        writes a version and its audit together."""
        return "{rules}:history" if self.shards else RULES_HISTORY

    def user_of(self, key: str | bytes) -> str:
        """The user id of a per-user key (rec:, feat:, profile:)."""
        text = key.decode() if isinstance(key, bytes) else key
        return text.split(":", 1)[1].split("{", 1)[0]


ONE_REDIS = Layout()


LUA_DIR = Path(__file__).resolve().parent / "lua"


@cache
def lua(name: str) -> str:
    """The text of contract/lua/NAME.lua (guarded_set, item_stats, count_rejected)."""
    path = LUA_DIR / f"{name}.lua"
    if not path.is_file():
        raise FileNotFoundError(f"no Lua script {name!r} in {LUA_DIR}: "
                                f"one of {', '.join(sorted(p.stem for p in LUA_DIR.glob('*.lua')))}")
    return path.read_text()


@dataclass(frozen=True, slots=True)
class ScoredItem:
    item_id: str
    score: float
    category: str = ""
    reasons: tuple[str, ...] = ()  # why it is recommended: codes that are facts (udfs.reasons)


def stored_item(e: list) -> ScoredItem:
    """One entry of a stored list: [id, score, category, [reasons]] (the last two optional)."""
    return ScoredItem(e[0], float(e[1]), e[2] if len(e) > 2 else "", tuple(e[3]) if len(e) > 3 else ())


@dataclass(frozen=True, slots=True)
class RecList:
    items: list[ScoredItem]
    model_version: str
    feature_ts: int  # event time (ms) of the newest event the features include
    written_at: int = 0  # wall clock (ms) when the job wrote the list
    extra: dict[str, object] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)  # the user's segments as of the list (contract.segments)

    def encode(self) -> str:
        d = {
            "items": [[i.item_id, round(i.score, 6), i.category, *((list(i.reasons),) if i.reasons else ())]
                      for i in self.items],
            "model_version": self.model_version,
            "feature_ts": self.feature_ts,
            "written_at": self.written_at,
            "extra": self.extra,
        }
        if self.segments:
            d["segments"] = self.segments
        return json.dumps(d, separators=(",", ":"))

    @staticmethod
    def decode(raw: str | bytes) -> RecList:
        d = json.loads(compact.text(raw))
        return RecList(
            items=[stored_item(e) for e in d["items"]],
            model_version=d["model_version"],
            feature_ts=int(d["feature_ts"]),
            written_at=int(d.get("written_at", 0)),
            extra=d.get("extra", {}),
            segments=[str(s) for s in d.get("segments", ())],
        )


@dataclass(frozen=True, slots=True)
class ItemMeta:
    """Value of one field of the `item:meta` hash."""

    category: str
    price: float

    def encode(self) -> str:
        return json.dumps({"category": self.category, "price": self.price}, separators=(",", ":"))

    @staticmethod
    def decode(raw: str | bytes) -> ItemMeta:
        d = json.loads(raw)
        return ItemMeta(str(d.get("category") or "unknown"), float(d.get("price") or 0.0))


def _finite(v: float) -> float:
    """A value JSON can carry: valid prices near the largest double can sum to infinity in a
    window, and one such user must not stop the job's write (JSON has no inf). +-inf becomes the
    largest double of its sign, NaN 0."""
    if math.isfinite(v):
        return v
    return 0.0 if math.isnan(v) else math.copysign(sys.float_info.max, v)


@dataclass(frozen=True, slots=True)
class Profile:
    """Value of `profile:{user}`: what GetUserFeatures answers. The job writes it with the state,
    so the serving engines need neither the state's layout nor the feature definitions. feature_ts
    comes first in the text: guarded_set.lua reads the first "feature_ts" it finds."""

    features: dict[str, float]
    top_categories: list[str]
    feature_ts: int  # event time (ms) of the newest event the features include
    window_end: int  # the last window folded in; the features are as of this time
    segments: list[str] = field(default_factory=list)  # the segments these features put the user in

    def encode(self) -> str:
        features = {k: _finite(v) for k, v in self.features.items()}
        d = {"feature_ts": self.feature_ts, "window_end": self.window_end, "features": features,
             "top_categories": self.top_categories}
        if self.segments:
            d["segments"] = self.segments
        return json.dumps(d, separators=(",", ":"), allow_nan=False)

    @staticmethod
    def decode(raw: str | bytes) -> Profile:
        d = json.loads(compact.text(raw))
        return Profile({k: float(v) for k, v in d["features"].items()}, [str(c) for c in d["top_categories"]],
                       int(d["feature_ts"]), int(d["window_end"]), [str(s) for s in d.get("segments", ())])
