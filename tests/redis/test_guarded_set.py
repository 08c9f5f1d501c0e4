"""The guarded write the job uses for feat:{user}, profile:{user} and rec:{user} (contract.keys.lua("guarded_set")),
on a real Redis: a stored value with a newer feature_ts is kept, an equal or older one is replaced,
and the guard is the top-level feature_ts even when an item, a category or an event id is named
"feature_ts" inside the document."""

from contract import compact, keys
from udfs.features import UserState

ADVERSARIAL = "feature_ts"  # a valid item id, category and event id


def stored_state(feature_ts: int) -> str:
    return UserState(window_end=feature_ts + 1000, feature_ts=feature_ts, affinity={ADVERSARIAL: 9e9},
                     items={ADVERSARIAL: 9e9, "i1": 1.0}, seen={ADVERSARIAL: 99_999_999_999_999}).encode()


def stored_list(feature_ts: int) -> str:
    return keys.RecList([keys.ScoredItem(ADVERSARIAL, 0.5, ADVERSARIAL)], "v0001", feature_ts,
                        extra={ADVERSARIAL: 99_999_999_999_999}).encode()


def stored_profile(feature_ts: int) -> str:
    return keys.Profile({ADVERSARIAL: 99_999_999_999_999.0}, [ADVERSARIAL], feature_ts, feature_ts + 1000).encode()


def test_guarded_set_keeps_newer_values_and_reads_the_top_level_guard(redis_db):
    _, r = redis_db
    guarded_set = r.register_script(keys.lua("guarded_set"))
    for key, value in ((keys.feat_key("u1"), stored_state), (keys.rec_key("u1"), stored_list),
                       (keys.profile_key("u1"), stored_profile)):
        assert guarded_set(keys=[key], args=[1000, value(1000), 60]) == 1  # nothing stored yet
        assert 0 < r.ttl(key) <= 60
        assert guarded_set(keys=[key], args=[999, value(999), 60]) == 0  # older: kept
        assert r.get(key).decode() == value(1000)
        assert guarded_set(keys=[key], args=[1000, value(1000), 0]) == 1  # equal: a replay rewrites
        assert r.ttl(key) == -1  # TTL 0: none
        # newer, though the stored text holds 99,999,999,999,999 under a nested "feature_ts"
        assert guarded_set(keys=[key], args=[2000, value(2000), 60]) == 1
        assert r.get(key).decode() == value(2000)


def test_guarded_set_decodes_values_of_another_shape(redis_db):
    _, r = redis_db
    guarded_set = r.register_script(keys.lua("guarded_set"))
    for stored, ts, written in (('{"feature_ts": "3000"}', 2000, 0), ('{"feature_ts": 3.5e3}', 2000, 0),
                                ('{"feature_ts": 1.5e3}', 2000, 1), ("not json", 1, 1), ("[1, 2]", 1, 1),
                                ('{"other": 1}', 1, 1)):
        r.set(keys.feat_key("u2"), stored)
        assert guarded_set(keys=[keys.feat_key("u2")], args=[ts, "new", 0]) == written, stored
        assert r.get(keys.feat_key("u2")).decode() == ("new" if written else stored)


def test_guarded_set_reads_the_guard_of_packed_values_without_decompressing(redis_db):
    """The job's values are packed (contract.compact): the guard comes from the `z:<ts>:` prefix, and
    a packed value whose compressed bytes happen to hold `"feature_ts":...` text is not misread."""
    _, r = redis_db
    guarded_set = r.register_script(keys.lua("guarded_set"))
    for key, kind, value in ((keys.feat_key("u3"), "feat", stored_state), (keys.rec_key("u3"), "rec", stored_list),
                             (keys.profile_key("u3"), "profile", stored_profile)):
        def packed(ts: int) -> bytes:
            return compact.pack(kind, ts, value(ts))  # noqa: B023 (called in this iteration)

        assert guarded_set(keys=[key], args=[1000, packed(1000), 60]) == 1
        assert guarded_set(keys=[key], args=[999, packed(999), 60]) == 0  # older: kept
        assert compact.text(r.get(key)).decode() == value(1000)
        assert guarded_set(keys=[key], args=[1000, packed(1000), 60]) == 1  # equal: a replay rewrites
        assert guarded_set(keys=[key], args=[2000, packed(2000), 60]) == 1
        assert compact.text(r.get(key)).decode() == value(2000)
        # a JSON value from before is overwritten by a newer packed one, and guards against an older one
        r.set(key, value(3000))
        assert guarded_set(keys=[key], args=[2500, packed(2500), 60]) == 0
        assert guarded_set(keys=[key], args=[3500, packed(3500), 60]) == 1
    r.set(keys.feat_key("u4"), b"z:5000:" + b'"feature_ts":99999999')  # the prefix wins over any text after it
    assert guarded_set(keys=[keys.feat_key("u4")], args=[6000, "new", 0]) == 1
