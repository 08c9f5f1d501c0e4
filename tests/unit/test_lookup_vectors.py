"""The lookup rules of serving/lookup.py against the shared vectors in tests/vectors/lookup.json.
The compiled service (serving/lookupd) is held to the same file by its `go test`; both tests run in
the unit tier (tests/unit/test_lookupd_go.py runs the Go one)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract import keys
from contract.editorial import decode_spec
from serving import lookup
from serving.core import status_of
from serving.launch import contract_spec

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "lookup.json").read_text())
POPULAR = [keys.ScoredItem(*i) for i in VECTORS["popular"]]


def _answer(case: dict) -> lookup.Recommendations:
    q = case["request"]
    f = q.get("filters", {})
    request = lookup.check_request(q["user_id"], q.get("k", 0), VECTORS["default_k"], VECTORS["max_k"],
                                   lookup.filters_of(f.get("include_categories", ()), f.get("exclude_categories", ()),
                                                     f.get("exclude_items", ())), q.get("placement", ""))
    unavailable = case.get("unavailable", "")
    raw = None if unavailable else VECTORS["stored"].get(q["user_id"])
    return lookup.answer(request, raw.encode() if raw is not None else None, POPULAR, VECTORS["now_ms"], unavailable)


@pytest.mark.parametrize("case", VECTORS["cases"], ids=[c["name"] for c in VECTORS["cases"]])
def test_lookup_rules_give_the_shared_answers(case):
    if "error" in case:
        with pytest.raises(Exception) as err:
            _answer(case)
        assert status_of(err.value) == case["error"]
        if "message" in case:
            assert str(err.value) == case["message"]
        return
    a = _answer(case)
    got = {"items": [[i.item_id, i.score, i.category] for i in a.items], "model_version": a.model_version,
           "feature_ts_ms": a.feature_ts_ms, "list_age_ms": a.list_age_ms, "fallback": a.fallback,
           "fallback_reason": a.fallback_reason, "placement": a.placement}
    assert got == case["expect"]


def test_popular_items_from_the_trending_board():
    p = VECTORS["popular_items"]
    metas = [m.encode() if m is not None else None for m in p["metas"]]
    items = lookup.popular_items([(i.encode(), s) for i, s in p["trending"]], metas)
    assert [[i.item_id, i.score, i.category] for i in items] == p["expect"]


def test_the_vectors_contract_is_the_one_lookupd_is_given():
    """lookup_test.go checks the Go rules under the vectors' "contract"; it must be what
    `streamrank serve` hands lookupd."""
    given = contract_spec()
    assert {k: given[k] for k in VECTORS["contract"]} == VECTORS["contract"]


@pytest.mark.parametrize("case", VECTORS["profiles"], ids=[c["name"] for c in VECTORS["profiles"]])
def test_user_features_give_the_shared_answers(case):
    raw = case["stored"].encode() if case["stored"] is not None else None
    if "error" in case:
        with pytest.raises(Exception) as err:
            lookup.user_features("u1", raw)
        assert status_of(err.value) == case["error"]
        return
    f = lookup.user_features("u1", raw)
    assert {"found": f.found, "features": f.features, "top_categories": f.top_categories,
            "feature_ts_ms": f.feature_ts_ms, "window_end_ms": f.window_end_ms, "segments": f.segments} == case["expect"]


EDITORIAL = json.loads((Path(__file__).parents[1] / "vectors" / "editorial.json").read_text())


@pytest.mark.parametrize("case", EDITORIAL["cases"], ids=[c["name"] for c in EDITORIAL["cases"]])
def test_editorial_rules_give_the_shared_answers(case):
    q, v = case["request"], EDITORIAL
    f = q.get("filters", {})
    request = lookup.check_request(q["user_id"], q.get("k", 0), v["default_k"], v["max_k"],
                                   lookup.filters_of(f.get("include_categories", ()), f.get("exclude_categories", ()),
                                                     f.get("exclude_items", ())), q.get("placement", ""))
    editorial = lookup.Editorial(tuple(case["rules"]), frozenset(case["unavailable"]), "v-test")
    raw = v["stored"].get(q["user_id"])
    a = lookup.answer(request, raw.encode() if raw else None, [keys.ScoredItem(*p) for p in v["popular"]],
                      v["now_ms"], "", editorial)
    got = {"items": [[i.item_id, i.score, i.category, list(i.reasons)] for i in a.items], "segments": a.segments,
           "fallback": a.fallback}
    assert got == case["expect"]
    assert a.rules_version == "v-test"


@pytest.mark.parametrize("case", EDITORIAL["refused_specs"], ids=[c["name"] for c in EDITORIAL["refused_specs"]])
def test_a_stored_rules_spec_that_is_not_exactly_what_apply_stores_is_refused(case):
    """editorial_test.go refuses the same specs: no engine serves rules it half reads."""
    with pytest.raises(ValueError, match="apply it again"):
        decode_spec(case["spec"])
