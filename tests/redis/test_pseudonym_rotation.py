"""A pseudonymization key rotated, as README's privacy section tells it: the job restarts under the
new key (its lists are stored under the new pseudonyms) while lists written under the old one are
still in Redis. With key_env = the new key and previous_key_env = the old one, both engines and the
gateway answer both kinds, the new pseudonym's list first, the old one only for a user the job has
not seen under the new key (one erased since is not answered from the old list); once the old key is dropped, a user the
job has not seen since is cold."""

from __future__ import annotations

import time

import grpc
import httpx

from contract import keys
from contract.keys import pseudonym
from contract.serving_config import load_serving_config
from serving.launch import start_server
from serving.server import pb, pb_grpc
from tests.conftest import PSEUDONYM_KEYS
from tests.redis.test_serving_ops import running_gateway
from udfs.features import UserState

OLD, NEW = (PSEUDONYM_KEYS[k].encode() for k in ("SR_TEST_PSEUDONYM_KEY", "SR_TEST_PSEUDONYM_KEY_NEW"))
T0 = int(time.time() * 1000) - 60_000


def stored(r, user: str, key: bytes, first_item: str) -> None:
    items = [keys.ScoredItem(first_item, 1.0, "c1"), keys.ScoredItem("shared", 0.5, "c1")]
    r.set(keys.rec_key(pseudonym(user, key)), keys.RecList(items, "v1", T0, T0).encode())


def first_items(cfg, users: list[str]) -> list[str | None]:
    """Each user's first item (None: an empty answer, as a cold user gets with no trending board)."""
    with start_server(cfg) as server, grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.RecommendationsStub(channel)
        answers = [stub.GetRecommendations(pb.GetRecommendationsRequest(user_id=u, k=1), timeout=5) for u in users]
    return [a.items[0].item_id if a.items else None for a in answers]


def test_a_rotation_answers_under_both_keys_new_first(redis_db, engine):
    port, r = redis_db
    stored(r, "old-only", OLD, "from-old")  # the job has not seen this user since the rotation
    stored(r, "both", OLD, "stale")         # ... and this one it has: a newer list under the new key
    stored(r, "both", NEW, "fresh")
    # erased since the rotation: the job holds its (emptied) state under the new key and no list;
    # the old key's list must not answer for it
    stored(r, "erased", OLD, "before-erase")
    r.set(keys.feat_key(pseudonym("erased", NEW)), UserState().encode())
    rotating = load_serving_config(None, {"redis.port": port, "engine": engine, "privacy.pseudonymize": True,
                                          "privacy.key_env": "SR_TEST_PSEUDONYM_KEY_NEW",
                                          "privacy.previous_key_env": "SR_TEST_PSEUDONYM_KEY"})
    assert first_items(rotating, ["old-only", "both", "nobody", "erased"]) == ["from-old", "fresh", None, None]
    with running_gateway(rotating) as base:
        assert httpx.get(f"{base}/v1/recommendations/old-only", params={"k": 1}).json()["items"][0]["item_id"] == "from-old"
    after = load_serving_config(None, {"redis.port": port, "engine": engine, "privacy.pseudonymize": True,
                                       "privacy.key_env": "SR_TEST_PSEUDONYM_KEY_NEW"})
    assert first_items(after, ["old-only", "both"]) == [None, "fresh"]
