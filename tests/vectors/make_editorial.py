"""Regenerates tests/vectors/editorial.json from serving/lookup.py (run from the project root after a
change to the precedence, then read every answer it prints: the Go side must then match them)."""
import json
from contract import keys
from contract.editorial import parse_rules
from serving import lookup

NOW = 1_800_000_000_000
items = [keys.ScoredItem(f"i{n}", round(1.0 - n / 20, 6), f"c{n % 3}", ("bought_before",) if n == 1 else ()) for n in range(10)]
vip = keys.RecList(items, "v0009", NOW - 5000, NOW - 4000, segments=["vip", "buyers"]).encode()
plain = keys.RecList(items, "v0009", NOW - 5000, NOW - 4000).encode()
# a ranking model's raw scores, negative below the first few
ranked = keys.RecList([keys.ScoredItem(f"r{n}", round(0.3 - n / 10, 6), f"c{n % 3}") for n in range(8)], "v0010",
                      NOW - 5000, NOW - 4000).encode()
popular = [["t0", 1.0, "c0"], ["t1", 0.9, "c1"], ["t2", 0.8, "c2"], ["t3", 0.7, "c0"]]
T = "2027-01-15T08:00:00Z"  # NOW is 2027-01-15T08:00:00Z
def R(**kw): return kw
cases = [
 ("no rule: the model's order", [], [], "vip", {}),
 ("a rule not started yet does nothing", [R(name="later", action="pin", item="i5", position=1, start="2027-02-01T00:00:00Z")], [], "vip", {}),
 ("a rule that ended does nothing", [R(name="over", action="exclude", item="i0", end="2027-01-15T07:59:59Z")], [], "vip", {}),
 ("pin moves a listed item to its position", [R(name="p", action="pin", item="i5", position=1)], [], "vip", {"k": 4}),
 ("pin adds an item the list lacks", [R(name="p", action="pin", item="x1", category="c1", position=3)], [], "vip", {"k": 5}),
 ("two pins on one position: the first in the file takes it, the second the next", [R(name="a", action="pin", item="i7", position=2), R(name="b", action="pin", item="i8", position=2)], [], "vip", {"k": 5}),
 ("an item pinned twice keeps its first pin", [R(name="a", action="pin", item="i7", position=4), R(name="b", action="pin", item="i7", position=1)], [], "vip", {"k": 5}),
 ("pin plus exclude of one item: exclude wins", [R(name="p", action="pin", item="i5", position=1), R(name="x", action="exclude", item="i5")], [], "vip", {"k": 6}),
 ("exclude a category", [R(name="x", action="exclude", category="c1")], [], "vip", {"k": 5}),
 ("boost a category re-sorts by the new scores", [R(name="b", action="boost", category="c2", factor=1.5)], [], "vip", {"k": 5}),
 ("bury an item", [R(name="b", action="bury", item="i0", factor=0.5)], [], "vip", {"k": 5}),
 ("boost and bury of one item multiply", [R(name="b", action="boost", item="i4", factor=4.0), R(name="d", action="bury", category="c1", factor=0.5)], [], "vip", {"k": 3}),
 ("an unavailable item is never served, pinned or not", [R(name="p", action="pin", item="i3", position=1)], ["i3", "i0"], "vip", {"k": 4}),
 ("a segment rule applies to the segment's users", [R(name="s", action="pin", item="i9", position=1, segments=["vip"])], [], "vip", {"k": 3}),
 ("a segment rule skips users outside it", [R(name="s", action="pin", item="i9", position=1, segments=["vip"])], [], "plain", {"k": 3}),
 ("a placement rule applies on its placement", [R(name="h", action="exclude", item="i0", placements=["hero"])], [], "vip", {"k": 3, "placement": "hero"}),
 ("a placement rule skips other placements", [R(name="h", action="exclude", item="i0", placements=["hero"])], [], "vip", {"k": 3, "placement": "footer"}),
 ("a pin past k is not shown", [R(name="p", action="pin", item="i9", position=5)], [], "vip", {"k": 3}),
 ("a pin past the list's end lands at its end", [R(name="p", action="pin", item="x2", category="c0", position=40)], [], "vip", {"k": 20}),
 ("the request's filters win over a pin", [R(name="p", action="pin", item="i5", position=1)], [], "vip", {"k": 3, "filters": {"exclude_items": ["i5"]}}),
 ("a pin's category meets the request's category filter", [R(name="p", action="pin", item="x1", category="c1", position=1)], [], "vip", {"k": 3, "filters": {"include_categories": ["c0"]}}),
 ("a boost raises a negative score (divided, not multiplied)", [R(name="b", action="boost", item="r5", factor=10.0)], [], "ranker", {"k": 8}),
 ("a bury lowers a negative score", [R(name="d", action="bury", item="r4", factor=0.25)], [], "ranker", {"k": 8}),
 ("a cold user's popular list takes the rules too", [R(name="p", action="pin", item="x1", category="c1", position=2), R(name="x", action="exclude", item="t0"), R(name="s", action="pin", item="x3", category="c1", position=1, segments=["vip"])], [], "cold", {"k": 3}),
]
stored = {"vip": vip, "plain": plain, "ranker": ranked}
out = {"about": "Shared vectors for the editorial rules (contract.editorial's precedence): serving/lookup.py (tests/unit/test_lookup_vectors.py) and serving/lookupd (editorial_test.go) must both give these answers.",
       "now_ms": NOW, "default_k": 4, "max_k": 50, "stored": stored, "popular": popular, "cases": []}
for name, rules, unavailable, user, req in cases:
    spec = parse_rules({"rules": rules}).spec()
    ed = lookup.Editorial(tuple(spec["rules"]), frozenset(unavailable), "v-test")
    f = req.get("filters", {})
    r = lookup.check_request(user, req.get("k", 0), 4, 50, lookup.filters_of(f.get("include_categories", ()), f.get("exclude_categories", ()), f.get("exclude_items", ())), req.get("placement", ""))
    raw = stored.get(user)
    a = lookup.answer(r, raw.encode() if raw else None, [keys.ScoredItem(*p) for p in popular], NOW, "", ed)
    out["cases"].append({"name": name, "rules": spec["rules"], "unavailable": unavailable, "request": {"user_id": user, **req},
                         "expect": {"items": [[i.item_id, i.score, i.category, list(i.reasons)] for i in a.items], "segments": a.segments, "fallback": a.fallback}})
# specs both engines refuse to load (contract.editorial.decode_spec, editorial.go decodeEditorial)
good = parse_rules({"rules": [R(name="x", action="exclude", item="i1")]}).spec()["rules"][0]
out["refused_specs"] = [
    {"name": "a rule without a field", "spec": json.dumps({"rules": [{k: v for k, v in good.items() if k != "segments"}]})},
    {"name": "a rule with an unknown field", "spec": json.dumps({"rules": [{**good, "weight": 2}]})},
    {"name": "an unknown top-level field", "spec": json.dumps({"rules": [good], "owner": "x"})},
    {"name": "no rules list", "spec": json.dumps({})},
    {"name": "rules null", "spec": json.dumps({"rules": None})},
    {"name": "a rule that is no object", "spec": json.dumps({"rules": ["pin i1"]})},
]
json.dump(out, open("tests/vectors/editorial.json", "w"), indent=1)
for c in out["cases"]:
    print(c["name"], "->", [(i[0], round(i[1],3), *i[3]) for i in c["expect"]["items"]])
