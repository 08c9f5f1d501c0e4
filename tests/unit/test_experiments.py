"""Experiments: the declared file (validation that names the field and the fix), assignment against
the shared vectors (Go answers the same in serving/lookupd/experiments_test.go), and the split."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, UTC

import pytest

from contract.config import ConfigError
from contract.experiments import RANKERS, assign, bucket, load_experiments, parse_experiments
from contract.paths import CONFIG_DIR, PROJECT_ROOT
from udfs.arms import BASELINE_KINDS

VECTORS = json.loads((PROJECT_ROOT / "tests" / "vectors" / "assignment.json").read_text())
START, END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)
NOW_MS = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)


def experiment(name="ab", **over) -> dict:
    return {"name": name, "salt": f"{name}-salt", "share": 1.0, "start": START, "end": END,
            "arms": [{"name": "control"}, {"name": "treatment"}], **over}


def test_assignment_gives_the_shared_answers():
    for case in VECTORS["buckets"]:
        assert bucket(case["salt"], case["user_id"]) == case["bucket"]
    for case in VECTORS["assign"]:
        assert assign(VECTORS["spec"], case["user_id"], case["now_ms"]) == case["assignments"]
    assert sum(len(c["assignments"]) for c in VECTORS["assign"]) > 50


def test_the_vectors_spec_is_what_the_file_format_makes():
    """The spec in the vectors is a current dump: a change to spec() shows here, not only in Go."""
    spec = VECTORS["spec"]
    rebuilt = parse_experiments({"experiments": [
        {"name": e["name"], "salt": e["salt"], "layer": e["layer"],
         "share": (e["traffic"][1] - e["traffic"][0]) / spec["buckets"],
         "start": datetime.fromtimestamp(e["start_ms"] / 1000, UTC),
         "end": datetime.fromtimestamp(e["end_ms"] / 1000, UTC),
         "arms": [{"name": a["name"], "ranker": a["ranker"], "weight": a["upto"] - prev,
                   **({"candidates": a["candidates"]} if a["candidates"] else {})}
                  for a, prev in zip(e["arms"], [0] + [a["upto"] for a in e["arms"]])]}
        for e in spec["experiments"]]}).spec()
    assert rebuilt == spec


@pytest.mark.parametrize("weights", [(1, 1), (1, 3), (2, 3, 5)])
def test_arms_split_within_one_percent_of_their_weights_over_100k_users(weights):
    names = [f"arm{i}" for i in range(len(weights))]
    spec = parse_experiments({"experiments": [experiment(arms=[{"name": n, "weight": w}
                                                               for n, w in zip(names, weights)])]}).spec()
    n = 100_000
    got = Counter(assign(spec, f"user-{i}", NOW_MS)["ab"] for i in range(n))
    for name, w in zip(names, weights):
        assert abs(got[name] / n - w / sum(weights)) < 0.01, (got, weights)


def test_layers_split_traffic_within_and_assign_independently_across():
    spec = parse_experiments({"experiments": [
        experiment("first", share=0.3), experiment("second", share=0.2),
        experiment("across", layer="other", share=0.5)]}).spec()
    n = 100_000
    seen = [assign(spec, f"user-{i}", NOW_MS) for i in range(n)]
    share = Counter(e for s in seen for e in s)
    assert abs(share["first"] / n - 0.3) < 0.01 and abs(share["second"] / n - 0.2) < 0.01
    assert not any("first" in s and "second" in s for s in seen)  # one layer: exclusive
    both = sum("first" in s and "across" in s for s in seen)
    assert abs(both / n - 0.3 * 0.5) < 0.01  # other layer: independent


def test_a_new_salt_reshuffles_arms_and_a_closed_window_assigns_nobody():
    a = parse_experiments({"experiments": [experiment()]}).spec()
    b = parse_experiments({"experiments": [experiment(salt="another")]}).spec()
    users = [f"user-{i}" for i in range(2000)]
    moved = sum(assign(a, u, NOW_MS) != assign(b, u, NOW_MS) for u in users)
    assert 800 < moved < 1200  # about half change arm
    assert all(assign(a, u, int(END.timestamp() * 1000)) == {} for u in users[:100])
    assert all(assign(a, u, int(START.timestamp() * 1000) - 1) == {} for u in users[:100])


@pytest.mark.parametrize(("change", "message"), [
    ({"arms": [{"name": "x"}, {"name": "x"}]}, r"arm names repeat.*give each arm its own name"),
    ({"control": "nobody"}, r"control = 'nobody' is not an arm; choose one of \['control', 'treatment'\]"),
    ({"share": 0.33333}, r"share = 0.33333 is finer than 0.0001.*round it to 4 decimals"),
    ({"end": START}, r"end .* is not after start"),
    ({"start": datetime(2026, 1, 1)},  # noqa: DTZ001  (the naive date-time under test)
     r"start = 2026-01-01T00:00:00 has no UTC offset.*2026-01-01T00:00:00Z"),
    ({"name": "Has Space"}, r"name 'Has Space' is not a name: use 1-63 of a-z"),
    ({"arms": [{"name": "a", "ranker": "trending", "model_version": "v1"}, {"name": "b"}]},
     r"model_version is set but ranker = 'trending'.*drop model_version"),
    ({"arms": [{"name": "a", "ranker": "popularity"}, {"name": "b"}]}, r"arms.0.ranker.*'model', 'trending' or 'repeat'"),
    ({"arms": [{"name": "only"}]}, r"arms: List should have at least 2 items"),
    ({"salty": "x"}, r"experiments.0.salty: unknown key; did you mean 'salt'\?.*deploy/config/README.md"),
])
def test_a_bad_experiment_is_refused_naming_the_field_and_the_fix(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_experiments({"experiments": [experiment(**change)]}, "exp.toml")


def test_a_layer_refuses_overlapping_or_overflowing_experiments():
    with pytest.raises(ConfigError, match=r"'one' and 'two' overlap in layer 'main' \(buckets 0-6000 and 5000-9000\)"
                                          r".*set an offset or put one in another layer"):
        parse_experiments({"experiments": [experiment("one", share=0.6), experiment("two", share=0.4, offset=0.5)]})
    with pytest.raises(ConfigError, match=r"'two' runs past the end of layer 'main'.*lower its share"):
        parse_experiments({"experiments": [experiment("one", share=0.6), experiment("two", share=0.5)]})
    with pytest.raises(ConfigError, match=r"experiment names repeat"):
        parse_experiments({"experiments": [experiment("one", share=0.1), experiment("one", share=0.1)]})
    # an explicit offset keeps a later experiment's users in place when an earlier one is removed
    kept = parse_experiments({"experiments": [experiment("two", share=0.4, offset=0.6)]}).spec()
    assert kept["experiments"][0]["traffic"] == [6000, 10000]


def test_the_example_file_loads_and_a_binary_file_is_refused_cleanly(tmp_path):
    f = load_experiments(CONFIG_DIR / "experiments.toml")
    assert {e.name for e in f.experiments} == {"ranker-vs-trending", "wider-candidates"}
    assert f.experiments[0].control_arm == "trending"
    binary = tmp_path / "exp.toml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="experiments file .* is not UTF-8 text"):
        load_experiments(binary)
    with pytest.raises(ConfigError, match="experiments file .* not found"):
        load_experiments(tmp_path / "none.toml")


def test_an_arm_ranks_with_the_model_or_a_baseline_the_job_has():
    assert set(RANKERS) == {"model", *BASELINE_KINDS}
