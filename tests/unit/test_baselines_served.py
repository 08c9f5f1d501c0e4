"""The baselines as registry versions: published through the CLI, scored by the job's own scorer."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from contract.config import load_config
from cli.main import app
from udfs.candidates import CandidatePool, ItemStats
from udfs.features import Event, UserState, WindowDelta, apply_window, feature_names, user_item_matrix
from udfs.scorer import OnnxScorer

T0 = 1_767_225_600_000


def test_repeat_and_trending_publish_and_rank_as_described(tmp_path):
    cfg = load_config(None)
    registry = tmp_path / "registry"
    cards = {}
    for kind in ("repeat", "trending"):
        result = CliRunner().invoke(app, ["models", "baseline", kind, "--registry", str(registry)])
        assert result.exit_code == 0, result.output
        cards[kind] = json.loads(result.stdout[result.stdout.index("{"):])
        assert cards[kind]["kind"] == f"baseline:{kind}"
    assert not (registry / "current").exists()  # published, not promoted unless asked
    # a user who bought "mine" on two occasions and viewed "seen"; "hot" is the trending item
    evs = [Event("e1", "purchase", "mine", "c", T0, 3.0, True), Event("e2", "view", "seen", "c", T0 + 10_000, 0.0, True),
           Event("e3", "purchase", "mine", "c", T0 + 86_400_000, 3.0, True)]
    state = UserState()
    for e in evs:
        state, _ = apply_window(state, WindowDelta("u", e.ts - e.ts % 2000 + 2000, e.encode()), cfg.features)
    pool = CandidatePool([("hot", 10.0), ("seen", 1.0)], {}, {i: ("c", 1.0) for i in ("hot", "seen", "mine")},
                         ItemStats(long={"hot": 10.0, "seen": 1.0}, long_top=10.0))
    cands = [pool.candidate(i) for i in ("hot", "seen", "mine")]
    x = user_item_matrix(state, state.window_end, cfg.features, cands)
    for kind, want in (("repeat", ["mine", "seen", "hot"]), ("trending", ["hot", "seen", "mine"])):
        scorer = OnnxScorer(registry / cards[kind]["version"], feature_names(cfg.features))
        scores = scorer.score(x)
        assert [cands[i].item_id for i in np.argsort(-scores, kind="stable")] == want, (kind, scores)
    result = CliRunner().invoke(app, ["models", "baseline", "popularity", "--registry", str(registry)])
    assert result.exit_code == 2 and "repeat, trending" in result.output
