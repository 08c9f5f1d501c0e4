"""The publishing gate through `streamrank train`, both ways, on two small worlds built so the
verdict is known: one where "buy again" is already perfect (no model can beat it), one where
users switch to a new item and frequency points at the old one (recency, which the model sees,
wins)."""

from __future__ import annotations

import json
import os

from typer.testing import CliRunner

from cli.main import app

D = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01


def write(path, events):
    events.sort(key=lambda e: (e["ts"], e["event_id"]))
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


def purchase(n, user, item, ts):
    return {"event_id": f"e{n}", "user_id": user, "item_id": item, "type": "purchase", "ts": ts, "value": 3.0,
            "category": f"c{int(item[1:]) % 7}"}


def loyal_world(path):
    """Every user buys their one item every day: repeat ranks it first for everyone."""
    return write(path, [purchase(u * 100 + d, f"u{u}", f"i{u}", T0 + d * D + u * 60_000)
                        for u in range(60) for d in range(40)])


def switching_world(path):
    """Each user buys an old item daily until a day between 18 and 28, then a new one daily: at the
    holdout (day 32) most users bought the old item more often, but only the new one follows."""
    events = []
    for u in range(80):
        switch = 18 + u % 11
        for d in range(40):
            item = f"i{u}" if d < switch else f"i{1000 + u}"
            events.append(purchase(u * 100 + d, f"u{u}", item, T0 + d * D + u * 60_000))
    return write(path, events)


def train(tmp_path, history, *extra):
    registry = tmp_path / "registry"
    result = CliRunner().invoke(app, ["train", "--history", str(history), "--registry", str(registry),
                                      "--kind", "classifier", "--preset", "retail-purchases", *extra])
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout[result.stdout.index("{"):])  # the last thing printed: the card
    current = os.readlink(registry / "current") if (registry / "current").is_symlink() else None
    return result, card, current


def test_a_model_that_does_not_beat_buy_again_is_published_not_promoted_and_force_promotes(tmp_path):
    history = loyal_world(tmp_path / "loyal.jsonl")
    result, card, current = train(tmp_path, history)
    assert card["gate"]["promote"] is False and card["gate"]["best_baseline"] == "repeat"
    assert card["gate"]["best_baseline_value"] == 1.0  # repeat is perfect here
    assert "NOT promoted" in result.output and "does not beat the best baseline repeat" in result.output
    assert current is None and (tmp_path / "registry" / card["version"] / "model.onnx").exists()
    result, card, current = train(tmp_path, history, "--force")
    assert card["gate"]["promote"] is False and card["gate"]["forced"] is True
    assert "promoted anyway (--force)" in result.output and current == card["version"]


def test_a_model_that_beats_every_baseline_is_promoted(tmp_path):
    history = switching_world(tmp_path / "switching.jsonl")
    result, card, current = train(tmp_path, history)
    gate = card["gate"]
    assert gate["promote"] is True, gate["reason"]
    assert gate["model"] > gate["best_baseline_value"] and "gate passed" in result.output
    assert gate["difference_ci95"][0] > 0  # the interval of model - best baseline, over users, in the card
    assert current == card["version"]
