"""contract.compact: the packed per-user values, their guard prefix, the dictionaries shipped, and the
shared vectors (tests/vectors/compact.json) lookupd decodes too (serving/lookupd/codec_test.go)."""

import base64
import json

import pytest
import zstandard

from contract import compact, keys
from contract.paths import PROJECT_ROOT
from udfs.features import UserState

VECTORS = PROJECT_ROOT / "tests" / "vectors" / "compact.json"


def test_every_kind_has_a_dictionary_named_by_its_own_id():
    shipped = compact.dictionaries()
    assert {kind for kind, _ in shipped.values()} == set(compact.KINDS)
    for kind in compact.KINDS:
        dict_id = compact.current(kind)
        assert shipped[dict_id][0] == kind
        assert zstandard.ZstdCompressionDict(shipped[dict_id][1]).dict_id() == dict_id


def test_packed_values_round_trip_and_carry_their_guard():
    state = UserState(window_end=2000, feature_ts=1999, affinity={"c1": 0.5}, seen={"0": "e1 e2"})
    rec = keys.RecList([keys.ScoredItem("i1", 0.9, "c1", ("bought_before",))], "v0001", 1999, segments=["loyal"])
    profile = keys.Profile({"views_1h": 3.0}, ["c1"], 1999, 2000, ["loyal"])
    for kind, value, decode in (("feat", state, UserState.decode), ("rec", rec, keys.RecList.decode),
                                ("profile", profile, keys.Profile.decode)):
        packed = compact.pack(kind, 1999, value.encode())
        assert packed.startswith(b"z:1999:")
        assert compact.feature_ts(packed) == 1999
        assert zstandard.get_frame_parameters(packed[len(b"z:1999:"):]).dict_id == compact.current(kind)
        assert decode(packed) == value
        assert decode(value.encode()) == value  # JSON, as stored before packing, reads the same
        assert len(packed) < len(value.encode())


def test_a_value_packed_with_a_dictionary_this_install_lacks_names_the_fix():
    foreign = zstandard.train_dictionary(4096, [b'{"feature_ts":%d,"x":%d}' % (n, n * 7) for n in range(400)],
                                         dict_id=999_999)
    frame = zstandard.ZstdCompressor(dict_data=foreign).compress(b'{"feature_ts":1}')
    with pytest.raises(compact.UnreadableValue, match="dictionary 999999.*upgrade streamrank"):
        compact.text(b"z:1:" + frame)
    with pytest.raises(compact.UnreadableValue, match="no zstd frame"):
        compact.text(b"z:1:not a frame")


def test_shared_vectors_decode_to_their_text():
    vectors = json.loads(VECTORS.read_text())
    assert {v["kind"] for v in vectors["values"]} == set(compact.KINDS)
    for v in vectors["values"]:
        raw = base64.b64decode(v["packed"])
        assert compact.text(raw).decode() == v["text"], v["kind"]
        assert compact.feature_ts(raw) == v["feature_ts"]


def test_layout_vectors_and_what_one_transaction_touches():
    """Python's side of tests/vectors/layout.json (lookupd's in compact_test.go), and the rule the
    cluster layout exists for: a user's keys and their shard's ledger, control counts and boards
    share one hash slot (the tag), different shards' do not collide."""
    from redis.crc import key_slot

    for case in json.loads((PROJECT_ROOT / "tests" / "vectors" / "layout.json").read_text())["cases"]:
        layout = keys.Layout(case["shards"])
        assert layout.rec(case["user"]) == case["rec"] and layout.profile(case["user"]) == case["profile"]
        assert layout.user_of(case["rec"]) == case["user"]
    layout = keys.Layout(8)
    for user in ("u1", "u2", "p:0123456789abcdef0123456789abcdef"):
        shard = layout.shard(user)
        together = [layout.rec(user), layout.feat(user), layout.profile(user), layout.ledger(shard), layout.control(shard),
                    layout.board(keys.TRENDING, shard), layout.board(keys.TRENDING_LANDMARK, shard),
                    layout.board(keys.TRENDING_CATEGORY_PREFIX + "c{1}", shard)]  # a category is free text
        assert len({key_slot(k.encode()) for k in together}) == 1, together
    assert len({key_slot(layout.ledger(s).encode()) for s in layout.all_shards()}) == 8
    assert keys.Layout().rec("u1") == keys.rec_key("u1") and keys.Layout().ledger() == keys.LEDGER
