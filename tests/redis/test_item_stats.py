"""The Redis Lua item statistics equal their Python mirror (real Redis, no JVM needed)."""

import pytest

from contract import keys
from contract.config import load_config
from udfs.candidates import TrendingBoards
from jobs.store import CandidateSource, TrendingWriter

T0 = 1_700_000_000_000


def test_lua_item_statistics_equal_python_mirror(redis_db):
    port, r = redis_db
    cfg = load_config(None, {"redis.port": port, "features.item_half_life_s": 1.0,
                             "features.item_long_half_life_s": 30.0})
    # five item windows per window end (the script sums a window's categories and '__all__' before
    # adding), 400 s in all (a rescale after 256 s), written in three calls as batches would be
    rows = [(T0 + (k // 5) * 5000, f"i{k % 7}", f"c{k % 3}", k % 4, k % 2, 1, k % 3 == 0) for k in range(400)]
    rows = [(t, i, c, v, cl, a, int(p), int(p and k % 2 == 0)) for k, (t, i, c, v, cl, a, p) in enumerate(rows)]
    writer = TrendingWriter(cfg, r)
    for part in (rows[:77], rows[77:300], rows[300:]):
        writer.write(part)
    mirror = TrendingBoards(1.0, 30.0)
    for t, i, c, v, cl, a, p, rebuys in sorted(rows):
        mirror.add(t, i, c, (v, cl, a, p), rebuys)
    src = CandidateSource(cfg, r)
    src.refresh(force=True)
    want = {i for i, _ in mirror.top(100)}
    assert {i for i, _ in src.pool.global_top} == want
    for c in ("c0", "c1", "c2"):  # every item fits a category board here, so compare them whole
        want_c = dict(mirror.top(cfg.candidates.per_category, c))
        assert len(want_c) == 7 and dict(src.pool.category_top[c]) == pytest.approx(want_c, rel=1e-12), c
    st, mst = src.pool.stats, mirror.stats(want)
    assert mst.rebuys  # repeat purchases were written
    for name in ("long", "categories", "categories_long", "views", "buys", "rebuys"):
        got, exp = getattr(st, name), getattr(mst, name)
        assert got.keys() == exp.keys(), name
        for k in exp:
            assert got[k] == pytest.approx(exp[k], rel=1e-12), (name, k)
    assert int(r.get(keys.TRENDING_LANDMARK)) == mirror.landmark
