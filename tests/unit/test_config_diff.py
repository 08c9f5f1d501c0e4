"""`streamrank config diff`: the effective values that change, and whether a job resumes across them."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app
from contract.paths import CONFIG_DIR

LOCAL = CONFIG_DIR / "local.toml"


def diff(tmp_path, new_text: str):
    new = tmp_path / "new.toml"
    new.write_text(new_text)
    out = CliRunner().invoke(app, ["config", "diff", str(LOCAL), str(new)], env={"COLUMNS": "300"})
    return out, (json.loads(out.stdout.splitlines()[-1]) if out.exit_code == 0 else None)


def with_features(line: str) -> str:
    text = LOCAL.read_text()
    assert "[features]\n" in text
    return text.replace("[features]\n", f"[features]\n{line}\n", 1)


def test_a_change_outside_the_states_shape_can_resume(tmp_path):
    out, got = diff(tmp_path, LOCAL.read_text() + "\n[webhooks]\nlist_top_n = 7\n")
    assert got == {"changed": {"webhooks.list_top_n": {"old": 5, "new": 7}}, "resumable": True, "state_shape": {},
                   "savepoint": {}}
    assert "can resume" in out.output


def test_a_slice_count_changes_the_shape_and_is_named(tmp_path):
    out, got = diff(tmp_path, with_features("window_slices = 6"))
    assert got["changed"] == {"features.window_slices": {"old": 12, "new": 6}}
    assert list(got["state_shape"]) == ["features.window_slices"] and got["resumable"] is False
    assert "cannot resume" in out.output and "features.window_slices" in out.output


def test_a_window_changes_the_feature_set_too(tmp_path):
    _, got = diff(tmp_path, with_features("frequency_windows_s = [3600.0, 604800.0]"))
    assert set(got["state_shape"]) == {"features.frequency_windows_s", "feature_names"}
    assert got["resumable"] is False


def test_a_change_flinks_savepoint_cannot_take_is_named_too(tmp_path):
    out, got = diff(tmp_path, with_features("micro_batch_s = 5.0").replace("micro_batch_s = 2.0\n", "", 1))
    assert got["changed"] == {"features.micro_batch_s": {"old": 2.0, "new": 5.0}}
    assert list(got["savepoint"]) == ["features.micro_batch_s"] and got["state_shape"] == {}
    assert got["resumable"] is False and "the savepoint's state" in out.output
    _, quarantined = diff(tmp_path, LOCAL.read_text() + "\n[quarantine]\nmax_events_per_minute = 120\n")
    assert list(quarantined["savepoint"]) == ["quarantine.max_events_per_minute"]


def test_an_invalid_config_is_exit_2_naming_the_field(tmp_path):
    out, _ = diff(tmp_path, "[features]\nwindow_slices = 0\n")
    assert out.exit_code == 2 and "window_slices" in out.output
