"""The model registry (directory + `current` symlink + promotions log) and the job's ModelWatcher."""

import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from models.registry import Registry, RegistryError
from tests.unit.conftest import FEATURE_NAMES
from udfs.scorer import ModelWatcher


def publish(reg: Registry, onnx_bytes: bytes, promote: bool = True, names=FEATURE_NAMES) -> str:
    return reg.publish({"model.onnx": onnx_bytes}, {"model": "test", "feature_names": list(names)}, promote).name


def test_publish_numbers_versions_and_promotes(trained, tmp_path):
    reg = Registry(tmp_path)
    assert publish(reg, trained[1]) == "v0001"
    assert publish(reg, trained[1], promote=False) == "v0002"
    assert reg.current() == "v0001"
    assert [(v.version, v.current) for v in reg.versions()] == [("v0001", True), ("v0002", False)]
    assert json.loads((tmp_path / "v0002" / "card.json").read_text())["version"] == "v0002"


def test_promote_and_rollback_follow_a_stack(trained, tmp_path):
    reg = Registry(tmp_path)
    for _ in range(3):
        publish(reg, trained[1], promote=False)
    reg.promote("v0001")
    reg.promote("v0003")
    reg.promote("v0002")
    assert reg.current() == "v0002" and reg.stack() == ["v0001", "v0003", "v0002"]
    assert reg.rollback() == "v0003" and reg.current() == "v0003"
    assert reg.rollback() == "v0001" and reg.current() == "v0001"
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    assert [e["action"] for e in reg.promotions()] == ["promote"] * 3 + ["rollback"] * 2
    with pytest.raises(RegistryError, match="v0009.*published: v0001, v0002, v0003"):
        reg.promote("v0009")


def test_watcher_switches_on_promotion_and_skips_an_unusable_version(trained, tmp_path):
    reg = Registry(tmp_path)
    publish(reg, trained[1])
    watcher = ModelWatcher(tmp_path / "current", FEATURE_NAMES, check_s=0.001)
    x = trained[3][:10]
    assert watcher.current().version == "v0001"
    publish(reg, trained[1])
    watcher.checked_at -= 1
    assert watcher.current().version == "v0002"
    assert np.allclose(watcher.score(x), watcher.current().score(x))
    publish(reg, trained[1], names=("a", "b"))  # other features: refused, v0002 keeps scoring
    watcher.checked_at -= 1
    assert watcher.current().version == "v0002"
    reg.rollback()  # back to v0002 from the refused v0003
    reg.rollback()
    watcher.checked_at -= 1
    assert watcher.current().version == "v0001"
    assert os.readlink(tmp_path / "current") == "v0001"


def test_a_pinned_version_published_late_is_loaded_on_a_later_try(trained, tmp_path):
    reg = Registry(tmp_path)
    publish(reg, trained[1])
    watcher = ModelWatcher(tmp_path / "current", FEATURE_NAMES, check_s=60)
    assert watcher.pinned("v0002").version == "v0001"  # not published yet: the current model scores
    publish(reg, trained[1], promote=False)
    assert watcher.pinned("v0002").version == "v0001"  # tried again only after check_s
    watcher.unusable["v0002"] -= 61
    assert watcher.pinned("v0002").version == "v0002" and "v0002" not in watcher.unusable
    assert watcher.current().version == "v0001"


def test_watcher_with_zero_interval_never_reloads(trained, tmp_path):
    reg = Registry(tmp_path)
    publish(reg, trained[1])
    watcher = ModelWatcher(tmp_path / "current", FEATURE_NAMES, check_s=0)
    publish(reg, trained[1])
    watcher.checked_at -= 100
    assert watcher.current().version == "v0001"


def test_models_commands_list_promote_and_roll_back(trained, tmp_path):
    reg = Registry(tmp_path)
    publish(reg, trained[1])
    publish(reg, trained[1], promote=False)
    run = CliRunner().invoke
    out = run(app, ["models", "list", "--registry", str(tmp_path)])
    assert out.exit_code == 0 and out.output.splitlines()[0].startswith("* v0001")
    assert run(app, ["models", "promote", "v0002", "--registry", str(tmp_path)]).exit_code == 0
    assert reg.current() == "v0002"
    bad = run(app, ["models", "promote", "v7", "--registry", str(tmp_path)])
    assert bad.exit_code == 1 and "no model version 'v7'" in bad.output
    out = run(app, ["models", "rollback", "--registry", str(tmp_path)])
    assert out.exit_code == 0 and "current -> v0001" in out.output and reg.current() == "v0001"
    empty = run(app, ["models", "list", "--registry", str(tmp_path / "none")])
    assert empty.exit_code == 1 and "streamrank train" in empty.output
